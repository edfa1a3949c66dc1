"""`vea-bench train distill|gate`: stages 2 and 3 of EmoVLM-KD from the cache alone."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vea_bench_cli.common import console, echo_path, run_guarded, setup_logging
from vea_bench_cli.train_cmd import app

# Shared option definitions (the sweep commands use them too).
CacheOpt = Annotated[Path, typer.Option("--cache", help="HDF5 feature cache (from `vea-bench extract`).")]
VisualOpt = Annotated[Optional[str], typer.Option("--visual", help="visual source key (default: the only one).")]
TeacherOpt = Annotated[Optional[str], typer.Option("--teacher", help="teacher source key (default: the only one).")]
VlmOpt = Annotated[Optional[str], typer.Option("--vlm", help="VLM source key (default: the only one).")]
DepthOpt = Annotated[int, typer.Option("--depth", help="distill hidden layers, 1..5 ([1024, 512, 256, 128, 64][:depth]).")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="KD weight: alpha*tau^2*KL + (1-alpha)*CE.")]
TauOpt = Annotated[float, typer.Option("--tau", help="KD temperature.")]
DropoutOpt = Annotated[float, typer.Option("--dropout", help="distill head dropout.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of init, data order and dropout.")]
ScheduleOpt = Annotated[str, typer.Option(
    "--schedule", help="default (mini-batches, epoch budget, early stopping on val, best epoch kept; members "
                       "batched) or reference (batch 1, reference lrs, fixed epochs, last epoch: a faithful reproduction).")]
KeepOpt = Annotated[Optional[str], typer.Option(
    "--keep", help="which epoch's weights to keep: best (on val; default schedule) or last (reference).")]
PatienceOpt = Annotated[Optional[int], typer.Option(
    "--patience", help="default schedule: stop a member after this many epochs without val improvement (0: never).")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="distill head matmuls: fp32, bf16 (fp32 master weights, Adam state and loss) or auto "
                        "(bf16 on a bf16-capable CUDA device, fp32 elsewhere).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
ResultsOpt = Annotated[Path, typer.Option("--results", help="folder for run records and weights.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="print only the record path(s).")]
GateOpt = Annotated[str, typer.Option("--gate", help="gate: concat, moe, bilinear, dynamic, crossgating.")]
GateFitOpt = Annotated[str, typer.Option(
    "--gate-fit", help="split whose distill outputs fit the gate: train (reference), val, crossfit (K-fold OOF).")]
FoldsOpt = Annotated[int, typer.Option("--folds", help="K for --gate-fit crossfit.")]
LrScalingOpt = Annotated[str, typer.Option(
    "--lr-scaling", help="--lr is the batch-1 rate; at batch B Adam uses lr*sqrt(B) (sqrt), lr*B (linear) or lr (none).")]
SolverOpt = Annotated[str, typer.Option(
    "--solver", help="gate fit: adam (the schedule) or lbfgs (concat only: exact full-batch fit, no schedule).")]
VlmInputOpt = Annotated[str, typer.Option("--vlm-input", help="onehot (paper) or logprobs (softmax of per-label log-probs).")]


def load_data(cache: Path, *, need: tuple[str, ...], visual: str | None = None, teacher: str | None = None,
              vlm: str | None = None, vlm_input: str = "onehot") -> Any:
    """Open the cache, read and check the needed sources, close it."""
    from vea_bench.cache.store import FeatureCache
    from vea_bench.heads.data import load_head_data

    with FeatureCache.open(cache) as c:
        return load_head_data(c, visual=visual, teacher=teacher, vlm=vlm, need=need, vlm_input=vlm_input)


def _patience(patience: int | None) -> Any:
    """``--patience 0`` turns early stopping off (``None``); unset keeps the schedule's own."""
    if patience is None:
        return None
    if patience < 0:
        from vea_bench.errors import ConfigError

        raise ConfigError("--patience must be 0 (off) or positive")
    return "off" if patience == 0 else patience


