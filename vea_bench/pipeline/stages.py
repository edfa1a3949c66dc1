"""The whole study as stages: teacher -> QLoRA -> extract -> distill -> gates -> sweeps -> baselines -> report.

Each stage is a thin call into the library function the matching CLI command uses, with a config
that decides its outputs. The stage builders sit in `STAGES` in pipeline order: each reads the
experiment and returns its stages; each stage runs one small module-level function. `run_experiment` skips every stage whose config (and upstream configs)
are unchanged and whose outputs exist, so re-running after adding a gate trains only that gate.

Work-folder layout (``[experiment].workdir``): run records in ``<kind>/`` (what `vea-bench table`
reads), models under ``artifacts/`` (teacher, adapter, heads), the stage ledger in
``artifacts/stages.json``, tables in ``tables/`` and figures in ``plots/``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError
from vea_bench.hashing import config_hash
from vea_bench.models.engines import DEFAULT_ENGINE, ENGINES
from vea_bench.pipeline.experiment import Experiment, distill_config, gate_config
from vea_bench.pipeline.ledger import Ledger, Stage, StageContext, StageResult, run_stages
from vea_bench.progress import Progress
from vea_bench.registry import Registry
from vea_bench.schema import canonical
from vea_bench.tracking.base import Tracker, ensure_tracker

log = logging.getLogger(__name__)


def _dataset_config(exp: Experiment) -> dict[str, Any]:
    ds = exp.dataset
    return {"name": ds.name, "root": str(exp.resolve(ds.root)), "split_seed": ds.split_seed, "options": ds.options}


def _load_index(exp: Experiment) -> Any:
    from vea_bench.datasets import load_dataset

    ds = exp.dataset
    return load_dataset(ds.name, exp.resolve(ds.root), seed=ds.split_seed, **ds.options)


def _records(workdir: Path, recs: list[Any]) -> dict[str, Any]:
    """Stage outputs for records: their ids, and their files (which must still exist to skip)."""
    ids = [r.run_id for r in recs]
    from vea_bench.results import ResultsStore

    paths = [str(ResultsStore(workdir).record_path(r)) for r in recs]
    return {"run_ids": ids, "paths": paths}


def _identity(obj: Any, *drop: str) -> dict[str, Any]:
    """The canonical dict of a typed config, less the fields that do not decide a stage's outputs."""
    d = canonical(obj)
    return {k: v for k, v in d.items() if k not in drop}


@dataclass
class Plan:
    """What every stage builder reads: the experiment and the stages planned before it."""

    exp: Experiment
    stages: list[Stage] = field(default_factory=list)
    track: Tracker = field(default_factory=lambda: ensure_tracker(None))  # told when the heavy stages start

    @property
    def work(self) -> Path:
        return self.exp.workdir

    @property
    def device(self) -> str:
        return self.exp.experiment.device

    def has(self, name: str) -> bool:
        """Whether a stage called ``name`` is planned (a later stage then depends on it)."""
        return any(s.name == name for s in self.stages)


StageBuilder = Callable[[Plan], list[Stage]]

# Stage builders in pipeline order: each reads the experiment and returns its stages (none when its
# section is off). Adding a stage is one builder plus the small function its stages run.
STAGES: Registry[StageBuilder] = Registry("pipeline stage")


def build_stages(exp: Experiment, tracker: Tracker | None = None) -> list[Stage]:
    """The experiment's stages in dependency order; each stage's identity hashes its typed config."""
    plan = Plan(exp, track=ensure_tracker(tracker))
    for _name, builder in STAGES.items():
        plan.stages.extend(builder(plan))
    return plan.stages


# ----------------------------------------------------------------------------- stage 0: the teacher

