"""The whole study as stages: teacher -> QLoRA -> extract -> distill -> gates -> sweeps -> baselines -> report.

Each stage is a thin call into the library function the matching CLI command uses, with a config
that decides its outputs. `run_experiment` skips every stage whose config (and upstream configs)
are unchanged and whose outputs exist, so re-running after adding a gate trains only that gate.

Work-folder layout (``[experiment].workdir``): run records in ``<kind>/`` (what `vea-bench table`
reads), models under ``artifacts/`` (teacher, adapter, heads), the stage ledger in
``artifacts/stages.json``, tables in ``tables/`` and figures in ``plots/``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError
from vea_bench.hashing import config_hash
from vea_bench.pipeline.experiment import Experiment, distill_config, gate_config
from vea_bench.pipeline.ledger import Ledger, Stage, StageContext, StageResult, run_stages
from vea_bench.progress import Progress
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
    paths = [str(workdir / r.kind / f"{r.run_id}.json") for r in recs]
    return {"run_ids": ids, "paths": paths}


def _identity(obj: Any, *drop: str) -> dict[str, Any]:
    """The canonical dict of a typed config, less the fields that do not decide a stage's outputs."""
    d = canonical(obj)
    return {k: v for k, v in d.items() if k not in drop}


def build_stages(exp: Experiment, tracker: Tracker | None = None) -> list[Stage]:
    """The experiment's stages in dependency order; each stage's identity hashes its typed config."""
    work = exp.workdir
    artifacts = work / "artifacts"
    device = exp.experiment.device
    seed = exp.experiment.seed
    track = ensure_tracker(tracker)
    data_cfg = _dataset_config(exp)
    stages: list[Stage] = []
    vlm = exp.vlm.settings

    # Stage 0: the teacher (fine-tuned) or an existing checkpoint.
    teacher_dep: list[str] = []
    if exp.teacher is not None and exp.teacher.settings.get("arch"):
        t = exp.teacher
        weights = t.settings.get("weights")
        t_obj = t.settings.build(seed=seed, weights=str(exp.resolve(weights)) if weights else None)
        t_cfg = {"dataset": data_cfg, "teacher": _identity(t_obj)}

        def run_teacher(ctx: StageContext) -> dict[str, Any]:
            from vea_bench.train.teacher import train_teacher

            # One folder per config: an edited [teacher] trains afresh beside the old run, never into it.
            out_dir = artifacts / f"teacher-{config_hash(t_cfg)[:12]}"
            track.start(f"teacher-{exp.dataset.name}", _identity(t_obj), group=exp.experiment.name)
            res = train_teacher(_load_index(exp), t_obj, out_dir, device=device, workers=t.workers,
                                results_dir=work, progress=ctx.progress, tracker=track)
            out = _records(work, [res.record])
            out["checkpoint"] = str(res.out)
            out["paths"].append(str(res.out / "best.safetensors"))
            return out

        stages.append(Stage("teacher", t_cfg, run_teacher))
        teacher_dep = ["teacher"]
    elif exp.teacher is not None and exp.teacher.checkpoint:
        ckpt = str(exp.resolve(exp.teacher.checkpoint))
        stages.append(Stage("teacher", {"checkpoint": ckpt}, lambda ctx: {"checkpoint": ckpt, "paths": [ckpt]}))
        teacher_dep = ["teacher"]

    # Stage 1: QLoRA instruction tuning, or an existing adapter.
    qlora_dep: list[str] = []
    if exp.qlora is not None:
        q = exp.qlora
        q_obj = q.settings.build(vlm=vlm.get("model"), seed=seed, image_position=vlm.value("image_position"))
        q_cfg = {"dataset": data_cfg, **_identity(q_obj), "revision": vlm.get("revision"),
                 "instructions_file": str(exp.resolve(q.instructions))}

        def run_qlora(ctx: StageContext) -> dict[str, Any]:
            from vea_bench.train.qlora import train_vlm

            # The tuned VLM's accuracy comes from the extract stage's cache (baseline "vlm"), so the
            # trainer's own greedy evaluation pass would only repeat that work.
            out_dir = artifacts / f"qlora-{config_hash(q_cfg)[:12]}"
            track.start(f"qlora-{exp.dataset.name}", _identity(q_obj), group=exp.experiment.name)
            res = train_vlm(_load_index(exp), q_obj, exp.resolve(q.instructions), out_dir,
                            device=device, eval_split=None, results_dir=work, progress=ctx.progress, tracker=track)
            out = _records(work, [res.record])
            out["adapter"] = str(res.adapter_dir)
            out["paths"].append(str(res.adapter_dir))
            return out

        stages.append(Stage("qlora", q_cfg, run_qlora))
        qlora_dep = ["qlora"]

    # Extraction: one pass per image into the cache.
    x = exp.extract
    model = vlm.get("model")
    model = str(Path(model).resolve()) if Path(model).exists() else model
    own_adapter = vlm.get("adapter")
    load = vlm.build(model=model, adapter=str(exp.resolve(own_adapter)) if own_adapter else None, device=device)
    gen = x.settings.build(seed=seed)
    # Batch size, workers and the device change speed, not rows: they stay out of the stage's identity.
    x_cfg = {"dataset": data_cfg, "cache": str(exp.cache_path), "vlm": _identity(load, "device"),
             "generation": _identity(gen), "answer": x.answer, "backbones": x.backbones, "limit": x.limit}

    def run_extract(ctx: StageContext) -> dict[str, Any]:
        from dataclasses import replace

        from vea_bench.extract import extract, teacher_key, vlm_key

        adapter = ctx.outputs["qlora"]["adapter"] if qlora_dep else load.adapter
        teachers = [ctx.outputs["teacher"]["checkpoint"]] if teacher_dep else []
        opts = replace(load, adapter=adapter)
        summary = extract(_load_index(exp), exp.cache_path, vlm=opts, answer_modes=x.answer, generation=gen,
                          teachers=teachers, backbones=list(x.backbones), limit=x.limit,
                          batch_size=x.batch_size, num_workers=x.workers, device=device,
                          overwrite=ctx.rerun, progress=ctx.progress)
        if not summary.complete:
            raise ConfigError(
                f"extraction left rows missing in {exp.cache_path} ({', '.join(s.name for s in summary.sources if s.missing)}); "
                f"rerun to resume"
            )
        keys = {"vlm": vlm_key(vlm.get("model"), adapter), "teacher": teacher_key(teachers[0]) if teachers else None}
        return {"cache": str(exp.cache_path), "keys": keys, "paths": [str(exp.cache_path)],
                "images_per_s": round(summary.images_per_s, 2), "failed_images": summary.failed_images}

    stages.append(Stage("extract", x_cfg, run_extract, deps=teacher_dep + qlora_dep))

    # Stages 2 and 3 and the sweeps read only the cache.
    d = exp.distill
    g = exp.gate

    def head_data(ctx: StageContext, need: tuple[str, ...], vlm_input: str = "onehot") -> Any:
        from vea_bench.cache import FeatureCache
        from vea_bench.heads.data import load_head_data

        keys = ctx.outputs["extract"]["keys"]
        with FeatureCache.open(ctx.outputs["extract"]["cache"]) as cache:
            return load_head_data(cache, visual=keys["vlm"], teacher=keys["teacher"], vlm=keys["vlm"],
                                  need=need, vlm_input=vlm_input)

    def run_plan_stage(plan_fn: Callable[[], Any], need: tuple[str, ...], vlm_input: str = "onehot",
                       distill_from: str | None = None) -> Callable[[StageContext], dict[str, Any]]:
        def run(ctx: StageContext) -> dict[str, Any]:
            from vea_bench.heads.pipeline import load_distill_run
            from vea_bench.heads.sweep import run_plan

            data = head_data(ctx, need, vlm_input)
            plan = plan_fn()
            kwargs: dict[str, Any] = {}
            if distill_from is not None:
                run_ids = ctx.outputs[distill_from]["run_ids"]
                kwargs["distill_results"] = [load_distill_run(r, work, data) for r in run_ids]
                kwargs["distill_run"] = run_ids[0] if len(run_ids) == 1 else None
            recs = run_plan(plan, data, results_dir=work, device=device, progress=ctx.progress, **kwargs)
            return _records(work, recs)

        return run

    def distill_grid(kind: str, seeds: list[int], **grid: Any) -> Callable[[], Any]:
        """A plan of distill heads over ``grid`` (alphas or depths) x seeds around the [distill] settings."""

        def plan() -> Any:
            from vea_bench.heads.pipeline import GateConfig
            from vea_bench.heads.sweep import plan_sweep

            return plan_sweep(kind, distill_config(exp, seeds[0]), GateConfig(), seeds=seeds, **grid)

        return plan

    base_distill = _identity(distill_config(exp, d.seeds[0]), "seed")
    distill_cfg = {"distill": base_distill, "seeds": d.seeds}
    stages.append(Stage("distill", distill_cfg,
                        run_plan_stage(distill_grid("alpha", d.seeds, alphas=[base_distill["alpha"]]),
                                       ("visual", "teacher")),
                        deps=["extract"]))

    # One stage per gate, each over the distill heads of the "distill" stage (one per seed).
    for name in g.names:
        def gate_plan(name: str = name) -> Any:
            from vea_bench.heads.sweep import SweepPlan

            # One gate per distill head (per seed), seeded like its head; heads come from the distill stage.
            gates = [(gate_config(exp, name, s), i) for i, s in enumerate(d.seeds)]
            return SweepPlan("gate", [], gates)

        g_obj = gate_config(exp, name, d.seeds[0])
        stages.append(Stage(f"gate:{name}", {"gate": _identity(g_obj, "seed")},
                            run_plan_stage(gate_plan, ("visual", "teacher", "vlm"), g_obj.vlm_input,
                                           distill_from="distill"),
                            deps=["extract", "distill"]))

    sw = exp.sweep
    if sw.alpha:
        stages.append(Stage("sweep:alpha", {"alphas": sw.alpha, "seeds": sw.seeds, "distill": base_distill},
                            run_plan_stage(distill_grid("alpha", sw.seeds, alphas=sw.alpha), ("visual", "teacher")),
                            deps=["extract"]))
    if sw.depth:
        stages.append(Stage("sweep:depth", {"depths": sw.depth, "seeds": sw.seeds, "distill": base_distill},
                            run_plan_stage(distill_grid("depth", sw.seeds, depths=sw.depth), ("visual", "teacher")),
                            deps=["extract"]))

    if exp.baselines.enabled:
        def run_baselines_stage(ctx: StageContext) -> dict[str, Any]:
            from vea_bench.cache import FeatureCache
            from vea_bench.heads.baselines import run_baselines
            from vea_bench.heads.pipeline import load_distill_run

            keys = ctx.outputs["extract"]["keys"]
            data = head_data(ctx, ("visual", "teacher"))
            distill = load_distill_run(ctx.outputs["distill"]["run_ids"][0], work, data)
            with FeatureCache.open(ctx.outputs["extract"]["cache"]) as cache:
                recs, skipped = run_baselines(cache, visual=keys["vlm"], teacher=keys["teacher"], vlm=keys["vlm"],
                                              distill=distill, distill_data=data, device=device,
                                              progress=ctx.progress)
            for why in skipped:
                log.info("baseline skipped: %s", why)
            for rec in recs:
                rec.save(work)
            return _records(work, recs)

        stages.append(Stage("baselines", {"enabled": True}, run_baselines_stage, deps=["extract", "distill"]))

    # The report depends on every stage, so it re-renders whenever anything upstream changed.
    r = exp.report
    upstream = [s.name for s in stages]

    def run_report(ctx: StageContext) -> dict[str, Any]:
        from vea_bench.report.plots import render_plots
        from vea_bench.report.tables import build_tables, load_results, render

        res = load_results(work)
        out_dir = work / "tables"
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        suffix = {"md": "md", "latex": "tex", "csv": "csv", "rich": "txt"}
        for fmt in r.formats:
            if fmt not in suffix:
                raise ConfigError(f"[report].formats: unknown format '{fmt}' (choices: md, latex, csv, rich)")
            tables = build_tables(res, "all", dataset=exp.dataset.name)
            path = out_dir / f"tables.{suffix[fmt]}"
            path.write_text(render(tables, fmt, compare=r.compare_paper))
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

    stages.append(Stage("report", canonical(r), run_report, deps=upstream))
    return stages


def run_experiment(
    exp: Experiment,
    *,
    progress: Progress | None = None,
    force: list[str] | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
    tracker: Tracker | None = None,
) -> list[StageResult]:
    """Run (or skip) every stage of ``exp``; returns what each stage did (and tells ``tracker``)."""
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
