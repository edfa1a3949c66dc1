"""`vea-bench instruct generate|build`: emotion instruction data from a chat endpoint, and the three instruction kinds."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from vea_bench_cli.common import (
    AllowOutsideRootOpt,
    ImageColumnOpt,
    LabelColumnOpt,
    column_options,
    StrictOpt,
    setup_logging,
    RichProgress,
    console,
    echo_path,
    err_console,
    fail,
    run_guarded,
)

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                  help="Generate emotion instruction data from a chat endpoint; build instruction triplets.")


def _logging(quiet: bool) -> None:
    setup_logging(True)


@app.command("generate")
def generate_cmd(
    dataset: Annotated[str, typer.Argument(help="Registered dataset name (see `vea-bench datasets list`).")],
    root: Annotated[Path, typer.Option("--root", "-r", help="The dataset's root folder.")],
    base_url: Annotated[str, typer.Option("--base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or http://localhost:8000/v1.")],
    model: Annotated[str, typer.Option("--model", help="Model name the endpoint serves (a vision-capable chat model).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL output; appended to, and images already in it are skipped (resume).")],
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the API key (unset: no key, for local servers).")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 4,
    max_retries: Annotated[int, typer.Option("--max-retries", help="Retries per image on 429 / 5xx / timeouts / malformed answers.")] = 5,
    limit: Annotated[int | None, typer.Option(help="Only the first N images of the split.")] = None,
    split: Annotated[str, typer.Option(help="Split to describe (instructions must come from train).")] = "train",
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 120.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Answer length cap.")] = 512,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: the endpoint's).")] = None,
    max_side: Annotated[int, typer.Option("--max-side", help="Images larger than this on the long side are re-encoded smaller.")] = 1024,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the stratified split where the dataset has none.")] = 42,
    label_space: Annotated[str | None, typer.Option("--label-space", help="Force a label space (e.g. binary).")] = None,
    allow_outside_root: AllowOutsideRootOpt = False,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    strict: StrictOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output path.")] = False,
) -> None:
    """Ask a vision chat model for the "Key elements" and "Reasoning" of every training image (EmoVIT-style).

    Failed requests are retried with exponential backoff; each good answer is appended to OUT at
    once, so rerunning the same command after an interruption continues where it stopped.

    [bold]Example[/]: vea-bench instruct generate fi --root data/FI --base-url https://api.openai.com/v1 --model gpt-4o --out fi.jsonl
    """
    _logging(quiet)
    if concurrency < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--concurrency")

    def go() -> None:
        from vea_bench.datasets import load_dataset
        from vea_bench.train.instruct_gen import Endpoint, generate_instructions

        key = os.environ.get(api_key_env) or None
        endpoint = Endpoint(base_url=base_url, model=model, api_key=key, timeout=timeout, max_tokens=max_tokens,
                            temperature=temperature)
        endpoint.url  # noqa: B018  (a malformed --base-url fails here, before any work)
        index = load_dataset(dataset, root, seed=split_seed, label_space=label_space,
                             allow_outside_root=allow_outside_root, strict=strict, **column_options(image_column, label_column))
        report = generate_instructions(index, out, endpoint, split=split, concurrency=concurrency,
                                       max_retries=max_retries, limit=limit, max_side=max_side,
                                       progress=RichProgress("img", quiet=quiet))
        if quiet:
            echo_path(report.out, quiet)
        else:
            console.print(f"{report.out}: {report.written} written now, {report.skipped_existing} already there, "
                          f"{len(report.failed)} failed, {report.retries} retries")
        if report.failed:
            for path, why in report.failed[:5]:
                err_console.print(f"  [yellow]failed[/] {path}: {why}", highlight=False)
            fail(f"{len(report.failed)} of {report.total} images got no usable answer; rerun the same command to retry them")

    run_guarded(go)


@app.command("build")
def build_cmd(
    dataset: Annotated[str, typer.Argument(help="Registered dataset name (gives the label space and the images).")],
    root: Annotated[Path, typer.Option("--root", "-r", help="The dataset's root folder.")],
    responses: Annotated[Path, typer.Option("--responses", help="Reference JSON list or `instruct generate` JSONL.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL of (image, kind, question, answer, label) triplets.")],
    kinds: Annotated[str, typer.Option(help="Comma-separated instruction kinds.")] = "categorical,conversation,reasoning",
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the stratified split where the dataset has none.")] = 42,
    label_space: Annotated[str | None, typer.Option("--label-space", help="Force a label space (e.g. binary).")] = None,
    allow_outside_root: AllowOutsideRootOpt = False,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    strict: StrictOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output path.")] = False,
) -> None:
    """Validate generated responses and write the paper's three instruction kinds per training image.

    [bold]Example[/]: vea-bench instruct build fi --root data/FI --responses FI_annotations_train.json --out fi-instructions.jsonl
    """
    _logging(quiet)

    def go() -> None:
        from collections import Counter

        from vea_bench.datasets import load_dataset
        from vea_bench.train.instructions import (
            build_instructions,
            load_responses,
            write_jsonl,
        )

        index = load_dataset(dataset, root, seed=split_seed, label_space=label_space,
                             allow_outside_root=allow_outside_root, strict=strict, **column_options(image_column, label_column))
        entries = load_responses(responses, index.label_space, index=index)
        insts = build_instructions(entries, index.label_space, [k.strip() for k in kinds.split(",") if k.strip()])
        n = write_jsonl(out, (i.to_dict() for i in insts))
        if quiet:
            echo_path(out, quiet)
            return
        per_kind = Counter(i.kind for i in insts)
        console.print(f"{out}: {n} instructions from {len(entries)} images "
                      f"({', '.join(f'{k} {v}' for k, v in per_kind.items())})")

    run_guarded(go)