@STAGES.register("teacher")
def teacher_stages(plan: Plan) -> list[Stage]:
    """The teacher fine-tuned from ``[teacher]``, or an existing checkpoint."""
    exp = plan.exp
    t = exp.teacher
    if t is not None and t.settings.get("arch"):
        weights = t.settings.get("weights")
        t_obj = t.settings.build(seed=exp.experiment.seed, weights=str(exp.resolve(weights)) if weights else None)
        t_cfg = {"dataset": _dataset_config(exp), "teacher": _identity(t_obj)}
        return [Stage("teacher", t_cfg, partial(_run_teacher, exp, t_obj, t_cfg, plan.track))]
    if t is not None and t.checkpoint:
        ckpt = str(exp.resolve(t.checkpoint))
        return [Stage("teacher", {"checkpoint": ckpt}, partial(_existing, {"checkpoint": ckpt, "paths": [ckpt]}))]
    return []


def _run_teacher(exp: Experiment, t_obj: Any, t_cfg: dict[str, Any], track: Tracker, ctx: StageContext) -> dict[str, Any]:
    from vea_bench.train.teacher import train_teacher

    assert exp.teacher is not None
    # One folder per config: an edited [teacher] trains afresh beside the old run, never into it.
    out_dir = exp.workdir / "artifacts" / f"teacher-{config_hash(t_cfg)[:12]}"
    track.start(f"teacher-{exp.dataset.name}", _identity(t_obj), group=exp.experiment.name)
    res = train_teacher(_load_index(exp), t_obj, out_dir, device=exp.experiment.device, workers=exp.teacher.workers,
                        results_dir=exp.workdir, progress=ctx.progress, tracker=track)
    out = _records(exp.workdir, [res.record])
    out["checkpoint"] = str(res.out)
    out["paths"].append(str(res.out / "best.safetensors"))
    return out


