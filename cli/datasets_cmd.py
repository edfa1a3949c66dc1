"""`vea-bench datasets ...`: list the registered datasets, check one on disk, write synthetic sets."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vea_bench_cli.common import AllowOutsideRootOpt, StrictOpt, ImageColumnOpt, LabelColumnOpt, column_options, console, err_console, fail, run_guarded

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="List, check and synthesise datasets in their native layouts.",
)

# `--help` does not import the dataset layer: the layouts are the registered datasets (`datasets list`).
_LAYOUTS_HELP = "a registered dataset's name, as `vea-bench datasets list` shows it (or 'all')"
_FAULTS_HELP = "corrupt, zero-byte, unknown-label, duplicate"


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` loader options; true/false, integers and floats are converted."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got '{pair}'", param_hint="--option")
        value: Any = raw
        low = raw.strip().lower()
        if low in ("true", "yes", "on"):
            value = True
        elif low in ("false", "no", "off"):
            value = False
        else:
            for conv in (int, float):
                try:
                    value = conv(raw)
                    break
                except ValueError:
                    pass
        out[key.strip().replace("-", "_")] = value
    return out


@app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON instead of a table.")] = False,
) -> None:
    """List the registered datasets: label space, native layout and split rule.

    [bold]Example[/]: vea-bench datasets list
    """
    from rich.table import Table

    from vea_bench.datasets import list_datasets, loader_options

    entries = list_datasets()
    if as_json:
        rows = [
            {
                "name": e.name,
                "label_space": e.label_space or "inferred",
                "layout": e.layout,
                "split_rule": e.split_rule,
                "options": sorted(set(loader_options(e.name)) - {"seed", "label_space"}),
            }
            for e in entries
        ]
        console.print_json(json.dumps(rows))
        return
    table = Table(title="datasets", show_lines=True)
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("label space", no_wrap=True)
    table.add_column("native layout")
    table.add_column("split rule")
    table.add_column("options")
    for e in entries:
        opts = sorted(set(loader_options(e.name)) - {"seed", "label_space", "on_error"})
        table.add_row(e.name, e.label_space or "inferred", e.layout, e.split_rule, ", ".join(opts))
    console.print(table)


@app.command("check")
def check_cmd(
    name: Annotated[str, typer.Argument(help="Registered dataset name (see `vea-bench datasets list`).")],
    root: Annotated[Path, typer.Option("--root", "-r", help="The dataset's root folder (a manifest may also be the CSV itself).")],
    seed: Annotated[int, typer.Option(help="Seed of the stratified split, where the dataset has none of its own.")] = 42,
    label_space: Annotated[
        str | None, typer.Option("--label-space", help="Force a label space: mikels8, ekman6, binary or custom:a,b,c.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Loader option KEY=VALUE, repeatable (e.g. -o binary=true, -o labels_file=votes.csv)."),
    ] = None,
    decode: Annotated[bool, typer.Option("--decode/--no-decode", help="Read, hash and decode every image (slow on 100k images).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON on stdout.")] = False,
    show: Annotated[int, typer.Option(help="How many example paths to show per problem kind.")] = 5,
    allow_outside_root: AllowOutsideRootOpt = False,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Check a dataset where it lies: counts per split and class, and every fault found.

    Reports unreadable/corrupt and zero-byte images, unknown labels, malformed rows, images missing
    for labelled ids, excluded ties and neutral votes, duplicates across splits (same path or
    same bytes), and paths that resolve outside the root (outside-root: `..`, absolute paths,
    escaping or dangling symlinks; every command skips them, never reading them, unless
    --allow-outside-root). Faults do not make the command fail: it exits 0 with a summary, or 1
    with --strict. It exits 1 also when the root cannot be read at all.

    [bold]Examples[/]:
      vea-bench datasets check fi --root /data/FI
      vea-bench datasets check emoset --root /data/EmoSet-118K -o binary=true --json > emoset_check.json
      vea-bench datasets check flickr --root /data/flickr -o labels_file=votes.csv --no-decode
    """
    from vea_bench.datasets import check_dataset
    from vea_bench.errors import DatasetError, UnknownLabelError
    from vea_bench_cli.common import RichProgress

    opts = {**_parse_options(option or []), **column_options(image_column, label_column)}
    progress = RichProgress("img", quiet=as_json)
    try:
        report = check_dataset(name, root, seed=seed, label_space=label_space, decode=decode, progress=progress,
                               allow_outside_root=allow_outside_root, **opts)
    except UnknownLabelError as exc:  # cannot happen with on_error=skip unless a caller forced raise
        fail(str(exc), 2)
        return
    except DatasetError as exc:
        fail(str(exc), 1)
        return
    except Exception as exc:  # noqa: BLE001
        from vea_bench.errors import VeaError

        if isinstance(exc, VeaError):
            fail(str(exc), exc.exit_code)
            return
        raise
    finally:
        progress.finish()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _render_report(report, show)
    if strict and not report.ok:
        raise typer.Exit(1)