def distill_config(*, depth: int, alpha: float, tau: float, lr: float | None, weight_decay: float | None,
                   epochs: int | None, batch_size: int | None, dropout: float, seed: int, keep: str | None,
                   schedule: str, lr_scaling: str = "sqrt", patience: int | None = None,
                   precision: str = "fp32") -> Any:
    from dataclasses import replace

    from vea_bench.heads.pipeline import DistillConfig, apply_schedule

    pat = _patience(patience)
    explicit = {"lr": lr, "weight_decay": weight_decay, "epochs": epochs, "batch_size": batch_size, "keep": keep,
                "lr_scaling": lr_scaling if lr_scaling != "sqrt" else None,
                "precision": precision if precision != "fp32" else None}
    cfg = DistillConfig(depth=depth, alpha=alpha, tau=tau, dropout=dropout, seed=seed, schedule=schedule,
                        lr_scaling=lr_scaling, precision=precision)
    cfg = replace(cfg, **{k: v for k, v in explicit.items() if v is not None})
    if pat is not None:
        cfg = replace(cfg, patience=None if pat == "off" else pat)
        explicit["patience"] = cfg.patience
    return apply_schedule(cfg, "distill", explicit=explicit)


def gate_config(*, gate: str, gate_fit: str, folds: int, vlm_input: str, lr: float | None,
                weight_decay: float | None, epochs: int | None, batch_size: int | None, seed: int, keep: str | None,
                schedule: str, lr_scaling: str = "sqrt", patience: int | None = None, solver: str = "adam") -> Any:
    from dataclasses import replace

    from vea_bench.heads.pipeline import GateConfig, apply_schedule

    pat = _patience(patience)
    explicit = {"lr": lr, "weight_decay": weight_decay, "epochs": epochs, "batch_size": batch_size, "keep": keep,
                "gate_fit": gate_fit if gate_fit != "train" else None,
                "lr_scaling": lr_scaling if lr_scaling != "sqrt" else None,
                "solver": solver if solver != "adam" else None}
    cfg = GateConfig(gate=gate, gate_fit=gate_fit, folds=folds, vlm_input=vlm_input, seed=seed, schedule=schedule,
                     lr_scaling=lr_scaling, solver=solver)
    cfg = replace(cfg, **{k: v for k, v in explicit.items() if v is not None})
    if pat is not None:
        cfg = replace(cfg, patience=None if pat == "off" else pat)
        explicit["patience"] = cfg.patience
    return apply_schedule(cfg, "gate", explicit=explicit)


def show_records(records: list[Any], title: str) -> None:
    """A table of the runs' val/test accuracy, macro-F1 and KL, plus where the records went."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("run", "method", "config", "val acc", "test acc", "test macro-F1", "test KL", "params",
                "epoch kept / run"):
        t.add_column(col)
    for r in records:
        cfg = r.config
        desc = (f"gate={cfg['gate']} fit={cfg['gate_fit']} vlm={cfg['vlm_input']}" if r.kind == "gate"
                else f"depth={cfg['depth']} alpha={cfg['alpha']:g}")
        desc += f" seed={r.seed}"

        def f(split: str, key: str) -> str:
            v = r.metrics.get(split, {}).get(key)
            return "-" if v is None else (f"{100 * v:.2f}" if key != "kl_to_teacher" else f"{v:.4f}")

        conv = r.convergence or {}
        epochs = f"{conv.get('kept_epoch')} / {conv.get('epochs_run')}" if conv.get("epochs_run") else "-"
        t.add_row(r.run_id, r.method, desc, f("val", "accuracy"), f("test", "accuracy"), f("test", "macro_f1"),
                  f("test", "kl_to_teacher"), f"{r.params:,}", epochs)
    console.print(t)


@app.command("distill")
def distill_cmd(
    cache: CacheOpt,
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    depth: DepthOpt = 1,
    alpha: AlphaOpt = 0.5,
    tau: TauOpt = 2.0,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam lr (default 1e-5, the reference code's; the paper says 1e-3).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="Adam L2 weight decay (1e-4).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="epoch budget (default schedule: 60, early-stopped on val; reference: 5).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="mini-batch size (default schedule: 256; Adam lr scaled by sqrt(batch)).")] = None,
    dropout: DropoutOpt = 0.1,
    seed: SeedOpt = 0,
    keep: KeepOpt = None,
    schedule: ScheduleOpt = "default",
    lr_scaling: LrScalingOpt = "sqrt",
    patience: PatienceOpt = None,
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
) -> None:
    """Train the distill head (stage 2) on the cached visual embeddings against the teacher's logits."""

    def go() -> None:
        from vea_bench.heads.sweep import SweepPlan, run_plan
        from vea_bench_cli.common import RichProgress

        setup_logging(quiet)
        cfg = distill_config(depth=depth, alpha=alpha, tau=tau, lr=lr, weight_decay=weight_decay, epochs=epochs,
                             batch_size=batch_size, dropout=dropout, seed=seed, keep=keep, schedule=schedule,
                             lr_scaling=lr_scaling, patience=patience, precision=precision)
        data = load_data(cache, need=("visual", "teacher"), visual=visual, teacher=teacher)
        recs = run_plan(SweepPlan("distill", [cfg], []), data, results_dir=results, device=device,
                        progress=RichProgress("step", quiet=quiet), group=None)
        if quiet:
            echo_path(Path(results) / "distill" / f"{recs[0].run_id}.json", True)
        else:
            show_records(recs, f"distill head on {data.dataset}")
            console.print(f"record: {Path(results) / 'distill' / (recs[0].run_id + '.json')}")

    run_guarded(go)


