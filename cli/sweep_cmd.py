"""`vea-bench sweep alpha|depth|gate|seed`: batched sweeps against the cache, with a live table."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vea_bench_cli.common import console, echo_path, err_console, run_guarded, setup_logging
from vea_bench_cli.train_heads_cmd import (
    AlphaOpt,
    CacheOpt,
    DepthOpt,
    DeviceOpt,
    DropoutOpt,
    FoldsOpt,
    GateFitOpt,
    KeepOpt,
    LrScalingOpt,
    PatienceOpt,
    PrecisionOpt,
    QuietOpt,
    ResultsOpt,
    ScheduleOpt,
    SolverOpt,
    TauOpt,
    TeacherOpt,
    VisualOpt,
    VlmInputOpt,
    VlmOpt,
    distill_config,
    gate_config,
    load_data,
    show_records,
)

app = typer.Typer(no_args_is_help=True)

SeedsOpt = Annotated[str, typer.Option("--seeds", help="seeds: comma list or start:stop:step (inclusive).")]
LrsOpt = Annotated[Optional[str], typer.Option("--lrs", help="distill learning rates to cross with the grid (comma list).")]
DistillLrOpt = Annotated[Optional[float], typer.Option("--lr", help="distill Adam lr (1e-5).")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="distill epoch budget (default schedule 60, early-stopped on val; reference 5).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="distill mini-batch (default schedule: 256; Adam lr scaled by sqrt(batch)).")]
GateLrOpt = Annotated[Optional[float], typer.Option("--gate-lr", help="gate Adam batch-1 lr (default schedule 1e-3, reference 1e-4).")]
GateEpochsOpt = Annotated[Optional[int], typer.Option("--gate-epochs", help="gate epoch budget (default schedule 200, early-stopped on val; reference 10).")]
GatePatienceOpt = Annotated[Optional[int], typer.Option(
    "--gate-patience", help="gate early-stopping patience (default schedule: 15; 0: never).")]
GateBatchOpt = Annotated[Optional[int], typer.Option("--gate-batch-size", help="gate mini-batch (default schedule: 64; Adam lr scaled by sqrt(batch)).")]


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


def _sweep(kind: str, *, cache: Path, seeds: str, alphas: str | None, depths: str | None, gates: str | None,
           lrs: str | None, opts: dict[str, Any]) -> None:
    def go() -> None:
        from vea_bench.heads.sweep import parse_grid, parse_names, plan_sweep, run_plan

        setup_logging(opts["quiet"])
        seed_list = parse_grid(seeds, int, flag="--seeds")
        alpha_list = parse_grid(alphas, float, flag="--alphas") if alphas else None
        depth_list = parse_grid(depths, int, flag="--depths") if depths else None
        lr_list = parse_grid(lrs, float, flag="--lrs") if lrs else None
        gate_list = parse_names(gates) if gates else None
        dcfg = distill_config(depth=opts["depth"], alpha=opts["alpha"], tau=opts["tau"], lr=opts["lr"],
                              weight_decay=None, epochs=opts["epochs"], batch_size=opts["batch_size"],
                              dropout=opts["dropout"], seed=seed_list[0], keep=opts["keep"], schedule=opts["schedule"],
                              lr_scaling=opts["lr_scaling"], patience=opts.get("patience"),
                              precision=opts.get("precision", "fp32"))
        gcfg = gate_config(gate=opts.get("gate", "concat"), gate_fit=opts.get("gate_fit", "train"),
                           folds=opts.get("folds", 5), vlm_input=opts.get("vlm_input", "onehot"), lr=opts.get("gate_lr"),
                           weight_decay=None, epochs=opts.get("gate_epochs"), batch_size=opts.get("gate_batch_size"),
                           seed=seed_list[0], keep=opts["keep"], schedule=opts["schedule"],
                           lr_scaling=opts["lr_scaling"], patience=opts.get("gate_patience"),
                           solver=opts.get("solver", "adam"))
        plan = plan_sweep(kind, dcfg, gcfg, seeds=seed_list, alphas=alpha_list, depths=depth_list, lrs=lr_list,
                          gates=gate_list)
        need = ("visual", "teacher", "vlm") if plan.gates else ("visual", "teacher")
        data = load_data(cache, need=need, visual=opts["visual"], teacher=opts["teacher"], vlm=opts.get("vlm"),
                         vlm_input=gcfg.vlm_input)
        n = len(plan.distill) + len(plan.gates)
        with LiveSweep(f"sweep {kind} on {data.dataset}: {n} runs", quiet=opts["quiet"]) as live:
            recs = run_plan(plan, data, results_dir=opts["results"], device=opts["device"], progress=live)
        if opts["quiet"]:
            for r in recs:
                echo_path(Path(opts["results"]) / r.kind / f"{r.run_id}.json", True)
        else:
            show_records(recs, f"sweep {kind}: group {recs[0].group}")
            console.print(f"{len(recs)} records in {opts['results']}/ (group {recs[0].group})")

    run_guarded(go)


@app.command("alpha")
def sweep_alpha(
    cache: CacheOpt,
    alphas: Annotated[str, typer.Option("--alphas", help="alpha grid, e.g. 0:1:0.1 or 0,0.5,1.")] = "0:1:0.1",
    seeds: SeedsOpt = "0,1,2",
    lrs: LrsOpt = None,
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    depth: DepthOpt = 1,
    tau: TauOpt = 2.0,
    lr: DistillLrOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    dropout: DropoutOpt = 0.1,
    keep: KeepOpt = None,
    schedule: ScheduleOpt = "default",
    lr_scaling: LrScalingOpt = "sqrt",
    patience: PatienceOpt = None,
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
) -> None:
    """Distill heads over alphas x seeds (paper Figure 3), all members as one batched model."""
    opts = dict(visual=visual, teacher=teacher, depth=depth, alpha=0.5, tau=tau, lr=lr, epochs=epochs,
                batch_size=batch_size, dropout=dropout, keep=keep, schedule=schedule, lr_scaling=lr_scaling, patience=patience,
                precision=precision, device=device, results=results, quiet=quiet)
    _sweep("alpha", cache=cache, seeds=seeds, alphas=alphas, depths=None, gates=None, lrs=lrs, opts=opts)


@app.command("depth")
def sweep_depth(
    cache: CacheOpt,
    depths: Annotated[str, typer.Option("--depths", help="depth grid, e.g. 1,2,3,4,5 or 1:5:1.")] = "1,2,3,4,5",
    seeds: SeedsOpt = "0,1,2",
    lrs: LrsOpt = None,
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    alpha: AlphaOpt = 0.5,
    tau: TauOpt = 2.0,
    lr: DistillLrOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    dropout: DropoutOpt = 0.1,
    keep: KeepOpt = None,
    schedule: ScheduleOpt = "default",
    lr_scaling: LrScalingOpt = "sqrt",
    patience: PatienceOpt = None,
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
) -> None:
    """Distill heads over depths x seeds (paper Table 3); each depth's members batched."""
    opts = dict(visual=visual, teacher=teacher, depth=1, alpha=alpha, tau=tau, lr=lr, epochs=epochs,
                batch_size=batch_size, dropout=dropout, keep=keep, schedule=schedule, lr_scaling=lr_scaling, patience=patience,
                precision=precision, device=device, results=results, quiet=quiet)
    _sweep("depth", cache=cache, seeds=seeds, alphas=None, depths=depths, gates=None, lrs=lrs, opts=opts)


