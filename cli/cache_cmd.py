"""`vea-bench cache ...`: inspect, verify, repair, merge, pack, copy and move HDF5 feature caches."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vea_bench_cli.common import RichProgress, console, err_console, run_guarded

app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Inspect, verify, repair, merge, pack, copy and move HDF5 feature caches. A cache is an index "
        "file plus one file per source in <cache>.sources/ (written by `vea-bench extract`): copy or move "
        "both with `cache copy|move`, or make one self-contained file with `cache pack`."
    ),
)

CacheFile = Annotated[
    Path, typer.Argument(help="Cache file, e.g. cache/fi.h5.", show_default=False, dir_okay=True, exists=False)
]


def _fmt_counts(c: dict[str, int]) -> str:
    parts = [f"[green]{c['done']}[/]"]
    if c["failed"]:
        parts.append(f"[yellow]{c['failed']} failed[/]")
    if c["missing"]:
        parts.append(f"[red]{c['missing']} missing[/]")
    return " / ".join(parts) + f" of {c['rows']}"


def _fmt_shape(fields: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, f in fields.items():
        shape = "N" + "".join(f" x {d}" for d in f["shape"])
        out.append(f"{name}: {shape} {f['dtype']}")
    return "\n".join(out)


def _fmt_provenance(prov: dict[str, Any]) -> str:
    from rich.markup import escape

    items = []
    for k, v in prov.items():
        if k == "versions" and isinstance(v, dict):
            v = ", ".join(f"{p} {ver}" for p, ver in v.items())
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, ensure_ascii=False)
        text = str(v)
        if len(text) > 80:
            text = text[:77] + "..."
        items.append(f"[bold]{escape(str(k))}[/]={escape(text)}")
    return "\n".join(items) or "-"


@app.command("info")
def info(
    file: CacheFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (for scripts).")] = False,
) -> None:
    """Show a cache's dataset, splits, sources (shape, dtype, done/failed/missing per split,
    completeness) and each source's provenance.

    [bold]Examples[/]

      vea-bench cache info cache/fi.h5

      vea-bench cache info cache/fi.h5 --json | jq '.sources[].complete'
    """
    from vea_bench.cache import cache_summary

    s = run_guarded(cache_summary, file)
    if as_json:
        typer.echo(json.dumps(s, indent=2, ensure_ascii=False, default=str))
        return
    from rich.markup import escape
    from rich.table import Table

    size_mb = s["size_bytes"] / 1e6
    console.print(f"[bold]{escape(s['path'])}[/]  ({size_mb:,.1f} MB)", highlight=False)
    console.print(
        f"dataset [bold]{escape(s['dataset'])}[/]  label space [bold]{escape(s['label_space'])}[/] "
        f"({escape(', '.join(s['label_names']))})",
        highlight=False,
    )
    seed = "-" if s["split_seed"] is None else s["split_seed"]
    console.print(
        f"schema {s['schema_version']}  written by vea-bench {s['vea_bench_version']}  "
        f"created {s['created_at']}  split seed {seed}  layout {s['layout']}",
        highlight=False,
    )

    splits = Table(title="Splits", title_justify="left")
    splits.add_column("split")
    splits.add_column("rows", justify="right")
    splits.add_column("per class")
    splits.add_column("manifest hash")
    for name, sp in s["splits"].items():
        per = "  ".join(f"{k} {v}" for k, v in sp["per_class"].items())
        splits.add_row(escape(name), str(sp["rows"]), escape(per), sp["manifest_hash"][:12])
    console.print(splits)

    for name, msg in s.get("damaged", {}).items():
        err_console.print(f"[bold red]damaged:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    if not s["sources"]:
        if not s.get("damaged"):
            console.print("no sources yet; run `vea-bench extract` to add some")
        return
    split_names = list(s["splits"])
    sources = Table(title="Sources (written / failed / missing)", title_justify="left", show_lines=True)
    sources.add_column("source")
    sources.add_column("fields")
    for name in split_names:
        sources.add_column(name)
    sources.add_column("complete")
    sources.add_column("provenance")
    for src in s["sources"]:
        counts = [_fmt_counts(src["counts"][sp]) if sp in src["counts"] else "-" for sp in split_names]
        sources.add_row(
            escape(src["name"]),
            escape(_fmt_shape(src["fields"])),
            *counts,
            "[green]yes[/]" if src["complete"] else "[red]no[/]",
            _fmt_provenance(src["provenance"]),
        )
    console.print(sources)


@app.command("verify")
def verify(
    file: CacheFile,
    require_complete: Annotated[
        bool, typer.Option("--require-complete", help="Count missing rows as problems too.")
    ] = False,
) -> None:
    """Check a cache end to end: schema attributes, unique ids and in-range labels per split,
    manifest hashes recomputed from ids and labels, each source's shapes, dtypes and status
    values, finite values in written rows, valid one-hot rows.

    Exits 0 when clean, 1 with the list of problems otherwise (missing rows are only noted
    unless --require-complete).

    [bold]Examples[/]

      vea-bench cache verify cache/fi.h5

      vea-bench cache verify cache/fi.h5 --require-complete
    """
    from rich.markup import escape

    from vea_bench.cache import verify_cache

    report = run_guarded(verify_cache, file, require_complete=require_complete)
    if not require_complete:
        for note in report.incomplete:
            err_console.print(f"[yellow]incomplete:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if report.ok:
        console.print(
            f"[green]ok[/] {escape(str(file))}: {report.checked_sources} source(s), "
            f"{report.checked_rows:,} written rows checked",
            highlight=False,
        )
        return
    err_console.print(f"[bold red]{len(report.problems)} problem(s)[/] in {escape(str(file))}:", highlight=False)
    for p in report.problems:
        err_console.print(f"  - {p}", highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(1)


@app.command("merge")
def merge(
    output: Annotated[Path, typer.Argument(help="Merged cache to write (it may exist: its sources are kept).")],
    shards: Annotated[
        list[Path], typer.Argument(help="Shard caches written with `vea-bench extract --shard i/n`.")
    ],
    delete_shards: Annotated[
        bool, typer.Option("--delete-shards", help="Delete the shard files after a successful merge.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output path.")] = False,
) -> None:
    """Merge shard caches into one cache (index plus per-source files, like `extract` writes).

    Shards must be of the same dataset, label names and split manifests, and each source must
    have the same fields and settings in every shard. Every row is taken from the shard that
    wrote it; a row written differently by two shards stops the merge. Each merged source goes
    to a new file and the index links them all in one atomic step, so an interrupted merge
    changes nothing.

    [bold]Examples[/]

      vea-bench cache merge cache/fi.h5 cache/fi.shard-0-of-2.h5 cache/fi.shard-1-of-2.h5

      vea-bench cache merge cache/fi.h5 cache/fi.shard-*-of-4.h5 --delete-shards
    """
    from vea_bench.cache import merge_caches

    progress = RichProgress("rows", quiet=quiet)
    try:
        report = run_guarded(merge_caches, shards, output, progress=progress)
    finally:
        progress.finish()
    if delete_shards:
        from vea_bench.cache import delete_cache_files

        for p in shards:
            delete_cache_files(p)
    if quiet:
        typer.echo(str(report.output))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Merged into {escape(str(report.output))}", title_justify="left")
    table.add_column("source")
    table.add_column("written", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("missing", justify="right")
    table.add_column("complete")
    for src in report.sources:
        c = src.counts.values()
        table.add_row(
            escape(src.name),
            str(sum(x["done"] for x in c)),
            str(sum(x["failed"] for x in c)),
            str(sum(x["missing"] for x in c)),
            "[green]yes[/]" if src.complete else "[red]no[/]",
        )
    console.print(table)
    for path, n in report.rows_from.items():
        console.print(f"  {n:,} rows from {escape(path)}", highlight=False)
    if delete_shards:
        console.print(f"deleted {len(shards)} shard file(s)")


@app.command("repair")
def repair(
    file: CacheFile,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the cache path.")] = False,
) -> None:
    """Drop the damaged sources of a cache (file missing or unopenable, a dataset removed, data
    that does not read back), and only those, so that `vea-bench extract` recomputes them.
    Complete, readable sources are not touched.

    [bold]Examples[/]

      vea-bench cache repair cache/fi.h5
    """
    from rich.markup import escape

    from vea_bench.cache import repair_cache

    report = run_guarded(repair_cache, file)
    if quiet:
        typer.echo(str(report.path))
        return
    for name, why in report.dropped.items():
        console.print(f"[yellow]dropped[/] {escape(name)}: {escape(why)}", highlight=False, soft_wrap=True)
    if not report.dropped:
        console.print(f"[green]ok[/] {escape(str(file))}: no damaged source", highlight=False)
    console.print(f"kept {len(report.kept)} source(s): {escape(', '.join(report.kept) or 'none')}", highlight=False)
    if report.dropped:
        console.print("rerun the same `vea-bench extract` command to recompute the dropped source(s)")


@app.command("changed")
def changed(
    file: CacheFile,
    root: Annotated[Path, typer.Option("--root", help="The dataset folder to compare the cache with.")],
    limit: Annotated[int, typer.Option("--limit", help="List at most this many rows.")] = 20,
) -> None:
    """List cached rows whose image under --root differs from the file they were computed from
    (per-image fingerprints: size and a hash of the first and last 64 KiB). Exits 1 when any
    changed; `vea-bench extract` recomputes them.

    [bold]Examples[/]

      vea-bench cache changed cache/fi.h5 --root /data/FI
    """
    from rich.markup import escape

    from vea_bench.cache import changed_rows

    rows = run_guarded(changed_rows, file, root)
    if not rows:
        console.print(f"[green]ok[/] no cached row of {escape(str(file))} has a changed image under {escape(str(root))}",
                      highlight=False)
        return
    err_console.print(f"[bold red]{len(rows)} row(s)[/] have a changed image:", highlight=False)
    for r in rows[:limit]:
        err_console.print(f"  - {r.split}/{r.row} {r.id} ({', '.join(r.sources)})", highlight=False, markup=False)
    if len(rows) > limit:
        err_console.print(f"  ... and {len(rows) - limit} more")
    err_console.print("rerun `vea-bench extract` with the same options to recompute them")
    raise typer.Exit(1)


Output = Annotated[Path, typer.Argument(help="The new cache file (must not exist yet).", show_default=False)]
QuietPath = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output path.")]


def _portable_done(report: Any, verb: str, quiet: bool) -> None:
    from rich.markup import escape

    if quiet:
        typer.echo(str(report.output))
        return
    layout = "one self-contained file" if report.packed else f"with its folder {report.output.name}.sources"
    console.print(
        f"[green]{verb}[/] {escape(str(report.source))} -> {escape(str(report.output))} ({layout}; "
        f"{len(report.sources)} source(s), {report.size_bytes / 1e6:,.1f} MB)",
        highlight=False, soft_wrap=True,
    )


@app.command("pack")
def pack(
    file: CacheFile,
    output: Output,
    quiet: QuietPath = False,
) -> None:
    """Write the cache as one self-contained HDF5 file (every source copied in, provenance, row
    status and failure reasons kept), for moving and archiving. Every command reads the packed
    file as it is; the first `extract` into it puts its sources back into their own files.

    [bold]Examples[/]

      vea-bench cache pack cache/fi.h5 archive/fi-packed.h5
    """
    from vea_bench.cache import pack_cache

    _portable_done(run_guarded(pack_cache, file, output), "packed", quiet)


@app.command("copy")
def copy(
    file: CacheFile,
    output: Output,
    quiet: QuietPath = False,
) -> None:
    """Copy a cache with its sources folder under a new name; the copy's links point into its own
    folder, so plain h5py reads the copy's data, not the original's.

    [bold]Examples[/]

      vea-bench cache copy cache/fi.h5 cache/fi_v2.h5
    """
    from vea_bench.cache import copy_cache

    _portable_done(run_guarded(copy_cache, file, output), "copied", quiet)


@app.command("move")
def move(
    file: CacheFile,
    output: Output,
    quiet: QuietPath = False,
) -> None:
    """Move (rename) a cache with its sources folder; the links follow the new name.

    [bold]Examples[/]

      vea-bench cache move cache/fi.h5 /data/caches/fi.h5
    """
    from vea_bench.cache import move_cache

    _portable_done(run_guarded(move_cache, file, output), "moved", quiet)
