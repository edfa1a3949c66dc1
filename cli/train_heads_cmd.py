"""`vea-bench train distill|gate`: stages 2 and 3 of EmoVLM-KD from the cache alone."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vea_bench.heads.config import DistillConfig, GateConfig
from vea_bench_cli.common import console, echo_path, run_guarded, setup_logging
from vea_bench_cli.schema_options import Group, config_options
from vea_bench_cli.tracker_option import TrackerOpt, log_records
from vea_bench_cli.train_cmd import app

# Shared option definitions (the sweep commands use them too). The config options themselves are
# generated from `DistillConfig` / `GateConfig` (`vea_bench_cli.schema_options`).
CacheOpt = Annotated[Path, typer.Option("--cache", help="HDF5 feature cache (from `vea-bench extract`).")]
VisualOpt = Annotated[Optional[str], typer.Option("--visual", help="visual source key (default: the only one).")]
TeacherOpt = Annotated[Optional[str], typer.Option("--teacher", help="teacher source key (default: the only one).")]
VlmOpt = Annotated[Optional[str], typer.Option("--vlm", help="VLM source key (default: the only one).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
ResultsOpt = Annotated[Path, typer.Option("--results", help="folder for run records and weights.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="print only the record path(s).")]

# The distill head's options around a gate: the architecture and the run-wide settings (schedule,
# keep, lr scaling, seed) without a prefix, the optimiser as --distill-lr / --distill-epochs / ...
DISTILL_PLAIN = ("depth", "head", "head_kwargs", "alpha", "tau", "dropout", "keep", "schedule", "lr_scaling",
                 "precision", "seed")
# The gate's options beside a distill head (sweeps): the gate's own choices plain, its optimiser
# as --gate-lr / --gate-epochs / ...; keep, schedule and lr scaling are shared with the head.
GATE_PLAIN = ("gate", "gate_fit", "folds", "vlm_input", "solver", "keep", "schedule", "lr_scaling", "seed")
TRAIN_DISTILL = (Group("distill_options", DistillConfig),)
TRAIN_GATE = (Group("gate_options", GateConfig),
              Group("distill_options", DistillConfig, prefix="distill-", plain=DISTILL_PLAIN,
                    help_prefix="distill head: "))


def load_data(cache: Path, *, need: tuple[str, ...], visual: str | None = None, teacher: str | None = None,
              vlm: str | None = None, vlm_input: str = "onehot") -> Any:
    """Open the cache, read and check the needed sources, close it."""
    from vea_bench.cache.store import FeatureCache
    from vea_bench.heads.data import load_head_data

    with FeatureCache.open(cache) as c:
        return load_head_data(c, visual=visual, teacher=teacher, vlm=vlm, need=need, vlm_input=vlm_input)


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
                else f"depth={cfg['depth']} alpha={cfg['alpha']:g}"
                + (f" head={cfg['head']}" if cfg.get("head", "distill") != "distill" else ""))
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
@config_options(*TRAIN_DISTILL)
def distill_cmd(
    cache: CacheOpt,
    distill_options: dict[str, Any],
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
    tracker: TrackerOpt = None,
) -> None:
    """Train the distill head (stage 2) on the cached visual embeddings against the teacher's logits."""

    def go() -> None:
        from vea_bench.heads.config import make_config
        from vea_bench.heads.sweep import SweepPlan, run_plan
        from vea_bench.results import ResultsStore
        from vea_bench_cli.common import RichProgress

        setup_logging(quiet)
        cfg = make_config("distill", distill_options)
        data = load_data(cache, need=("visual", "teacher"), visual=visual, teacher=teacher)
        recs = run_plan(SweepPlan("distill", [cfg], []), data, results_dir=results, device=device,
                        progress=RichProgress("step", quiet=quiet), group=None)
        log_records(tracker, recs)
        if quiet:
            echo_path(ResultsStore(results).record_path(recs[0]), True)
        else:
            show_records(recs, f"distill head on {data.dataset}")
            console.print(f"record: {ResultsStore(results).record_path(recs[0])}")

    run_guarded(go)


@app.command("gate")
@config_options(*TRAIN_GATE)
def gate_cmd(
    cache: CacheOpt,
    gate_options: dict[str, Any],
    distill_options: dict[str, Any],
    vlm: VlmOpt = None,
    distill: Annotated[Optional[str], typer.Option(
        "--distill", help="reuse a saved distill head (run id or its artifacts folder); else train one.")] = None,
    visual: VisualOpt = None,
    teacher: TeacherOpt = None,
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results"),
    quiet: QuietOpt = False,
    tracker: TrackerOpt = None,
) -> None:
    """Train a gate (stage 3) over the distill head's logits and the VLM's answer: EmoVLM-KD."""

    def go() -> None:
        from vea_bench.heads.config import make_config
        from vea_bench.heads.pipeline import load_distill_run
        from vea_bench.heads.sweep import SweepPlan, run_plan
        from vea_bench.results import ResultsStore
        from vea_bench_cli.common import RichProgress

        setup_logging(quiet)
        gcfg = make_config("gate", gate_options)
        dcfg = make_config("distill", distill_options)
        data = load_data(cache, need=("visual", "teacher", "vlm"), visual=visual, teacher=teacher, vlm=vlm,
                         vlm_input=gcfg.vlm_input)
        reused = None
        if distill is not None:
            reused = [load_distill_run(distill, results, data)]
            dcfg = reused[0].config
        plan = SweepPlan("gate", [dcfg], [(gcfg, 0)])
        recs = run_plan(plan, data, results_dir=results, device=device, progress=RichProgress("step", quiet=quiet),
                        distill_results=reused, distill_run=reused[0].extra.get("run_id") if reused else None)
        log_records(tracker, recs)
        paths = [ResultsStore(results).record_path(r) for r in recs]
        if quiet:
            echo_path(paths[-1], True)
        else:
            show_records(recs, f"EmoVLM-KD on {data.dataset} (gate fitted on {gcfg.gate_fit})")
            for p in paths:
                console.print(f"record: {p}")

    run_guarded(go)
