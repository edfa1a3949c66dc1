"""`vea-bench run EXPERIMENT.toml` and `vea-bench demo`: the whole study, stage by stage, cache-aware."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vea_bench_cli.common import RichProgress, console, err_console, run_guarded, setup_logging
from vea_bench_cli.tracker_option import TrackerOpt, tracking


def _stage_line(quiet: bool) -> Any:
    def show(res: Any) -> None:
        if quiet:
            return
        if res.status == "skipped":
            err_console.print(f"[dim]- {res.name}: up to date, skipped[/]")
        else:
            err_console.print(f"[green]✓[/] {res.name}: ran in {res.seconds:.1f} s")

    return show


def _summary(results: list[Any], workdir: Path, wall: float) -> None:
    from rich.table import Table

    t = Table(title=f"stages ({wall:.1f} s)")
    t.add_column("stage")
    t.add_column("status")
    t.add_column("seconds", justify="right")
    t.add_column("outputs")
    for r in results:
        outs = r.outputs
        what = f"{len(outs['run_ids'])} run(s)" if outs.get("run_ids") else ""
        if "checkpoint" in outs:
            what = f"checkpoint {outs['checkpoint']}"
        if "adapter" in outs:
            what = f"adapter {outs['adapter']}"
        if "cache" in outs:
            what = f"cache {outs['cache']} ({outs.get('images_per_s', 0)} img/s)"
        if r.name == "report":
            what = f"{len(outs.get('paths', []))} files"
        t.add_row(r.name, r.status, f"{r.seconds:.1f}" if r.status == "ran" else "-", what)
    console.print(t)
    console.print(f"run records: {workdir}    tables: {workdir / 'tables'}    plots: {workdir / 'plots'}")
    tables = workdir / "tables" / "tables.md"
    if tables.exists():
        console.print(f"view the tables: [bold]vea-bench table --results {workdir}[/]")
    page = workdir / "report" / "index.html"
    if page.exists():
        console.print(f"open the report in a browser: {page.as_uri()}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `run` and `demo` to ``app``."""

    @app.command("run")
    def run_cmd(
        experiment: Annotated[Path, typer.Argument(help="Experiment TOML (see experiments/*.toml).")],
        force: Annotated[
            list[str] | None, typer.Option("--force", help="Rerun this stage even if up to date (repeatable).")
        ] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="List the stages and whether each would run.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the work folder.")] = False,
        tracker: TrackerOpt = None,
    ) -> None:
        """Run a whole study from one experiment file, skipping every stage whose outputs exist with the same config.

        Stages: teacher -> qlora -> extract -> distill -> gate:<name> ... -> sweep:alpha / sweep:depth ->
        baselines -> report. Change one gate in the file and only that gate (and the report) reruns;
        change the teacher and everything downstream reruns.

        Example: vea-bench run experiments/fi.toml
        """

        def go() -> None:
            from vea_bench.pipeline.experiment import load_experiment
            from vea_bench.pipeline.ledger import Ledger
            from vea_bench.pipeline.stages import build_stages, run_experiment

            setup_logging(quiet)
            exp = load_experiment(experiment)
            if dry_run:
                from vea_bench.hashing import config_hash

                ledger = Ledger.load(exp.workdir / "artifacts" / "stages.json")
                ids: dict[str, str] = {}
                for s in build_stages(exp):
                    ids[s.name] = config_hash({"config": s.config, "deps": {d: ids[d] for d in s.deps}})
                    state = "up to date" if ledger.done(s.name, ids[s.name]) is not None else "would run"
                    console.print(f"{s.name}: {state}")
                return
            t0 = time.perf_counter()
            with tracking(tracker or exp.experiment.tracker, group=exp.experiment.name) as tr:
                results = run_experiment(exp, progress=RichProgress("step", quiet=quiet), force=force or [],
                                         on_stage=_stage_line(quiet), tracker=tr)
            if quiet:
                typer.echo(str(exp.workdir))
                return
            _summary(results, exp.workdir, time.perf_counter() - t0)

        run_guarded(go)

    @app.command("demo")
    def demo_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help="Where the demo writes everything.")] = Path("results/demo"),
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output folder.")] = False,
        markdown: Annotated[Optional[Path], typer.Option(
            "--markdown", help="Also write the results section (test accuracy per stage and method, mean ± std "
                               "over seeds, stage times) as Markdown to this file: the README's demo figures.")] = None,
    ) -> None:
        """The embedded default, offline on CPU: synthetic set + tiny models through every stage.

        Writes a synthetic FI-layout set, builds a tiny Qwen2-VL and a tiny ViT teacher, fine-tunes the
        teacher, runs a few LoRA steps, extracts the cache, trains distill heads and gates, sweeps alpha,
        computes the baselines, and renders tables and plots into OUT. Running it again reuses everything.
        """

        def go() -> None:
            from vea_bench.pipeline.demo import demo_markdown, prepare_demo
            from vea_bench.pipeline.experiment import load_experiment
            from vea_bench.pipeline.stages import run_experiment

            setup_logging(quiet)
            t0 = time.perf_counter()
            progress = RichProgress("step", quiet=quiet)
            path = prepare_demo(out, progress=progress)
            exp = load_experiment(path)
            results = run_experiment(exp, progress=progress, on_stage=_stage_line(quiet))
            if markdown is not None:
                markdown.parent.mkdir(parents=True, exist_ok=True)
                markdown.write_text(demo_markdown(exp.workdir))
            if quiet:
                typer.echo(str(exp.workdir))
                return
            _summary(results, exp.workdir, time.perf_counter() - t0)
            if markdown is not None:
                console.print(f"results section (Markdown): {markdown}")
            md = exp.workdir / "tables" / "tables.md"
            if md.exists():
                console.print(f"tables (Markdown): {md}")
            console.print(f"experiment file: {path}  (rerun: vea-bench run {path})")

        run_guarded(go)
