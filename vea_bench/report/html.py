"""`vea-bench report --out DIR`: one static HTML page with everything a reader of the study needs.

The page (``DIR/index.html``, rendered by jinja2 from ``vea_bench/data/templates/report.html``)
works offline from the file system: no script, no server, images as files beside it under
``DIR/figures/``. It holds every table (with the paper's numbers, Δ, 95 % intervals and
significance marks), the key paired comparisons, Figures 1 and 3, Figure 4's gallery,
calibration (ECE and reliability diagrams), per-group accuracy, confusion matrices, loss curves
where records carry per-epoch losses, and, one click from every number, its runs' provenance
(run id, cache, config, environment).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError, VeaError
from vea_bench.results import RunRecord
from vea_bench.report import stats as S
from vea_bench.report.compare import Comparison, annotate_tables, compare_records
from vea_bench.report.paper import dataset_title, paper_setting
from vea_bench.results import SplitPredictions, load_for
from vea_bench.report.formats.text import delta_text as _delta_text
from vea_bench.report.formats.text import paper_text as _paper_text
from vea_bench.report.formats.text import value_text as _value_text
from vea_bench.report.selection import Results, Select, _at_paper_alpha, _created, latest_group, metric_of
from vea_bench.report.table_model import Table
from vea_bench.report.tables import build_tables, require_records

log = logging.getLogger(__name__)

TEMPLATE = "report.html"
FIG_DIR = "figures"
MAX_CALIBRATION_RUNS = 6
MAIN = "EmoVLM-KD"   # the page's name for the gate runs it is about (the paper's method, or --gate's)


@dataclass
class Report:
    """What `build_report` wrote: the page, its image files, and what was left out (with why)."""

    index: Path
    images: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- choosing runs

def main_dataset(results: Results, dataset: str | None) -> str:
    """The dataset the page's figures are about: the given one, else the one of the newest gate run."""
    have = {r.dataset for r in results.records}
    if dataset is not None:
        if dataset not in have:
            raise ConfigError(f"no run on dataset '{dataset}' under {results.root} (have: {', '.join(sorted(have))})")
        return dataset
    gates = [r for r in results.records if r.kind == "gate"]
    pool = gates or results.records
    return max(pool, key=_created).dataset


def _latest(results: Results, dataset: str, pred: Any) -> list[RunRecord]:
    return latest_group([r for r in results.records if r.dataset == dataset and pred(r)])


def key_runs(results: Results, dataset: str, gate: str | None = None) -> dict[str, list[RunRecord]]:
    """EmoVLM-KD (paper gate, or ``gate``), its distill heads, the VLM alone and the teacher alone:
    latest config group each."""
    from vea_bench.heads.gates import GATES

    paper = paper_setting()
    want = GATES.canonical(gate) if gate else paper["gate"]
    if gate and not any(r.kind == "gate" and r.dataset == dataset and r.variant == want for r in results.records):
        raise ConfigError(f"no '{want}' gate run on {dataset} under {results.root}")
    # the paper's gate input; the paper's fit too unless --gate names the gate to show
    setting = (("vlm_input", paper["vlm_input"]),) + ((("gate_fit", paper["gate_fit"]),) if gate is None else ())
    main = Select(kind="gate", variant=want, config=setting)

    gate = _latest(results, dataset, main.matches) or _latest(results, dataset, lambda r: r.kind == "gate")
    ids = {(g.config or {}).get("distill_run") for g in gate}
    distill = [r for r in results.records if r.run_id in ids and r.kind == "distill"]
    if not distill:
        distill = _latest(results, dataset, lambda r: r.kind == "distill" and _at_paper_alpha(r))
    out = {MAIN: gate, "distill head": latest_group(distill) if distill else [],
           "VLM alone": _latest(results, dataset, lambda r: r.kind == "vlm-eval"),
           "teacher alone": _latest(results, dataset, lambda r: r.kind == "baseline" and r.method == "teacher")}
    return {k: v for k, v in out.items() if v}


# ----------------------------------------------------------------------------- tables