def _existing(outputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """A stage whose output already exists (a given checkpoint): it only names it."""
    return dict(outputs)


# ----------------------------------------------------------------------------- stage 1: QLoRA

@STAGES.register("qlora")
def qlora_stages(plan: Plan) -> list[Stage]:
    """QLoRA instruction tuning from ``[qlora]`` (an existing adapter is ``[vlm].adapter`` instead)."""
    exp = plan.exp
    q = exp.qlora
    if q is None:
        return []
    vlm = exp.vlm.settings
    q_obj = q.settings.build(vlm=vlm.get("model"), seed=exp.experiment.seed, image_position=vlm.value("image_position"))
    q_cfg = {"dataset": _dataset_config(exp), **_identity(q_obj), "revision": vlm.get("revision"),
             "instructions_file": str(exp.resolve(q.instructions))}
    return [Stage("qlora", q_cfg, partial(_run_qlora, exp, q_obj, q_cfg, plan.track))]


def _run_qlora(exp: Experiment, q_obj: Any, q_cfg: dict[str, Any], track: Tracker, ctx: StageContext) -> dict[str, Any]:
    from vea_bench.train.qlora import train_vlm

    assert exp.qlora is not None
    # The tuned VLM's accuracy comes from the extract stage's cache (baseline "vlm"), so the
    # trainer's own greedy evaluation pass would only repeat that work.
    out_dir = exp.workdir / "artifacts" / f"qlora-{config_hash(q_cfg)[:12]}"
    track.start(f"qlora-{exp.dataset.name}", _identity(q_obj), group=exp.experiment.name)
    res = train_vlm(_load_index(exp), q_obj, exp.resolve(exp.qlora.instructions), out_dir,
                    device=exp.experiment.device, eval_split=None, results_dir=exp.workdir, progress=ctx.progress,
                    tracker=track)
    out = _records(exp.workdir, [res.record])
    out["adapter"] = str(res.adapter_dir)
    out["paths"].append(str(res.adapter_dir))
    return out


# ----------------------------------------------------------------------------- extraction

@STAGES.register("extract")
def extract_stages(plan: Plan) -> list[Stage]:
    """One pass per image into the cache, after the teacher and the adapter it uses."""
    exp = plan.exp
    x = exp.extract
    vlm = exp.vlm.settings
    model = vlm.get("model")
    model = str(Path(model).resolve()) if Path(model).exists() else model
    own_adapter = vlm.get("adapter")
    load = vlm.build(model=model, adapter=str(exp.resolve(own_adapter)) if own_adapter else None, device=plan.device)
    gen = x.settings.build(seed=exp.experiment.seed)
    # Batch size, workers and the device change speed, not rows: they stay out of the stage's identity.
    x_cfg = {"dataset": _dataset_config(exp), "cache": str(exp.cache_path), "vlm": _identity(load, "device"),
             "generation": _identity(gen), "answer": x.answer, "backbones": x.backbones, "limit": x.limit}
    if ENGINES.get(x.engine).name != DEFAULT_ENGINE:   # the default engine keeps the identities made before engines
        x_cfg["engine"] = ENGINES.get(x.engine).name
    deps = [n for n in ("teacher", "qlora") if plan.has(n)]
    return [Stage("extract", x_cfg, partial(_run_extract, exp, load, gen), deps=deps)]


def _run_extract(exp: Experiment, load: Any, gen: Any, ctx: StageContext) -> dict[str, Any]:
    from vea_bench.extract import extract, teacher_key, vlm_key

    x = exp.extract
    adapter = ctx.outputs["qlora"]["adapter"] if "qlora" in ctx.outputs else load.adapter
    teachers = [ctx.outputs["teacher"]["checkpoint"]] if "teacher" in ctx.outputs else []
    opts = replace(load, adapter=adapter)
    summary = extract(_load_index(exp), exp.cache_path, vlm=opts, answer_modes=x.answer, generation=gen,
                      teachers=teachers, backbones=list(x.backbones), limit=x.limit,
                      batch_size=x.batch_size, num_workers=x.workers, device=exp.experiment.device,
                      overwrite=ctx.rerun, progress=ctx.progress, engine=x.engine)
    if not summary.complete:
        raise ConfigError(
            f"extraction left rows missing in {exp.cache_path} ({', '.join(s.name for s in summary.sources if s.missing)}); "
            f"rerun to resume"
        )
    keys = {"vlm": vlm_key(exp.vlm.settings.get("model"), adapter),
            "teacher": teacher_key(teachers[0]) if teachers else None}
    return {"cache": str(exp.cache_path), "keys": keys, "paths": [str(exp.cache_path)],
            "images_per_s": round(summary.images_per_s, 2), "failed_images": summary.failed_images}


# ----------------------------------------------------------------------------- stages 2 and 3, sweeps: the cache only

def _head_data(ctx: StageContext, need: tuple[str, ...], vlm_input: str = "onehot") -> Any:
    from vea_bench.cache import FeatureCache
    from vea_bench.heads.data import load_head_data

    keys = ctx.outputs["extract"]["keys"]
    with FeatureCache.open(ctx.outputs["extract"]["cache"]) as cache:
        return load_head_data(cache, visual=keys["vlm"], teacher=keys["teacher"], vlm=keys["vlm"],
                              need=need, vlm_input=vlm_input)


def _run_plan(exp: Experiment, make_plan: Callable[[], Any], need: tuple[str, ...], vlm_input: str,
              distill_from: str | None, ctx: StageContext) -> dict[str, Any]:
    """Train the heads of a sweep plan on the cache's features (gates over the distill stage's heads)."""
    from vea_bench.heads.pipeline import load_distill_run
    from vea_bench.heads.sweep import run_plan

    work = exp.workdir
    data = _head_data(ctx, need, vlm_input)
    kwargs: dict[str, Any] = {}
    if distill_from is not None:
        run_ids = ctx.outputs[distill_from]["run_ids"]
        kwargs["distill_results"] = [load_distill_run(r, work, data) for r in run_ids]
        kwargs["distill_run"] = run_ids[0] if len(run_ids) == 1 else None
    recs = run_plan(make_plan(), data, results_dir=work, device=exp.experiment.device, progress=ctx.progress, **kwargs)
    return _records(work, recs)


def _distill_plan(exp: Experiment, kind: str, seeds: list[int], grid: dict[str, Any]) -> Any:
    """A plan of distill heads over ``grid`` (alphas or depths) x seeds around the [distill] settings."""
    from vea_bench.heads.pipeline import GateConfig
    from vea_bench.heads.sweep import plan_sweep

    return plan_sweep(kind, distill_config(exp, seeds[0]), GateConfig(), seeds=seeds, **grid)


def _gate_plan(exp: Experiment, name: str) -> Any:
    """One gate per distill head (per seed), seeded like its head; heads come from the distill stage."""
    from vea_bench.heads.sweep import SweepPlan

    gates = [(gate_config(exp, name, s), i) for i, s in enumerate(exp.distill.seeds)]
    return SweepPlan("gate", [], gates)


def _distill_stage(exp: Experiment, name: str, config: dict[str, Any], seeds: list[int], grid: dict[str, Any]) -> Stage:
    run = partial(_run_plan, exp, partial(_distill_plan, exp, "depth" if "depths" in grid else "alpha", seeds, grid),
                  ("visual", "teacher"), "onehot", None)
    return Stage(name, config, run, deps=["extract"])


def _base_distill(exp: Experiment) -> dict[str, Any]:
    return _identity(distill_config(exp, exp.distill.seeds[0]), "seed")


@STAGES.register("distill")
def distill_stages(plan: Plan) -> list[Stage]:
    """Stage 2: one distill head per ``[distill].seeds``."""
    d = plan.exp.distill
    base = _base_distill(plan.exp)
    return [_distill_stage(plan.exp, "distill", {"distill": base, "seeds": d.seeds}, d.seeds,
                           {"alphas": [base["alpha"]]})]


@STAGES.register("gates")
def gate_stages(plan: Plan) -> list[Stage]:
    """Stage 3: one stage per gate, each over the distill heads of the "distill" stage (one per seed)."""
    exp = plan.exp
    out = []
    for name in exp.gate.names:
        g_obj = gate_config(exp, name, exp.distill.seeds[0])
        run = partial(_run_plan, exp, partial(_gate_plan, exp, name), ("visual", "teacher", "vlm"), g_obj.vlm_input,
                      "distill")
        out.append(Stage(f"gate:{name}", {"gate": _identity(g_obj, "seed")}, run, deps=["extract", "distill"]))
    return out


@STAGES.register("sweeps")
def sweep_stages(plan: Plan) -> list[Stage]:
    """The alpha and depth sweeps of ``[sweep]`` (Figures 3 and 4)."""
    exp = plan.exp
    sw = exp.sweep
    base = _base_distill(exp)
    out = []
    if sw.alpha:
        out.append(_distill_stage(exp, "sweep:alpha", {"alphas": sw.alpha, "seeds": sw.seeds, "distill": base},
                                  sw.seeds, {"alphas": sw.alpha}))
    if sw.depth:
        out.append(_distill_stage(exp, "sweep:depth", {"depths": sw.depth, "seeds": sw.seeds, "distill": base},
                                  sw.seeds, {"depths": sw.depth}))
    return out


@STAGES.register("baselines")
def baseline_stages(plan: Plan) -> list[Stage]:
    """Table 1's baselines on the cache, beside the first distill head."""
    if not plan.exp.baselines.enabled:
        return []
    return [Stage("baselines", {"enabled": True}, partial(_run_baselines, plan.exp), deps=["extract", "distill"])]


def _run_baselines(exp: Experiment, ctx: StageContext) -> dict[str, Any]:
    from vea_bench.cache import FeatureCache
    from vea_bench.heads.baselines import run_baselines
    from vea_bench.heads.pipeline import load_distill_run
    from vea_bench.results import ResultsStore

    work = exp.workdir
    keys = ctx.outputs["extract"]["keys"]
    data = _head_data(ctx, ("visual", "teacher"))
    distill = load_distill_run(ctx.outputs["distill"]["run_ids"][0], work, data)
    with FeatureCache.open(ctx.outputs["extract"]["cache"]) as cache:
        outs, skipped = run_baselines(cache, visual=keys["vlm"], teacher=keys["teacher"], vlm=keys["vlm"],
                                      distill=distill, distill_data=data, device=exp.experiment.device,
                                      progress=ctx.progress)
    for why in skipped:
        log.info("baseline skipped: %s", why)
    ResultsStore(work).save_all(outs)
    return _records(work, [o.record for o in outs])


# ----------------------------------------------------------------------------- the report

@STAGES.register("report")
def report_stages(plan: Plan) -> list[Stage]:
    """Tables, figures and the HTML page; it depends on every stage, so it re-renders whenever
    anything upstream changed."""
    return [Stage("report", canonical(plan.exp.report), partial(_run_report, plan.exp),
                  deps=[s.name for s in plan.stages])]


def _run_report(exp: Experiment, ctx: StageContext) -> dict[str, Any]:
    from vea_bench.report.plots import render_plots
    from vea_bench.report.formats import table_format
    from vea_bench.report.tables import build_tables, load_results

    r = exp.report
    work = exp.workdir
    res = load_results(work)
    out_dir = work / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for name in r.formats:
        fmt = table_format(name, where="[report].formats")
        tables = build_tables(res, "all", dataset=exp.dataset.name)
        path = out_dir / f"tables.{fmt.suffix}"
        path.write_text(fmt.render(tables, compare=r.compare_paper))
        written.append(str(path))
    plots: list[Path] = []
    if r.plots:
        plots, _why = render_plots(res, work / "plots", datasets=[exp.dataset.name], formats=["png", "pdf"])
        written.extend(str(p) for p in plots)
    if r.html:
        from vea_bench.report.html import build_report

        page = build_report(res, work / "report", dataset=exp.dataset.name, seed=exp.experiment.seed,
                            compare_paper=r.compare_paper, figures=plots)
        for why in page.missing:
            log.info("report: %s", why)
        written.append(str(page.index))
    return {"paths": written}


def run_experiment(
    exp: Experiment,
    *,
    progress: Progress | None = None,
    force: list[str] | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
    tracker: Tracker | None = None,
) -> list[StageResult]:
    """Run (or skip) every stage of ``exp``; returns what each stage did (and tells ``tracker``)."""
    from vea_bench.distributed import launch_env

    if launch_env().distributed:  # every rank would train the same heads into the same files
        raise ConfigError("vea-bench run runs as one process; launch `vea-bench extract`, `train teacher` or "
                          "`train vlm` under torchrun, accelerate or srun for data-parallel stages")
    track = ensure_tracker(tracker)

    def tracked(res: StageResult) -> None:
        track.stage(res.name, res.status, res.outputs)
        if on_stage is not None:
            on_stage(res)

    work = exp.workdir
    work.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.load(work / "artifacts" / "stages.json")
    stages = build_stages(exp, tracker)
    names = {s.name for s in stages}
    unknown = sorted(set(force or []) - names)
    if unknown:
        raise ConfigError(f"--force: unknown stage(s) {unknown} (stages: {', '.join(s.name for s in stages)})")
    threads = exp.experiment.threads
    if threads is not None and threads < 1:
        raise ConfigError(f"[experiment].threads must be positive (leave it out for torch's default), got {threads}")
    if threads is None:
        return run_stages(stages, ledger, workdir=work, progress=progress, force=force or [], on_stage=tracked)
    import torch

    # Tiny models on a shared CPU: one thread avoids OpenMP oversubscription, which otherwise
    # costs tens of times the compute when other processes hold the cores.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run_stages(stages, ledger, workdir=work, progress=progress, force=force or [], on_stage=tracked)
    finally:
        torch.set_num_threads(before)
