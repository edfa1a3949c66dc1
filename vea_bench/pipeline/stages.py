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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError
from vea_bench.hashing import config_hash
from vea_bench.pipeline.experiment import Experiment
from vea_bench.pipeline.ledger import Ledger, Stage, StageContext, StageResult, run_stages
from vea_bench.progress import Progress

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


def build_stages(exp: Experiment) -> list[Stage]:
    """The experiment's stages in dependency order."""
    work = exp.workdir
    artifacts = work / "artifacts"
    device = exp.experiment.device
    seed = exp.experiment.seed
    data_cfg = _dataset_config(exp)
    stages: list[Stage] = []

    # Stage 0: the teacher (fine-tuned) or an existing checkpoint.
    teacher_dep: list[str] = []
    if exp.teacher is not None and exp.teacher.arch:
        t = exp.teacher
        t_cfg = {"dataset": data_cfg, **asdict(t), "seed": seed}

        def run_teacher(ctx: StageContext) -> dict[str, Any]:
            from vea_bench.train.teacher import TeacherConfig, train_teacher

            cfg = TeacherConfig(
                arch=t.arch, epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay, batch_size=t.batch_size,
                img_size=t.img_size or None, seed=seed, weights=str(exp.resolve(t.weights)) if t.weights else None,
                random_init=t.random_init, timm_kwargs=dict(t.timm_kwargs),
            )
            # One folder per config: an edited [teacher] trains afresh beside the old run, never into it.
            out_dir = artifacts / f"teacher-{config_hash(t_cfg)[:12]}"
            res = train_teacher(_load_index(exp), cfg, out_dir, device=device, workers=t.workers,
                                results_dir=work, progress=ctx.progress)
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
        q_cfg = {"dataset": data_cfg, "vlm": exp.vlm.model, "revision": exp.vlm.revision, **asdict(q), "seed": seed,
                 "instructions_file": str(exp.resolve(q.instructions)), "image_position": exp.vlm.image_position}

        def run_qlora(ctx: StageContext) -> dict[str, Any]:
            from vea_bench.train.qlora import QLoRAConfig, train_vlm

            cfg = QLoRAConfig(vlm=exp.vlm.model, quantize=q.quantize, epochs=q.epochs, lr=q.lr,
                              max_steps=q.max_steps or None, seed=seed, kinds=tuple(q.kinds),
                              gradient_checkpointing=q.gradient_checkpointing, loss_on=q.loss_on,
                              image_position=exp.vlm.image_position)
            # The tuned VLM's accuracy comes from the extract stage's cache (baseline "vlm"), so the
            # trainer's own greedy evaluation pass would only repeat that work.
            out_dir = artifacts / f"qlora-{config_hash(q_cfg)[:12]}"
            res = train_vlm(_load_index(exp), cfg, exp.resolve(q.instructions), out_dir,
                            device=device, eval_split=None, results_dir=work, progress=ctx.progress)
            out = _records(work, [res.record])
            out["adapter"] = str(res.adapter_dir)
            out["paths"].append(str(res.adapter_dir))
            return out

        stages.append(Stage("qlora", q_cfg, run_qlora))
        qlora_dep = ["qlora"]

    # Extraction: one pass per image into the cache.
    x = exp.extract
    v = exp.vlm
    # Batch size and workers change speed, not rows: they stay out of the stage's identity.
    x_cfg = {"dataset": data_cfg, "cache": str(exp.cache_path), "vlm": asdict(v),
             **{k: val for k, val in asdict(x).items() if k not in ("batch_size", "workers")}}

    def run_extract(ctx: StageContext) -> dict[str, Any]:
        from vea_bench.extract import extract, teacher_key, vlm_key
        from vea_bench.models.base import GenerationOptions, LoadOptions

        adapter = ctx.outputs["qlora"]["adapter"] if qlora_dep else (str(exp.resolve(v.adapter)) if v.adapter else None)
        teachers = [ctx.outputs["teacher"]["checkpoint"]] if teacher_dep else []
        opts = LoadOptions(model=v.model if not Path(v.model).exists() else str(Path(v.model).resolve()),
                           revision=v.revision or None, adapter=adapter, dtype=v.dtype,
                           quantization=v.quantization or None, device=device,
                           trust_remote_code=v.trust_remote_code, max_pixels=x.max_pixels or None,
                           image_position=v.image_position, instructblip_prompt=v.instructblip_prompt)
        gen = GenerationOptions(decoding="sample" if x.sample else "greedy", max_new_tokens=x.max_new_tokens,
                                seed=seed)
        summary = extract(_load_index(exp), exp.cache_path, vlm=opts, answer_modes=x.answer, generation=gen,
                          teachers=teachers, backbones=list(x.backbones), limit=x.limit or None,
                          batch_size=x.batch_size, num_workers=x.workers, device=device,
                          overwrite=ctx.rerun, progress=ctx.progress)
        if not summary.complete:
            raise ConfigError(
                f"extraction left rows missing in {exp.cache_path} ({', '.join(s.name for s in summary.sources if s.missing)}); "
                f"rerun to resume"
            )
        keys = {"vlm": vlm_key(v.model, adapter), "teacher": teacher_key(teachers[0]) if teachers else None}
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

    def distill_base() -> Any:
        from vea_bench.heads.pipeline import DistillConfig, apply_schedule

        cfg = DistillConfig(depth=d.depth, alpha=d.alpha, tau=d.tau, schedule=d.schedule)
        if d.epochs:
            cfg.epochs = d.epochs
        if d.lr:
            cfg.lr = d.lr
        if d.batch_size:
            cfg.batch_size = d.batch_size
        return apply_schedule(cfg, "distill")

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

            return plan_sweep(kind, distill_base(), GateConfig(), seeds=seeds, **grid)

        return plan

    distill_cfg = {"distill": asdict(d)}
    stages.append(Stage("distill", distill_cfg,
                        run_plan_stage(distill_grid("alpha", d.seeds, alphas=[d.alpha]), ("visual", "teacher")),
                        deps=["extract"]))

    # One stage per gate, each over the distill heads of the "distill" stage (one per seed).
    for name in g.names:
        def gate_plan(name: str = name) -> Any:
            from vea_bench.heads.pipeline import GateConfig, apply_schedule
            from vea_bench.heads.sweep import SweepPlan

            # One gate per distill head (per seed), seeded like its head; heads come from the distill stage.
            gates = []
            for i, s in enumerate(d.seeds):
                gc = GateConfig(gate=name, gate_fit=g.fit, vlm_input=g.vlm_input, seed=s)
                if g.epochs:
                    gc.epochs = g.epochs
                if g.lr:
                    gc.lr = g.lr
                gates.append((apply_schedule(gc, "gate"), i))
            return SweepPlan("gate", [], gates)

        g_cfg = {"gate": name, "fit": g.fit, "vlm_input": g.vlm_input, "epochs": g.epochs, "lr": g.lr}
        stages.append(Stage(f"gate:{name}", g_cfg,
                            run_plan_stage(gate_plan, ("visual", "teacher", "vlm"), g.vlm_input,
                                           distill_from="distill"),
                            deps=["extract", "distill"]))

    sw = exp.sweep
    if sw.alpha:
        stages.append(Stage("sweep:alpha", {"alphas": sw.alpha, "seeds": sw.seeds, "distill": asdict(d)},
                            run_plan_stage(distill_grid("alpha", sw.seeds, alphas=sw.alpha), ("visual", "teacher")),
                            deps=["extract"]))
    if sw.depth:
        stages.append(Stage("sweep:depth", {"depths": sw.depth, "seeds": sw.seeds, "distill": asdict(d)},
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

    stages.append(Stage("report", {**asdict(r)}, run_report, deps=upstream))
    return stages


def run_experiment(
    exp: Experiment,
    *,
    progress: Progress | None = None,
    force: list[str] | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
) -> list[StageResult]:
    """Run (or skip) every stage of ``exp``; returns what each stage did."""
    work = exp.workdir
    work.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.load(work / "artifacts" / "stages.json")
    stages = build_stages(exp)
    names = {s.name for s in stages}
    unknown = sorted(set(force or []) - names)
    if unknown:
        raise ConfigError(f"--force: unknown stage(s) {unknown} (stages: {', '.join(s.name for s in stages)})")
    threads = exp.experiment.threads
    if threads < 0:
        raise ConfigError(f"[experiment].threads must be 0 (torch's default) or positive, got {threads}")
    if not threads:
        return run_stages(stages, ledger, workdir=work, progress=progress, force=force or [], on_stage=on_stage)
    import torch

    # Tiny models on a shared CPU: one thread avoids OpenMP oversubscription, which otherwise
    # costs tens of times the compute when other processes hold the cores.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run_stages(stages, ledger, workdir=work, progress=progress, force=force or [], on_stage=on_stage)
    finally:
        torch.set_num_threads(before)