def _table_view(t: Table, compare: bool) -> dict[str, Any]:
    head = [("Model" if t.id in ("1", "ext") else "Row", "")]
    for c in t.columns:
        head.append((c.title, ""))
        if compare and c.compare:
            head += [(f"{c.title} (paper)", "paper"), ("Δ", "delta")]
    rows = []
    last = None
    for r in t.rows:
        if r.group != last and r.group in t.groups:
            rows.append({"group": t.groups[r.group]})
        last = r.group
        cells = []
        for c in t.columns:
            cell = r.cells[c.key]
            text = _value_text(cell, "html") if not (compare and cell.reported) else "reported only"
            cls = "empty" if cell.value is None else ("best" if cell.mark == "best" else ("tie" if cell.mark == "tie" else ""))
            cells.append({"text": text, "cls": cls, "runs": list(cell.run_ids)})
            if compare and c.compare:
                cells.append({"text": _paper_text(cell, "html"), "cls": "paper", "runs": []})
                cells.append({"text": _delta_text(cell), "cls": "delta", "runs": []})
        rows.append({"label": r.label, "cells": cells, "reported": r.reported})
    return {"id": t.id, "title": t.title, "head": head, "rows": rows, "notes": list(t.notes)}


# ----------------------------------------------------------------------------- figures

def _plt() -> Any:
    from vea_bench.report.plots import _plt as p

    return p()


def _save(fig: Any, out: Path, name: str, dpi: int = 130) -> list[Path]:
    from vea_bench.report.plots import save_figure

    return save_figure(fig, out, name, ("png", "pdf"), dpi)


