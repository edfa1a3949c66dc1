"""`vea-bench sweep alpha|depth|gate|seed`: batched sweeps against the cache, with a live table."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vea_bench.heads.config import DistillConfig, GateConfig
from vea_bench_cli.common import console, echo_path, err_console, run_guarded, setup_logging
from vea_bench_cli.schema_options import Group, config_options
from vea_bench_cli.tracker_option import TrackerOpt, log_records
from vea_bench_cli.train_heads_cmd import (
    DISTILL_PLAIN,
    GATE_PLAIN,
    CacheOpt,
    DeviceOpt,
    QuietOpt,
    ResultsOpt,
    TeacherOpt,
    VisualOpt,
    VlmOpt,
    load_data,
    show_records,
)

app = typer.Typer(no_args_is_help=True)

SeedsOpt = Annotated[str, typer.Option("--seeds", help="seeds: comma list or start:stop:step (inclusive).")]
LrsOpt = Annotated[Optional[str], typer.Option("--lrs", help="distill learning rates to cross with the grid (comma list).")]


def sweep_groups(*, grid: str, gates: bool) -> tuple[Group, ...]:
    """The one option definition of every sweep: the distill head's fields, and the gate's where gates train.

    The seed comes from --seeds and the swept field from its grid option, so neither is an option
    of its own; the gate's optimiser options carry a ``gate-`` prefix (--gate-lr, --gate-epochs).
    """
    distill = Group("distill_options", DistillConfig, plain=DISTILL_PLAIN,
                    exclude=("seed",) + ((grid,) if grid in ("alpha", "depth") else ()))
    if not gates:
        return (distill,)
    gate = Group("gate_options", GateConfig, prefix="gate-", plain=GATE_PLAIN,
                 exclude=("seed",) + (("gate",) if grid == "gate" else ()))
    return distill, gate


class LiveSweep:
    """The library's Progress protocol rendered as a progress bar over a live table of finished members."""

    def __init__(self, title: str, quiet: bool = False) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table

        self.quiet = quiet
        self.table = Table(title=title)
        for col in ("member", "val acc", "test acc"):
            self.table.add_column(col)
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=err_console)
        self.task: Any = None
        self.live: Any = None

    def __enter__(self) -> LiveSweep:
        if not self.quiet:
            from rich.console import Group
            from rich.live import Live

            self.live = Live(Group(self.bar, self.table), console=err_console, refresh_per_second=4)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def start(self, description: str, total: int | None = None) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(description, total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        if "member" in info:
            fmt = lambda k: f"{100 * info[k]:.2f}" if k in info else "-"  # noqa: E731
            self.table.add_row(str(info["member"]), fmt("val_acc"), fmt("test_acc"))
            return
        if self.task is not None:
            text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
            self.bar.update(self.task, advance=n, info=text)

    def finish(self) -> None:
        return None


def _sweep(kind: str, *, cache: Path, seeds: str, grid: dict[str, str | None], distill_options: dict[str, Any],
           gate_options: dict[str, Any], sources: dict[str, str | None], device: str, results: Path,
           quiet: bool, tracker: str | None = None) -> None:
    def go() -> None:
        from vea_bench.heads.config import make_config
        from vea_bench.heads.sweep import parse_grid, parse_names, plan_sweep, run_plan
        from vea_bench.results import ResultsStore

        setup_logging(quiet)
        seed_list = parse_grid(seeds, int, flag="--seeds")
        alpha_list = parse_grid(grid["alphas"], float, flag="--alphas") if grid.get("alphas") else None
        depth_list = parse_grid(grid["depths"], int, flag="--depths") if grid.get("depths") else None
        lr_list = parse_grid(grid["lrs"], float, flag="--lrs") if grid.get("lrs") else None
        gate_list = parse_names(grid["gates"]) if grid.get("gates") else None
        dcfg = make_config("distill", distill_options, seed=seed_list[0])
        gcfg = make_config("gate", gate_options, seed=seed_list[0])
        plan = plan_sweep(kind, dcfg, gcfg, seeds=seed_list, alphas=alpha_list, depths=depth_list, lrs=lr_list,
                          gates=gate_list)
        need = ("visual", "teacher", "vlm") if plan.gates else ("visual", "teacher")
        data = load_data(cache, need=need, visual=sources["visual"], teacher=sources["teacher"],
                         vlm=sources.get("vlm"), vlm_input=gcfg.vlm_input)
        n = len(plan.distill) + len(plan.gates)
        with LiveSweep(f"sweep {kind} on {data.dataset}: {n} runs", quiet=quiet) as live:
            recs = run_plan(plan, data, results_dir=results, device=device, progress=live)
        log_records(tracker, recs)
        if quiet:
            for r in recs:
                echo_path(ResultsStore(results).record_path(r), True)
        else:
            show_records(recs, f"sweep {kind}: group {recs[0].group}")
            console.print(f"{len(recs)} records in {results}/ (group {recs[0].group})")

    run_guarded(go)


@app.command("alpha")
@config_options(*sweep_groups(grid="alpha", gates=False))
def sweep_alpha(
    cache: CacheOpt,
    distill_options: dict[str, Any],
    alphas: Annotated[str, typer.Option("--alphas", help="alpha grid, e.g. 0:1:0.1 or 0,0.5,1.")] = "0:1:0.1",
    seeds: SeedsOpt = "0,1,2",
    lrs: LrsOpt = None,
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
    tracker: TrackerOpt = None,
) -> None:
    """Distill heads over alphas x seeds (paper Figure 3), all members as one batched model."""
    _sweep("alpha", cache=cache, seeds=seeds, grid={"alphas": alphas, "lrs": lrs}, distill_options=distill_options,
           gate_options={}, sources={"visual": visual, "teacher": teacher}, device=device, results=results,
           quiet=quiet, tracker=tracker)


@app.command("depth")
@config_options(*sweep_groups(grid="depth", gates=False))
def sweep_depth(
    cache: CacheOpt,
    distill_options: dict[str, Any],
    depths: Annotated[str, typer.Option("--depths", help="depth grid, e.g. 1,2,3,4,5 or 1:5:1.")] = "1,2,3,4,5",
    seeds: SeedsOpt = "0,1,2",
    lrs: LrsOpt = None,
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
    tracker: TrackerOpt = None,
) -> None:
    """Distill heads over depths x seeds (paper Table 3); each depth's members batched."""
    _sweep("depth", cache=cache, seeds=seeds, grid={"depths": depths, "lrs": lrs}, distill_options=distill_options,
           gate_options={}, sources={"visual": visual, "teacher": teacher}, device=device, results=results,
           quiet=quiet, tracker=tracker)


@app.command("gate")
@config_options(*sweep_groups(grid="gate", gates=True))
def sweep_gate(
    cache: CacheOpt,
    distill_options: dict[str, Any],
    gate_options: dict[str, Any],
    gates: Annotated[Optional[str], typer.Option("--gates", help="gates (comma list; default all registered).")] = None,
    seeds: SeedsOpt = "0,1,2",
    vlm: VlmOpt = None,
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
    tracker: TrackerOpt = None,
) -> None:
    """The gates of paper Table 4 x seeds, each over its seed's distill head (one head per seed)."""
    _sweep("gate", cache=cache, seeds=seeds, grid={"gates": gates}, distill_options=distill_options,
           gate_options=gate_options, sources={"visual": visual, "teacher": teacher, "vlm": vlm}, device=device,
           results=results, quiet=quiet, tracker=tracker)


@app.command("seed")
@config_options(*sweep_groups(grid="seed", gates=True))
def sweep_seed(
    cache: CacheOpt,
    distill_options: dict[str, Any],
    gate_options: dict[str, Any],
    seeds: SeedsOpt = "0,1,2",
    vlm: VlmOpt = None,
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
    tracker: TrackerOpt = None,
) -> None:
    """The whole EmoVLM-KD (distill head + gate) once per seed: its spread across seeds."""
    _sweep("seed", cache=cache, seeds=seeds, grid={}, distill_options=distill_options, gate_options=gate_options,
           sources={"visual": visual, "teacher": teacher, "vlm": vlm}, device=device, results=results, quiet=quiet,
           tracker=tracker)