def _render_report(report: Any, show: int) -> None:
    from rich.table import Table

    console.print(
        f"[bold]{report.name}[/] at {report.root}  label space [cyan]{report.label_space}[/]  "
        f"split: {report.split_rule}"
    )
    splits = list(report.counts)
    table = Table(title="images per split and class")
    table.add_column("class", style="bold")
    for s in splits:
        table.add_column(s, justify="right")
    table.add_column("total", justify="right", style="bold")
    for lab in report.labels:
        vals = [report.counts[s].get(lab, 0) for s in splits]
        table.add_row(lab, *(str(v) for v in vals), str(sum(vals)))
    totals = [sum(report.counts[s].values()) for s in splits]
    table.add_row("[bold]total[/]", *(f"[bold]{t}[/]" for t in totals), f"[bold]{sum(totals)}[/]")
    console.print(table)

    problems: dict[str, list[tuple[str, str]]] = {}
    for sk in report.skipped:
        problems.setdefault(sk.kind, []).append((sk.path, sk.reason))
    for u in report.unreadable:
        problems.setdefault("unreadable", []).append((u.path, u.reason))
    for d in report.duplicates:
        kind = f"duplicate {d.kind}" + (" across splits" if d.cross_split else " within a split")
        problems.setdefault(kind, []).append((", ".join(f"{s}:{p}" for s, p in d.members), ""))
    if problems:
        ptable = Table(title="problems (skipped by the loader or found by decoding)")
        ptable.add_column("kind", style="bold yellow", no_wrap=True)
        ptable.add_column("count", justify="right")
        ptable.add_column("examples")
        for kind, items in sorted(problems.items()):
            examples = "\n".join(f"{p}" + (f"  ({r})" if r else "") for p, r in items[:show])
            if len(items) > show:
                examples += f"\n... and {len(items) - show} more (use --json for all)"
            ptable.add_row(kind, str(len(items)), examples)
        console.print(ptable)
    style = "green" if report.ok else "yellow"
    console.print(f"[{style}]{report.summary()}[/]", highlight=False)


@app.command("make-synthetic")
def make_synthetic_cmd(
    layout: Annotated[str, typer.Argument(help=f"Layout to write: {_LAYOUTS_HELP}.")],
    out: Annotated[Path, typer.Argument(help="Output folder (created; must be empty). With 'all': one subfolder per layout.")],
    per_class: Annotated[int, typer.Option("--per-class", "-n", help="Good images per class.")] = 10,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of every image and file name.")] = 0,
    fault: Annotated[list[str] | None, typer.Option("--fault", "-f", help=f"Plant a fault, repeatable: {_FAULTS_HELP}.")] = None,
    label_space: Annotated[
        str | None, typer.Option("--label-space", help="Label space for imagefolder/manifest (default mikels8).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output path.")] = False,
) -> None:
    """Write a small synthetic image set in a dataset's native layout (for tests and the demo).

    Classes differ in hue, texture and shape under noise and clutter: learnable, not trivial.

    [bold]Examples[/]:
      vea-bench datasets make-synthetic fi /tmp/fi
      vea-bench datasets make-synthetic emoset /tmp/emoset --per-class 20 --fault corrupt --fault zero-byte
      vea-bench datasets make-synthetic all /tmp/synthetic
    """
    from vea_bench.datasets.synthetic import make_synthetic, make_synthetic_all

    faults = list(fault or [])
    kwargs: dict[str, Any] = dict(per_class=per_class, size=size, seed=seed, faults=faults, label_space=label_space)
    if layout == "all":
        kwargs.pop("label_space")
        paths = run_guarded(make_synthetic_all, out, **kwargs)
    else:
        paths = {layout: run_guarded(make_synthetic, layout, out, **kwargs)}
    if quiet:
        typer.echo(str(out))
        return
    for lay, p in paths.items():
        console.print(f"wrote synthetic [bold]{lay}[/] to {p}")
    if len(paths) == 1:
        lay = next(iter(paths))
        err_console.print(f"check it with: vea-bench datasets check {lay} --root {out}", highlight=False)