@app.command("gate")
def gate_cmd(
    cache: CacheOpt,
    gate: GateOpt = "concat",
    gate_fit: GateFitOpt = "train",
    folds: FoldsOpt = 5,
    vlm: VlmOpt = None,
    vlm_input: VlmInputOpt = "onehot",
    distill: Annotated[Optional[str], typer.Option(
        "--distill", help="reuse a saved distill head (run id or its artifacts folder); else train one.")] = None,
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    depth: DepthOpt = 1,
    alpha: AlphaOpt = 0.5,
    tau: TauOpt = 2.0,
    distill_lr: Annotated[Optional[float], typer.Option("--distill-lr", help="distill Adam lr (1e-5).")] = None,
    distill_epochs: Annotated[Optional[int], typer.Option("--distill-epochs", help="distill epoch budget (default schedule 60, early-stopped; reference 5).")] = None,
    distill_batch_size: Annotated[Optional[int], typer.Option("--distill-batch-size", help="distill mini-batch.")] = None,
    dropout: DropoutOpt = 0.1,
    lr: Annotated[Optional[float], typer.Option("--lr", help="gate Adam batch-1 lr (default schedule 1e-3; reference 1e-4, the reference code's).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="gate Adam weight decay (1e-4).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="gate epoch budget (default schedule: 200, early-stopped on val; reference: 10).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="gate mini-batch size (default schedule: 64; Adam lr scaled by sqrt(batch)).")] = None,
    seed: SeedOpt = 0,
    keep: KeepOpt = None,
    schedule: ScheduleOpt = "default",
    lr_scaling: LrScalingOpt = "sqrt",
    patience: PatienceOpt = None,
    solver: SolverOpt = "adam",
    precision: PrecisionOpt = "fp32",
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
) -> None:
    """Train a gate (stage 3) over the distill head's logits and the VLM's answer: EmoVLM-KD."""

    def go() -> None:
        from vea_bench.heads.pipeline import load_distill_run
        from vea_bench.heads.sweep import SweepPlan, run_plan
        from vea_bench_cli.common import RichProgress

        setup_logging(quiet)
        gcfg = gate_config(gate=gate, gate_fit=gate_fit, folds=folds, vlm_input=vlm_input, lr=lr,
                           weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, seed=seed, keep=keep,
                           schedule=schedule, lr_scaling=lr_scaling, patience=patience, solver=solver)
        dcfg = distill_config(depth=depth, alpha=alpha, tau=tau, lr=distill_lr, weight_decay=None,
                              epochs=distill_epochs, batch_size=distill_batch_size, dropout=dropout, seed=seed,
                              keep=keep, schedule=schedule, lr_scaling=lr_scaling, precision=precision)
        data = load_data(cache, need=("visual", "teacher", "vlm"), visual=visual, teacher=teacher, vlm=vlm,
                         vlm_input=gcfg.vlm_input)
        reused = None
        if distill is not None:
            reused = [load_distill_run(distill, results, data)]
            dcfg = reused[0].config
        plan = SweepPlan("gate", [dcfg], [(gcfg, 0)])
        recs = run_plan(plan, data, results_dir=results, device=device, progress=RichProgress("step", quiet=quiet),
                        distill_results=reused, distill_run=reused[0].extra.get("run_id") if reused else None)
        paths = [Path(results) / r.kind / f"{r.run_id}.json" for r in recs]
        if quiet:
            echo_path(paths[-1], True)
        else:
            show_records(recs, f"EmoVLM-KD on {data.dataset} (gate fitted on {gcfg.gate_fit})")
            for p in paths:
                console.print(f"record: {p}")

    run_guarded(go)
