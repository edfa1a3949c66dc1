"""`vea-bench extract`: run the VLM, teachers and backbones once per image into the HDF5 cache."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vea_bench.models.base import GenerationOptions, LoadOptions
from vea_bench.schema import Settings
from vea_bench_cli.common import (
    AllowOutsideRootOpt,
    StrictOpt,
    ImageColumnOpt,
    LabelColumnOpt,
    RichProgress,
    column_options,
    console,
    echo_path,
    err_console,
    run_guarded,
)
from vea_bench_cli.schema_options import Group, config_options


def _parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        ref, sep, key = pair.rpartition("=")
        if not sep or not ref.strip() or not key.strip():
            raise typer.BadParameter(f"expected REF=KEY, got '{pair}'", param_hint=option)
        out[ref.strip()] = key.strip()
    return out


# LoadOptions' and GenerationOptions' fields, as ``--vlm``, ``--decoding``, ``--seed``...: their help and
# defaults are the fields' own (`vea_bench.models.base`).
EXTRACT_GROUPS = (Group("load_options", LoadOptions, exclude=("attn_implementation",), optional=("model",),
                        show_defaults=True),
                  Group("generation_options", GenerationOptions, show_defaults=True))


@config_options(*EXTRACT_GROUPS)
def extract_command(
    dataset: Annotated[str, typer.Argument(help="Dataset name (see `vea-bench datasets list`).")],
    root: Annotated[Path, typer.Option("--root", help="The dataset's folder, in its native layout.")],
    load_options: dict[str, Any],
    generation_options: dict[str, Any],
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Cache file to create or resume \\[default: cache/<dataset>.h5].")] = None,
    teacher: Annotated[Optional[list[Path]], typer.Option("--teacher", help="Teacher checkpoint (folder or .safetensors); repeatable.")] = None,
    backbone: Annotated[Optional[list[str]], typer.Option("--backbone", help="Frozen timm backbone NAME or NAME@WEIGHTS (file or 'random'); repeatable.")] = None,
    backbone_weights: Annotated[Optional[str], typer.Option("--backbone-weights", help="Local weights file (or 'random') for every --backbone without @WEIGHTS.")] = None,
    answer: Annotated[str, typer.Option("--answer", help="VLM answer modes: generate, score or generate,score.")] = "generate",
    engine: Annotated[str, typer.Option("--engine", help="How the VLM runs: transformers (one vision pass gives the embedding and the answers) or embed-only (the embedding alone: no language model, no answers), or an installed engine (docs/extending.md).")] = "transformers",
    sample: Annotated[bool, typer.Option("--sample", hidden=True, help="Deprecated: same as --decoding sample.")] = False,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the stratified split where the dataset has none (SPEC: 42).")] = 42,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.")] = 8,
    workers: Annotated[int, typer.Option("--workers", "-j", help="Data-loader worker processes (0: load in the main process).")] = 2,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads of the main process (CPU runs on shared machines: 1).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N missing rows per split (smoke runs).")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="i/n: only rows with row % n == i, into their own shard file (join with `vea-bench cache merge`).")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Only these splits; repeatable \\[default: all].")] = None,
    label_space: Annotated[Optional[str], typer.Option("--label-space", help="Force a label space (e.g. binary for EmoSet/FI).")] = None,
    key: Annotated[Optional[list[str]], typer.Option("--key", help="REF=KEY: cache key for 'vlm', a --teacher path or a --backbone as given; repeatable.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute these sources from scratch instead of resuming.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also retry rows that failed before (e.g. images since repaired).")] = False,
    parse: Annotated[str, typer.Option("--parse", help="Answer parse: strict (the reference's: only {'emotion': '...'}, else none) or lenient (also other dict shapes and negation-aware label words; recorded in provenance).")] = "strict",
    exif: Annotated[str, typer.Option("--exif", help="EXIF orientation: apply (upright images) or ignore (the reference's decoding); recorded in provenance.")] = "apply",
    allow_outside_root: AllowOutsideRootOpt = False,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    strict: StrictOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or table; print only the cache path.")] = False,
) -> None:
    """Run the VLM (one pass per batch: pooled visual embedding + answer), teachers and backbones
    once per image into an HDF5 cache. Resumes: only missing rows are computed.

    [bold]Examples[/]:
      vea-bench extract fi --root /data/FI --vlm Qwen/Qwen2-VL-7B-Instruct --teacher runs/vit-fi --answer generate,score
      vea-bench extract fi --root /data/FI --vlm Qwen/Qwen2-VL-7B-Instruct --quant 4bit --shard 0/4   (one per GPU / array task)
    """
    modes = [m.strip() for m in answer.split(",") if m.strip()]
    keys = _parse_pairs(list(key or []), "--key")
    run_guarded(
        _run, dataset=dataset, root=root, cache=cache, load=load_options, generation=generation_options,
        teachers=list(teacher or []), backbones=list(backbone or []), backbone_weights=backbone_weights, modes=modes,
        engine=engine,
        sample=sample, split_seed=split_seed, batch_size=batch_size, workers=workers, threads=threads, limit=limit,
        shard=shard, splits=list(split or []), label_space=label_space, keys=keys, overwrite=overwrite,
        retry_failed=retry_failed, quiet=quiet, parse=parse, exif=exif, allow_outside_root=allow_outside_root,
        strict=strict, columns=column_options(image_column, label_column),
    )


def _generation(given: dict[str, Any], sample: bool) -> GenerationOptions:
    """The decoding settings given, with the deprecated ``--sample`` read as ``--decoding sample``."""
    from vea_bench.errors import ConfigError

    settings = Settings(GenerationOptions, given)
    if sample:
        decoding = settings.value("decoding")
        if decoding not in ("greedy", "sample"):
            raise ConfigError(f"--sample (deprecated) contradicts --decoding {decoding}; pass --decoding only")
        err_console.print("[yellow]--sample is deprecated[/]: use --decoding sample (true sampling) or "
                          "--decoding reference (the reference code's decoding)")
        return settings.build(decoding="sample")
    return settings.build()


def _load_options(given: dict[str, Any]) -> LoadOptions | None:
    """How to load the VLM, if ``--vlm`` names one; local folders are recorded by their absolute path,
    so a resume from another folder matches."""
    from vea_bench.errors import ConfigError

    settings = Settings(LoadOptions, given)
    vlm, adapter = settings.get("model"), settings.get("adapter")
    if adapter is not None and not vlm:
        raise ConfigError("--adapter needs --vlm (the adapter's base model)")
    if not vlm:
        return None
    if Path(vlm).expanduser().is_dir():
        vlm = str(Path(vlm).expanduser().resolve())
    if adapter is not None and Path(adapter).is_dir():
        adapter = str(Path(adapter).resolve())
    return settings.build(model=vlm, adapter=adapter)


def _run(**a: Any) -> None:
    from vea_bench.cache.ops import parse_shard
    from vea_bench.datasets import load_dataset
    from vea_bench.distributed import launch_env
    from vea_bench.extract import extract
    from vea_bench.models.backbone import BackboneSpec

    if a["threads"]:
        import torch

        torch.set_num_threads(a["threads"])
    opts = _load_options(a["load"])
    shard = parse_shard(a["shard"]) if a["shard"] else None
    gen = _generation(a["generation"], a["sample"])
    device = Settings(LoadOptions, a["load"]).value("device")
    index = load_dataset(a["dataset"], a["root"], seed=a["split_seed"], label_space=a["label_space"],
                         allow_outside_root=a["allow_outside_root"], strict=a["strict"], **a["columns"])
    cache = a["cache"] or Path("cache") / f"{index.name}.h5"
    backbones = [BackboneSpec.parse(b, default_weights=a["backbone_weights"]) for b in a["backbones"]]
    keys = dict(a["keys"])
    # --key accepts the backbone string exactly as typed on the command line.
    for text, spec in zip(a["backbones"], backbones):
        if text in keys:
            keys[spec.name] = keys.pop(text)
    progress = RichProgress("img", quiet=a["quiet"])
    summary = extract(
        index, cache, vlm=opts, answer_modes=a["modes"], generation=gen, teachers=a["teachers"],
        backbones=backbones, splits=a["splits"] or None, limit=a["limit"], shard=shard,
        batch_size=a["batch_size"], num_workers=a["workers"], source_keys=keys, overwrite=a["overwrite"],
        retry_failed=a["retry_failed"], device=None if device == "auto" else device,
        progress=progress, parse=a["parse"], exif=a["exif"], engine=a["engine"],
    )
    if not launch_env().is_main:  # under a launcher rank 0 speaks for the whole job
        return
    if a["quiet"]:
        echo_path(summary.cache_path, True)
        return
    _print_summary(summary)


def _print_summary(summary: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{summary.cache_path}", show_lines=False)
    for col in ("source", "rows", "had", "done now", "failed", "unparsed", "missing"):
        table.add_column(col, justify="left" if col == "source" else "right", overflow="fold")
    for s in summary.sources:
        table.add_row(s.name, str(s.rows), str(s.done_before), str(s.done), str(s.failed),
                      str(s.unparsed) if s.name.startswith("vlm/") else "-", str(s.missing))
    console.print(table)
    rate = f"{summary.images_per_s:.2f} images/s" if summary.images else "nothing to do"
    console.print(f"{summary.images} images in {summary.loop_s:.1f} s ({rate}); "
                  f"{summary.failed_images} unreadable; {summary.elapsed_s:.1f} s in all with model loading")
    changed = sum(s.changed for s in summary.sources)
    if changed:
        err_console.print(f"{changed} row(s) recomputed because their image file changed since they were cached")
    if summary.shard is not None:
        i, n = summary.shard
        p = Path(summary.cache_path)
        final = p.with_name(p.name.replace(f".shard-{i}-of-{n}", ""))
        pattern = p.with_name(p.name.replace(f".shard-{i}-of-{n}", f".shard-*-of-{n}"))
        err_console.print(f"shard {i}/{n} written; when all {n} are done: vea-bench cache merge {final} {pattern}")
    elif not summary.complete:
        err_console.print("[yellow]some rows are still missing[/] (--limit or interrupted): rerun to resume")


def register(app: typer.Typer) -> None:
    """Add `vea-bench extract` to ``app``."""
    app.command("extract", no_args_is_help=True)(extract_command)