def reliability_figure(curves: Sequence[tuple[str, S.Calibration]]) -> Any:
    """Reliability diagram: accuracy against mean confidence per bin, one line per run, ECE in the legend."""
    plt = _plt()
    with plt.rc_context({"font.size": 8}):
        fig, ax = plt.subplots(figsize=(4.2, 3.6), layout="constrained")
        ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--", label="perfect calibration")
        for label, cal in curves:
            pts = [(c, a) for c, a in zip(cal.confidence, cal.accuracy) if c is not None and a is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, lw=1, label=f"{label} (ECE {cal.ece * 100:.1f} %)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=6.5, loc="upper left", frameon=False)
    return fig


def loss_series(rec: RunRecord) -> dict[str, list[float]]:
    """Per-epoch loss arrays a record carries (``train_loss`` in a split's extra, or keys with 'loss'
    in the record itself, such as those a convergence-aware trainer adds), by name."""
    out: dict[str, list[float]] = {}

    def take(prefix: str, d: Any) -> None:
        if not isinstance(d, dict):
            return
        for k, v in d.items():
            if isinstance(v, dict):
                take(f"{prefix}{k}.", v)
            elif "loss" in str(k) and isinstance(v, list) and len(v) >= 2 and all(isinstance(x, (int, float)) for x in v):
                ys = [float(x) for x in v]
                if ys not in out.values():  # the trainer copies its train loss into every split's extra
                    out[str(k) if str(k) not in out else f"{prefix}{k}"] = ys

    take("", {k: v for k, v in vars(rec).items() if k not in ("metrics", "config", "environment", "cache")})
    for split, m in (rec.metrics or {}).items():
        if isinstance(m, dict):
            take(f"{split}.", m.get("extra"))
            take(f"{split}.", {k: v for k, v in m.items() if k != "extra"})
    return out


def loss_figure(runs: Sequence[tuple[str, dict[str, list[float]]]]) -> Any:
    plt = _plt()
    with plt.rc_context({"font.size": 8}):
        fig, ax = plt.subplots(figsize=(4.8, 3.2), layout="constrained")
        for label, series in runs:
            for name, ys in series.items():
                ax.plot(range(1, len(ys) + 1), ys, lw=1, label=f"{label}: {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=6.5, frameon=False)
    return fig


# ----------------------------------------------------------------------------- per-group view

def group_view(reports: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """One table per grouping (class, then each attribute): a row per value, a column per run."""
    runs = [{"label": label, "run": gr.run_id} for label, gr in reports]
    grouping: dict[str, dict[str, dict[str, Any]]] = {}
    for j, (_, gr) in enumerate(reports):
        for name, items in [("class", gr.per_class)] + [(t.attribute, t.groups) for t in gr.attributes]:
            table = grouping.setdefault(name, {})
            for g in items:
                row = table.setdefault(g.value, {"value": g.value, "n": g.n, "accs": [None] * len(reports)})
                row["accs"][j] = g.accuracy * 100
    tables = [{"attribute": k, "rows": list(v.values())} for k, v in grouping.items()]
    dists = [{"label": label, "run": gr.run_id, "d": gr.distribution, "note": gr.note}
             for label, gr in reports if gr.distribution is not None]
    return {"runs": runs, "tables": tables, "distribution": dists}


# ----------------------------------------------------------------------------- the page

def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str, sort_keys=True)


def _run_view(rec: RunRecord, path: Path | None) -> dict[str, Any]:
    return {"id": rec.run_id, "kind": rec.kind, "method": rec.method, "dataset": rec.dataset, "seed": rec.seed,
            "group": rec.group, "created": rec.created_at, "path": str(path) if path else "",
            "acc": metric_of(rec, "test"), "cache_path": (rec.cache or {}).get("path", ""),
            "config": _json(rec.config), "cache": _json(rec.cache), "artifacts": _json(rec.artifacts),
            "environment": _json(rec.environment), "signature": rec.experiment_id[:12]}


def _comparison_view(c: Comparison) -> dict[str, Any]:
    """A comparison as table rows (one per seed pair; percentages and percentage points, A - B)."""
    def ci(iv: S.Interval, signed: bool = False) -> str:
        f = "{:+.2f}" if signed else "{:.2f}"
        return f"{f.format(iv.estimate * 100)} [{f.format(iv.low * 100)}, {f.format(iv.high * 100)}]"

    rows = []
    for p in c.pairs:
        pair = f"seed {p.seed}" if p.seed is not None else f"{p.run_a[-6:]} vs {p.run_b[-6:]}"
        rows.append({"pair": pair, "runs": [p.run_a, p.run_b], "n": p.n, "acc_a": ci(p.acc_a), "acc_b": ci(p.acc_b),
                     "diff": ci(p.diff, True), "f1_diff": ci(p.f1_diff, True), "p": f"{p.mcnemar.p:.4g}",
                     "only_a": p.mcnemar.b, "only_b": p.mcnemar.c, "better": p.diff.low > 0 or p.diff.high < 0})
    seeds = None
    if c.seeds is not None:
        s = c.seeds
        interval = f"[{s.low * 100:+.2f}, {s.high * 100:+.2f}]" if s.low is not None and s.high is not None else "n/a"
        seeds = {"k": s.k, "mean": f"{s.mean * 100:+.2f}", "interval": interval,
                 "p": f"{s.p:.4g}" if s.p is not None else "n/a"}
    how = f"95 % paired bootstrap ({c.method}, {c.n_resamples} resamples, seed {c.boot_seed}); McNemar exact test"
    return {"a": c.label_a, "b": c.label_b, "rows": rows, "seeds": seeds, "how": how, "notes": list(c.notes)}


def comparison_figure(comparisons: Sequence[Comparison]) -> Any:
    """Each pair's accuracy difference A - B (pp) with its 95 % interval, one row per pair, zero marked."""
    plt = _plt()
    rows = [(f"{c.label_a} vs {c.label_b}" + (f" (seed {p.seed})" if p.seed is not None else ""), p.diff)
            for c in comparisons for p in c.pairs]
    with plt.rc_context({"font.size": 8}):
        fig, ax = plt.subplots(figsize=(6.0, 0.9 + 0.28 * len(rows)), layout="constrained")
        for i, (_, d) in enumerate(rows):
            ax.errorbar(d.estimate * 100, i, xerr=[[(d.estimate - d.low) * 100], [(d.high - d.estimate) * 100]],
                        fmt="o", ms=3.5, color="#1f5fa8", capsize=2.5, lw=1)
        ax.axvline(0, color="#999999", lw=0.8, ls="--")
        ax.set_yticks(range(len(rows)), [r[0] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("accuracy difference A - B (percentage points, 95 % interval)")
    return fig


def _paper_figures(results: Results, figs: Path, figures: Sequence[Path] | None, rep: Report) -> dict[str, Any]:
    """Paper figures and confusion matrices: drawn now, or copied from the plots the pipeline drew."""
    from vea_bench.report.plots import FigureStyle, render_plots

    if figures is None:
        written, why = render_plots(results, figs, formats=["png"], style=FigureStyle(width=4.5, dpi=130, font_size=8))
        rep.missing += why
    else:
        written = []
        for src_png in (Path(f) for f in figures if Path(f).suffix == ".png"):
            shutil.copyfile(src_png, figs / src_png.name)
            written.append(figs / src_png.name)
        if not figures:
            rep.missing.append("paper figures and confusion matrices: not drawn ([report].plots = false)")
    rep.images += written
    pngs = [p for p in written if p.suffix == ".png"]
    return {"paper_figs": [{"src": f"{FIG_DIR}/{p.name}", "name": p.stem} for p in pngs if not p.stem.startswith("confusion-")],
            "confusions": [{"src": f"{FIG_DIR}/{p.name}", "name": p.stem, "run": p.stem[len("confusion-"):]}
                           for p in pngs if p.stem.startswith("confusion-")]}


def _comparisons(results: Results, keys: dict[str, list[RunRecord]], figs: Path, rep: Report, *, seed: int,
                 n_resamples: int) -> dict[str, Any]:
    """The key paired comparisons on the main dataset: a table each, and one figure of their differences."""
    done: list[Comparison] = []
    views: list[dict[str, Any]] = []
    for other in ("distill head", "VLM alone", "teacher alone"):
        if MAIN not in keys or other not in keys:
            continue
        try:
            c = compare_records(results, keys[MAIN], keys[other], MAIN, other, seed=seed, n_resamples=n_resamples)
        except ConfigError as exc:
            rep.missing.append(f"comparison {MAIN} vs {other}: {exc}")
            continue
        done.append(c)
        views.append({"title": f"{MAIN} vs {other}", "slug": other.replace(" ", "-"), **_comparison_view(c),
                      "runs": sorted({p.run_a for p in c.pairs} | {p.run_b for p in c.pairs})})
    figure = None
    if done:
        rep.images += _save(comparison_figure(done), figs, "comparisons")
        figure = f"{FIG_DIR}/comparisons.png"
    return {"comparisons": views, "comparison_figure": figure}


def _figure4(results: Results, keys: dict[str, list[RunRecord]], ds: str, figs: Path, rep: Report, *,
             examples: int, seed: int) -> tuple[dict[str, Any] | None, Any]:
    """Figure 4 from the newest key gate run with stored predictions; returns (view, its dataset source)."""
    from vea_bench.report.examples import dataset_source, figure4, pick_examples

    gate_pred: tuple[RunRecord, SplitPredictions] | None = None
    for g in sorted(keys.get(MAIN, []), key=_created, reverse=True):
        p = load_for(g, results.root)
        if p is not None:
            gate_pred = (g, p)
            break
    if gate_pred is None:
        rep.missing.append(f"figure 4: no gate run on {ds} with stored per-image predictions")
        return None, None
    g, p = gate_pred
    try:
        src = dataset_source(g)
        exs = pick_examples(g, p, src.ids, per_direction=examples, seed=seed)
        fig = figure4(exs, src.root, title=f"Figure 4 ({dataset_title(ds)}): VLM vs distill head")
        rep.images += _save(fig, figs, "figure4-examples", dpi=150)
        gallery = []
        for i, e in enumerate(exs):
            dst = figs / f"fig4-{i:02d}{Path(e.image).suffix.lower() or '.png'}"
            shutil.copyfile(src.root / e.image, dst)
            rep.images.append(dst)
            gallery.append({**asdict(e), "src": f"{FIG_DIR}/{dst.name}"})
    except (ConfigError, VeaError, OSError) as exc:
        rep.missing.append(f"figure 4: {exc}")
        return None, None
    return ({"png": f"{FIG_DIR}/figure4-examples.png", "pdf": f"{FIG_DIR}/figure4-examples.pdf", "gallery": gallery,
             "run": g.run_id, "root": str(src.root), "cache": str(src.cache), "seed": seed}, src)


def _calibration(results: Results, keys: dict[str, list[RunRecord]], ds: str, figs: Path, rep: Report) -> dict[str, Any]:
    """ECE of heads, gates and the teacher (latest run per config; key runs first) and a reliability diagram."""
    from vea_bench.report.plots import run_label

    cal_rows: list[dict[str, Any]] = []
    curves: list[tuple[str, S.Calibration]] = []
    seen: set[str] = set()
    key_ids = {r.run_id for recs in keys.values() for r in recs}
    order = {"gate": 0, "distill": 1, "baseline": 2}
    cands = sorted([r for r in results.records if r.dataset == ds and (r.kind in ("gate", "distill") or
                    (r.kind == "baseline" and not r.method.startswith("oracle")))],
                   key=lambda r: (r.run_id not in key_ids, order[r.kind], -_created(r)[0], r.run_id))
    for r in cands:
        if r.experiment_id in seen:
            continue
        p = load_for(r, results.root)
        if p is None or p.prob is None:
            continue
        seen.add(r.experiment_id)
        cal = S.calibration(p.prob, p.y)
        label = run_label(r)
        cal_rows.append({"label": label, "run": r.run_id, "ece": cal.ece * 100, "n": len(p),
                         "acc": float(p.correct.mean()) * 100})
        if len(curves) < MAX_CALIBRATION_RUNS and r.kind in ("gate", "distill"):
            curves.append((label, cal))
    reliability = None
    if curves:
        rep.images += _save(reliability_figure(curves), figs, "reliability")
        reliability = f"{FIG_DIR}/reliability.png"
    else:
        rep.missing.append(f"calibration: no head or gate run on {ds} with stored probabilities")
    return {"calibration": cal_rows, "reliability": reliability}


def _groups(results: Results, keys: dict[str, list[RunRecord]], src: Any, rep: Report) -> dict[str, Any]:
    """Per-group accuracy of the key runs (by class, and by each attribute the dataset carries)."""
    from vea_bench.report.examples import dataset_source, group_report, split_meta

    meta = None
    gate_runs = sorted(keys.get(MAIN, []), key=_created, reverse=True)
    if src is None and gate_runs:
        try:
            src = dataset_source(gate_runs[0])
        except (ConfigError, VeaError) as exc:
            rep.missing.append(f"attributes: {exc}")
    if src is not None:
        try:
            meta = split_meta(src)
        except ConfigError as exc:
            rep.missing.append(f"attributes: {exc}")
    reports = []
    for label, recs in keys.items():
        r = max(recs, key=_created)
        p = load_for(r, results.root)
        if p is not None:
            use = src if meta is not None and r.dataset == src.dataset else None
            reports.append((label, group_report(r, p, use, meta)))
    groups = group_view(reports)
    return {"groups": groups, "has_attributes": len(groups["tables"]) > 1}


def _losses(results: Results, ds: str, figs: Path, rep: Report) -> dict[str, Any]:
    """Loss curves where records carry them (latest distill and gate runs on the main dataset)."""
    from vea_bench.report.plots import run_label

    loss_runs = []
    for kind in ("distill", "gate"):
        for r in _latest(results, ds, lambda x, k=kind: x.kind == k)[:1]:
            series = loss_series(r)
            if series:
                loss_runs.append((f"{run_label(r)} seed {r.seed}", series))
    if not loss_runs:
        return {"losses": None}
    rep.images += _save(loss_figure(loss_runs), figs, "loss-curves")
    return {"losses": f"{FIG_DIR}/loss-curves.png"}


def _write_page(rep: Report, context: dict[str, Any]) -> None:
    """Render the template with ``context`` and put the page in place atomically."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("vea_bench", "data/templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
    html = env.get_template(TEMPLATE).render(**context)
    rep.index.parent.mkdir(parents=True, exist_ok=True)
    tmp = rep.index.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(rep.index)


def build_report(results: Results, out: str | Path, *, dataset: str | None = None, seed: int = 0,
                 examples: int = 4, n_resamples: int = S.N_RESAMPLES, compare_paper: bool = True,
                 gate: str | None = None, figures: Sequence[Path] | None = None) -> Report:
    """Write ``out/index.html`` and its figures from ``results``; returns what was written and left out.

    ``gate`` picks the gate of Figure 4 and the key comparisons (default: the paper's Concat & Linear);
    DynamicWeighting and CrossGating runs show their per-image source weights in Figure 4.
    ``figures``: PNGs of `render_plots` already drawn (the pipeline's plots stage) to show instead of
    drawing them again; an empty list leaves the paper figures and confusion matrices out.
    """
    require_records(results)
    ds = main_dataset(results, dataset)
    keys = key_runs(results, ds, gate)   # a wrong --dataset or --gate fails before any work
    out = Path(out)
    figs = out / FIG_DIR
    if figs.exists():
        shutil.rmtree(figs)  # the page is rebuilt whole: no stale image from an earlier report survives
    figs.mkdir(parents=True, exist_ok=True)
    rep = Report(index=out / "index.html")

    tables = build_tables(results, "all", dataset=ds)
    rep.missing += annotate_tables(tables, results, ci=True, marks=True, seed=seed, n_resamples=n_resamples)
    context: dict[str, Any] = {"tables": [_table_view(t, compare_paper) for t in tables]}
    context.update(_paper_figures(results, figs, figures, rep))
    context.update(_comparisons(results, keys, figs, rep, seed=seed, n_resamples=n_resamples))
    fig4, src = _figure4(results, keys, ds, figs, rep, examples=examples, seed=seed)
    context.update(_calibration(results, keys, ds, figs, rep))
    context.update(_groups(results, keys, src, rep))
    context.update(_losses(results, ds, figs, rep))
    runs = [_run_view(r, results.paths.get(r.run_id)) for r in sorted(results.records, key=_created)]
    _write_page(rep, {
        **context, "fig4": fig4, "runs": runs, "missing": rep.missing,
        "title": f"vea-bench report: {results.root}", "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "root": str(results.root), "n_records": len(results.records), "dataset": ds,
        "skipped": [f"{p}: {w}" for p, w in results.skipped]})
    return rep