def _gate_sweep(kind: str, cache: Path, seeds: str, gates: str | None, opts: dict[str, Any]) -> None:
    _sweep(kind, cache=cache, seeds=seeds, alphas=None, depths=None, gates=gates, lrs=None, opts=opts)


@app.command("gate")
def sweep_gate(
    cache: CacheOpt,
    gates: Annotated[Optional[str], typer.Option("--gates", help="gates (comma list; default all registered).")] = None,
    seeds: SeedsOpt = "0,1,2",
    gate_fit: GateFitOpt = "train",
    folds: FoldsOpt = 5,
    vlm: VlmOpt = None,
    vlm_input: VlmInputOpt = "onehot",
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    depth: DepthOpt = 1,
    alpha: AlphaOpt = 0.5,
    tau: TauOpt = 2.0,
    lr: DistillLrOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    dropout: DropoutOpt = 0.1,
    gate_lr: GateLrOpt = None,
    gate_epochs: GateEpochsOpt = None,
    gate_batch_size: GateBatchOpt = None,
    gate_patience: GatePatienceOpt = None,
    solver: SolverOpt = "adam",
    keep: KeepOpt = None,
    schedule: ScheduleOpt = "default",
    lr_scaling: LrScalingOpt = "sqrt",
    patience: PatienceOpt = None,
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
) -> None:
    """The gates of paper Table 4 x seeds, each over its seed's distill head (one head per seed)."""
    opts = dict(visual=visual, teacher=teacher, vlm=vlm, vlm_input=vlm_input, gate_fit=gate_fit, folds=folds,
                depth=depth, alpha=alpha, tau=tau, lr=lr, epochs=epochs, batch_size=batch_size, dropout=dropout,
                gate_lr=gate_lr, gate_epochs=gate_epochs, gate_batch_size=gate_batch_size, keep=keep,
                schedule=schedule, lr_scaling=lr_scaling, patience=patience, precision=precision,
                gate_patience=gate_patience, solver=solver, device=device, results=results, quiet=quiet)
    _gate_sweep("gate", cache, seeds, gates, opts)


@app.command("seed")
def sweep_seed(
    cache: CacheOpt,
    seeds: SeedsOpt = "0,1,2",
    gate: Annotated[str, typer.Option("--gate", help="gate over each seed's distill head.")] = "concat",
    gate_fit: GateFitOpt = "train",
    folds: FoldsOpt = 5,
    vlm: VlmOpt = None,
    vlm_input: VlmInputOpt = "onehot",
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    depth: DepthOpt = 1,
    alpha: AlphaOpt = 0.5,
    tau: TauOpt = 2.0,
    lr: DistillLrOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    dropout: DropoutOpt = 0.1,
    gate_lr: GateLrOpt = None,
    gate_epochs: GateEpochsOpt = None,
    gate_batch_size: GateBatchOpt = None,
    gate_patience: GatePatienceOpt = None,
    solver: SolverOpt = "adam",
    keep: KeepOpt = None,
    schedule: ScheduleOpt = "default",
    lr_scaling: LrScalingOpt = "sqrt",
    patience: PatienceOpt = None,
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
) -> None:
    """The whole EmoVLM-KD (distill head + gate) once per seed: its spread across seeds."""
    opts = dict(visual=visual, teacher=teacher, vlm=vlm, vlm_input=vlm_input, gate=gate, gate_fit=gate_fit,
                folds=folds, depth=depth, alpha=alpha, tau=tau, lr=lr, epochs=epochs, batch_size=batch_size,
                dropout=dropout, gate_lr=gate_lr, gate_epochs=gate_epochs, gate_batch_size=gate_batch_size, keep=keep,
                schedule=schedule, lr_scaling=lr_scaling, patience=patience, precision=precision,
                gate_patience=gate_patience, solver=solver, device=device, results=results, quiet=quiet)
    _gate_sweep("seed", cache, seeds, gate, opts)
