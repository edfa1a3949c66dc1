"""`vea-bench extract`: run the VLM, teachers and backbones once per image into the HDF5 cache."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vea_bench_cli.common import AllowOutsideRootOpt, RichProgress, StrictOpt, console, echo_path, err_console, run_guarded


def _parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        ref, sep, key = pair.rpartition("=")
        if not sep or not ref.strip() or not key.strip():
            raise typer.BadParameter(f"expected REF=KEY, got '{pair}'", param_hint=option)
        out[ref.strip()] = key.strip()
    return out


def extract_command(
    dataset: Annotated[str, typer.Argument(help="Dataset name (see `vea-bench datasets list`).")],
    root: Annotated[Path, typer.Option("--root", help="The dataset's folder, in its native layout.")],
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Cache file to create or resume [default: cache/<dataset>.h5].")] = None,
    vlm: Annotated[Optional[str], typer.Option("--vlm", help="VLM hub id or local folder (optional when only teachers/backbones are wanted).")] = None,
    adapter: Annotated[Optional[Path], typer.Option("--adapter", help="LoRA adapter folder from `vea-bench train vlm`.")] = None,
    teacher: Annotated[Optional[list[Path]], typer.Option("--teacher", help="Teacher checkpoint (folder or .safetensors); repeatable.")] = None,
    backbone: Annotated[Optional[list[str]], typer.Option("--backbone", help="Frozen timm backbone NAME or NAME@WEIGHTS (file or 'random'); repeatable.")] = None,
    backbone_weights: Annotated[Optional[str], typer.Option("--backbone-weights", help="Local weights file (or 'random') for every --backbone without @WEIGHTS.")] = None,
    answer: Annotated[str, typer.Option("--answer", help="VLM answer modes: generate, score or generate,score.")] = "generate",
    decoding: Annotated[str, typer.Option("--decoding", help="greedy (argmax); reference: the reference code's generate(do_sample=True, temperature 0.8, top_p 1.0) with the checkpoint's top_k and repetition penalty (Qwen2-VL-Instruct: in effect greedy with a 1.05 penalty); sample: true sampling at --temperature / --top-p, no top_k, no penalty.")] = "greedy",
    sample: Annotated[bool, typer.Option("--sample", hidden=True, help="Deprecated: same as --decoding sample.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (--decoding reference or sample).")] = 0.8,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (--decoding reference or sample).")] = 1.0,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Token budget of a generated answer, which stops at '}' (default: 24 with --adapter, else --zero-shot-max-new-tokens).")] = None,
    zero_shot_max_new_tokens: Annotated[int, typer.Option("--zero-shot-max-new-tokens", help="Token budget without --adapter: a zero-shot model may write a sentence before its answer.")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (--decoding reference or sample); does not change the split.")] = 42,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the stratified split where the dataset has none (SPEC: 42).")] = 42,
    score_memory_gb: Annotated[float, typer.Option("--score-memory-gb", help="Working memory for --answer score (KV copies + logits); sets how many images share one scoring forward.")] = 4.0,
    max_side: Annotated[int, typer.Option("--max-side", help="Cap on the image's longer side before the VLM processor (SPEC: 1024).")] = 1024,
    max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", help="Pixel budget per image for the VLM (speed vs fidelity).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.")] = 8,
    workers: Annotated[int, typer.Option("--workers", "-j", help="Data-loader worker processes (0: load in the main process).")] = 2,
    dtype: Annotated[str, typer.Option("--dtype", help="auto, bf16, fp16 or fp32 (auto: bf16 on GPU, fp32 on CPU).")] = "auto",
    quant: Annotated[Optional[str], typer.Option("--quant", help="4bit (NF4; GPU or CPU) or 8bit (GPU) loading through bitsandbytes.")] = None,
    image_position: Annotated[str, typer.Option("--image-position", help="first: image before the question in the user turn; last: after it, as the reference (pass what train vlm used).")] = "first",
    instructblip_prompt: Annotated[str, typer.Option("--instructblip-prompt", help="InstructBLIP's LM prompt: raw (the question, as LAVIS trained it) or vicuna (system + USER/ASSISTANT wrapper). The Q-Former always reads the question.")] = "raw",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads of the main process (CPU runs on shared machines: 1).")] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Hub revision (branch, tag or commit) of --vlm.")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model repo's own code (off by default).")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N missing rows per split (smoke runs).")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="i/n: only rows with row % n == i, into their own shard file (join with `vea-bench cache merge`).")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Only these splits; repeatable [default: all].")] = None,
    label_space: Annotated[Optional[str], typer.Option("--label-space", help="Force a label space (e.g. binary for EmoSet/FI).")] = None,
    key: Annotated[Optional[list[str]], typer.Option("--key", help="REF=KEY: cache key for 'vlm', a --teacher path or a --backbone as given; repeatable.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute these sources from scratch instead of resuming.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also retry rows that failed before (e.g. images since repaired).")] = False,
    parse: Annotated[str, typer.Option("--parse", help="Answer parse: strict (the reference's: only {'emotion': '...'}, else none) or lenient (also other dict shapes and negation-aware label words; recorded in provenance).")] = "strict",
    exif: Annotated[str, typer.Option("--exif", help="EXIF orientation: apply (upright images) or ignore (the reference's decoding); recorded in provenance.")] = "apply",
    allow_outside_root: AllowOutsideRootOpt = False,
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
        _run, dataset=dataset, root=root, cache=cache, vlm=vlm, adapter=adapter, teachers=list(teacher or []),
        backbones=list(backbone or []), backbone_weights=backbone_weights, modes=modes, decoding=decoding,
        sample=sample, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        zero_shot_max_new_tokens=zero_shot_max_new_tokens, seed=seed, split_seed=split_seed,
        score_memory_gb=score_memory_gb, max_side=max_side, max_pixels=max_pixels,
        image_position=image_position, instructblip_prompt=instructblip_prompt,
        batch_size=batch_size, workers=workers, dtype=dtype, quant=quant, device=device,
        revision=revision, trust_remote_code=trust_remote_code, threads=threads, limit=limit, shard=shard, splits=list(split or []),
        label_space=label_space, keys=keys, overwrite=overwrite, retry_failed=retry_failed, quiet=quiet,
        parse=parse, exif=exif, allow_outside_root=allow_outside_root, strict=strict,
    )


def _run(**a: Any) -> None:
    from vea_bench.cache.ops import parse_shard
    from vea_bench.datasets import load_dataset
    from vea_bench.errors import ConfigError
    from vea_bench.extract import extract
    from vea_bench.models.backbone import BackboneSpec
    from vea_bench.models.base import GenerationOptions, LoadOptions

    if a["threads"]:
        import torch

        torch.set_num_threads(a["threads"])
    if a["adapter"] is not None and not a["vlm"]:
        raise ConfigError("--adapter needs --vlm (the adapter's base model)")
    shard = parse_shard(a["shard"]) if a["shard"] else None
    decoding = a["decoding"]
    if a["sample"]:
        if decoding not in ("greedy", "sample"):
            raise ConfigError(f"--sample (deprecated) contradicts --decoding {decoding}; pass --decoding only")
        err_console.print("[yellow]--sample is deprecated[/]: use --decoding sample (true sampling) or "
                          "--decoding reference (the reference code's decoding)")
        decoding = "sample"
    gen = GenerationOptions(decoding=decoding, temperature=a["temperature"], top_p=a["top_p"],
                            max_new_tokens=a["max_new_tokens"], zero_shot_max_new_tokens=a["zero_shot_max_new_tokens"],
                            seed=a["seed"], score_memory_gb=a["score_memory_gb"])
    index = load_dataset(a["dataset"], a["root"], seed=a["split_seed"], label_space=a["label_space"],
                         allow_outside_root=a["allow_outside_root"], strict=a["strict"])
    cache = a["cache"] or Path("cache") / f"{index.name}.h5"
    opts = None
    if a["vlm"] and Path(a["vlm"]).expanduser().is_dir():
        # A local model is recorded by its absolute path, so a resume from another folder matches.
        a["vlm"] = str(Path(a["vlm"]).expanduser().resolve())
    if a["adapter"] is not None and Path(a["adapter"]).is_dir():
        a["adapter"] = Path(a["adapter"]).resolve()
    if a["vlm"]:
        opts = LoadOptions(
            model=a["vlm"], revision=a["revision"], adapter=str(a["adapter"]) if a["adapter"] else None,
            dtype=a["dtype"], quantization=a["quant"], device=a["device"],
            trust_remote_code=a["trust_remote_code"], max_side=a["max_side"], max_pixels=a["max_pixels"],
            image_position=a["image_position"], instructblip_prompt=a["instructblip_prompt"],
        )
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
        retry_failed=a["retry_failed"], device=None if a["device"] == "auto" else a["device"],
        progress=progress, parse=a["parse"], exif=a["exif"],
    )
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
