"""The paper's Figure 1 (complementarity), Figure 3 (alpha sweep) and confusion matrices, from run records.

Figures are sized for print: the default is one column of a two-column paper (3.5 in wide) at
300 dpi, fonts 7-8 pt, so a PNG is exactly ``width * dpi`` pixels wide and a PDF drops into LaTeX
at 100 % without rescaling text. matplotlib runs on the Agg backend (no display needed).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vea_bench.errors import ConfigError
from vea_bench.hashing import config_hash
from vea_bench.results import RunRecord, experiment_config
from vea_bench.report.paper import PAPER_DATASETS, dataset_title, paper_setting
from vea_bench.report.selection import STD_DDOF, Results, latest_group, metric_of

log = logging.getLogger(__name__)

PLOT_FORMATS = ("png", "pdf", "svg")
COMPLEMENTARITY_KEYS = ("both", "teacher_only", "vlm_only", "neither")
_COMP_LABELS = {"both": "both right", "teacher_only": "teacher only", "vlm_only": "VLM only", "neither": "neither"}
# Colour-blind-safe (Okabe-Ito) colours.
_COMP_COLOURS = {"both": "#009E73", "teacher_only": "#0072B2", "vlm_only": "#E69F00", "neither": "#BBBBBB"}
_ACC_COLOUR, _KL_COLOUR = "#0072B2", "#D55E00"


@dataclass(frozen=True)
class FigureStyle:
    """Print geometry: width in inches, dots per inch, base font size in points (>= 7 for print)."""

    width: float = 3.5
    dpi: int = 300
    font_size: float = 7.5

    def rc(self) -> dict[str, Any]:
        fs = self.font_size
        return {"font.size": fs, "axes.titlesize": fs + 0.5, "axes.labelsize": fs, "xtick.labelsize": fs - 0.5,
                "ytick.labelsize": fs - 0.5, "legend.fontsize": fs - 0.5, "axes.linewidth": 0.6,
                "lines.linewidth": 1.0, "lines.markersize": 3.5, "savefig.dpi": self.dpi, "figure.dpi": self.dpi,
                "pdf.fonttype": 42}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _datasets_order(names: set[str]) -> list[str]:
    return [d for d in PAPER_DATASETS if d in names] + sorted(names - set(PAPER_DATASETS))


# ============================================================================ Figure 1

def complementarity_data(results: Results, datasets: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per dataset: the fraction of test images only the teacher, only the VLM, both or neither got right.

    From ``complementarity`` records (latest config group; fractions averaged over its seeds).
    """
    recs = [r for r in results.records if r.kind == "complementarity" and (not datasets or r.dataset in datasets)]
    out: dict[str, dict[str, float]] = {}
    for d in _datasets_order({r.dataset for r in recs}):
        fracs = []
        for r in latest_group([r for r in recs if r.dataset == d and _counts(r) is not None]):
            c = _counts(r)
            total = sum(c.values())
            if total > 0:
                fracs.append({k: c[k] / total for k in COMPLEMENTARITY_KEYS})
        if fracs:
            out[d] = {k: float(np.mean([f[k] for f in fracs])) for k in COMPLEMENTARITY_KEYS}
    return out


def _counts(r: RunRecord) -> dict[str, float] | None:
    extra = (r.metrics.get("test") or {}).get("extra") if isinstance(r.metrics, dict) else None
    if not isinstance(extra, dict) or not all(isinstance(extra.get(k), (int, float)) for k in COMPLEMENTARITY_KEYS):
        return None
    return {k: float(extra[k]) for k in COMPLEMENTARITY_KEYS}


def figure1(results: Results, *, datasets: Sequence[str] | None = None, style: FigureStyle = FigureStyle()) -> Any:
    """Figure 1: one 100 % stacked bar per dataset (both right, teacher only, VLM only, neither)."""
    data = complementarity_data(results, datasets)
    if not data:
        raise ConfigError("no complementarity records: run the complementarity baseline (kind 'complementarity') first")
    plt = _plt()
    names = list(data)
    with plt.rc_context(style.rc()):
        fig, ax = plt.subplots(figsize=(style.width, 0.9 + 0.32 * len(names)), layout="constrained")
        y = np.arange(len(names))[::-1]
        left = np.zeros(len(names))
        for k in COMPLEMENTARITY_KEYS:
            vals = np.array([data[d][k] * 100 for d in names])
            ax.barh(y, vals, left=left, height=0.68, color=_COMP_COLOURS[k], label=_COMP_LABELS[k],
                    edgecolor="white", linewidth=0.4)
            for yi, l, v in zip(y, left, vals):
                if v >= 4.5:  # a label needs ~0.13 in of bar at 3.5 in width
                    ax.text(l + v / 2, yi, f"{v:.0f}", ha="center", va="center", fontsize=style.font_size - 0.5,
                            color="white" if k != "neither" else "black")
            left += vals
        ax.set_yticks(y, [dataset_title(d) for d in names])
        ax.set_xlim(0, 100)
        ax.set_xlabel("Test images (%)")
        ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, handlelength=1.0,
                  columnspacing=0.8, handletextpad=0.4, borderaxespad=0.2)
        ax.spines[["top", "right"]].set_visible(False)
    return fig


# ============================================================================ Figure 3

@dataclass
class AlphaCurve:
    """One dataset's alpha sweep: per alpha, mean and sample std over seeds of accuracy (%) and KL."""

    dataset: str
    group: str
    alphas: list[float]
    acc_mean: list[float]
    acc_std: list[float]
    kl_mean: list[float]
    kl_std: list[float]
    n: list[int]


def _sweep_key(r: RunRecord) -> str:
    """Sweep identity: the record's ``group``, else its experiment's config without alpha."""
    if r.group:
        return r.group
    cfg = experiment_config(r.config)
    cfg.pop("alpha", None)
    return config_hash({"dataset": r.dataset, "config": cfg})


def alpha_curves(results: Results, datasets: Sequence[str] | None = None, split: str = "test") -> list[AlphaCurve]:
    """Alpha sweeps from distill records: per dataset the most recent group spanning two or more alphas."""
    recs = [r for r in results.records if r.kind == "distill" and isinstance(r.config.get("alpha"), (int, float))
            and (not datasets or r.dataset in datasets) and metric_of(r, split) is not None]
    curves = []
    for d in _datasets_order({r.dataset for r in recs}):
        groups: dict[str, list[RunRecord]] = {}
        for r in recs:
            if r.dataset == d:
                groups.setdefault(_sweep_key(r), []).append(r)
        sweeps = {k: g for k, g in groups.items() if len({float(r.config["alpha"]) for r in g}) >= 2}
        if not sweeps:
            continue
        key, members = max(sweeps.items(), key=lambda kv: max(r.created_at for r in kv[1]))
        alphas = sorted({float(r.config["alpha"]) for r in members})
        c = AlphaCurve(d, key, alphas, [], [], [], [], [])
        for a in alphas:
            chosen = latest_group([r for r in members if float(r.config["alpha"]) == a])
            acc = np.array([metric_of(r, split) for r in chosen]) * 100
            kl = np.array([v for r in chosen if (v := metric_of(r, split, "kl_to_teacher")) is not None])
            c.acc_mean.append(float(acc.mean()))
            c.acc_std.append(float(acc.std(ddof=STD_DDOF)) if acc.size >= 2 else 0.0)
            c.kl_mean.append(float(kl.mean()) if kl.size else float("nan"))
            c.kl_std.append(float(kl.std(ddof=STD_DDOF)) if kl.size >= 2 else 0.0)
            c.n.append(int(acc.size))
        curves.append(c)
    return curves


def figure3(results: Results, *, datasets: Sequence[str] | None = None, style: FigureStyle = FigureStyle()) -> Any:
    """Figure 3: accuracy (left axis) and KL to the teacher (right axis) against alpha, one panel per dataset."""
    curves = alpha_curves(results, datasets)
    if not curves:
        raise ConfigError("no alpha sweep among the distill records: run `vea-bench sweep alpha ...` first")
    plt = _plt()
    with plt.rc_context(style.rc()):
        fig, axes = plt.subplots(len(curves), 1, figsize=(style.width, 0.35 + 1.75 * len(curves)),
                                 layout="constrained", squeeze=False)
        for ax, c in zip(axes[:, 0], curves):
            ax.errorbar(c.alphas, c.acc_mean, yerr=c.acc_std, color=_ACC_COLOUR, marker="o", capsize=2,
                        elinewidth=0.7, label="accuracy")
            ax.set_ylabel("Accuracy (%)", color=_ACC_COLOUR)
            ax.tick_params(axis="y", colors=_ACC_COLOUR)
            best = int(np.nanargmax(c.acc_mean))
            ax.axvline(c.alphas[best], color="0.6", lw=0.6, ls=":", zorder=0,
                       label="best accuracy" if ax is axes[0, 0] else None)
            tw = ax.twinx()
            if not np.all(np.isnan(c.kl_mean)):
                tw.errorbar(c.alphas, c.kl_mean, yerr=c.kl_std, color=_KL_COLOUR, marker="s", ls="--", capsize=2,
                            elinewidth=0.7, label="KL to teacher")
            tw.set_ylabel("KL(teacher ‖ student)", color=_KL_COLOUR)
            tw.tick_params(axis="y", colors=_KL_COLOUR)
            seeds = f"{min(c.n)}" if min(c.n) == max(c.n) else f"{min(c.n)}-{max(c.n)}"
            ax.set_title(f"{dataset_title(c.dataset)} (n = {seeds} seeds per alpha)", loc="left")
            ax.set_xlabel("alpha (weight of the KD loss)")
            ax.set_xticks(c.alphas, [f"{a:g}" for a in c.alphas])
        h1, l1 = axes[0, 0].get_legend_handles_labels()
        h2, l2 = fig.axes[-1].get_legend_handles_labels()
        fig.legend(h1 + h2, l1 + l2, loc="outside upper center", ncols=3, frameon=False)
    return fig


# ============================================================================ confusion matrices

def confusion_runs(results: Results, *, which: str = "latest", datasets: Sequence[str] | None = None,
                   kinds: Sequence[str] = ("gate", "distill"), split: str = "test") -> list[RunRecord]:
    """Runs to draw: ``all`` of kind gate/distill, or the ``latest`` record of each config (seeds collapsed)."""
    if which == "none":
        return []
    recs = [r for r in results.records if r.kind in kinds and (not datasets or r.dataset in datasets)
            and ((r.metrics.get(split) or {}).get("confusion"))]
    if which == "all":
        return recs
    if which != "latest":
        raise ConfigError(f"unknown confusion selection '{which}' (choices: latest, all, none)")
    latest: dict[str, RunRecord] = {}
    for r in sorted(recs, key=lambda r: r.created_at):
        latest[r.experiment_id] = r
    return list(latest.values())


def run_label(rec: RunRecord) -> str:
    """Short name of a run for titles: method plus the config choices that tell its variants apart."""
    cfg = rec.config if isinstance(rec.config, dict) else {}
    if rec.kind == "gate":
        paper = paper_setting()
        bits = [rec.variant]
        if "vlm_input" in cfg and cfg["vlm_input"] != paper["vlm_input"]:
            bits.append(str(cfg["vlm_input"]))
        if "gate_fit" in cfg and cfg["gate_fit"] != paper["gate_fit"]:
            bits.append(f"fit {cfg['gate_fit']}")
        return f"{rec.method} ({', '.join(bits)})"
    if rec.kind == "distill" and "alpha" in cfg:
        return f"{rec.method} α={cfg['alpha']:g}"
    return rec.method


def figure_confusion(rec: RunRecord, *, split: str = "test", style: FigureStyle = FigureStyle()) -> Any:
    """Row-normalised confusion matrix (rows = truth) of one run, with label names and per-cell rates."""
    m = (rec.metrics.get(split) or {}).get("confusion")
    if not m:
        raise ConfigError(f"run {rec.run_id} has no {split} confusion matrix")
    cm = np.asarray(m, dtype=np.float64)
    c = cm.shape[0]
    names = list(rec.label_names) if len(rec.label_names) == c else [str(i) for i in range(c)]
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    plt = _plt()
    with plt.rc_context(style.rc()):
        side = style.width
        fig, ax = plt.subplots(figsize=(side, side * 0.92), layout="constrained")
        im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
        if c <= 12:
            for i in range(c):
                for j in range(c):
                    v = norm[i, j]
                    ax.text(j, i, f"{v:.2f}"[1:] if v < 1 else "1.0", ha="center", va="center",
                            fontsize=max(7.0, style.font_size - 1 if c > 6 else style.font_size),
                            color="white" if v > 0.55 else "black")
        ax.set_xticks(range(c), names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(c), names)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        acc = metric_of(rec, split)
        parts = ([] if rec.seed is None else [f"seed {rec.seed}"]) + ([] if acc is None else [f"accuracy {acc * 100:.2f}%"])
        # Two lines: a one-line title runs into the colourbar's top label at single-column width.
        ax.set_title(f"{run_label(rec)} on {dataset_title(rec.dataset)}\n{', '.join(parts)}", loc="left")
        fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class")
    return fig


# ============================================================================ loss curves

def loss_curve_runs(results: Results, which: Sequence[str]) -> list[RunRecord]:
    """Runs whose loss curves to draw: ``all`` (every run with a convergence history) or run ids/prefixes."""
    with_hist = [r for r in results.records if r.convergence and r.convergence.get("train_loss")]
    if not which:
        return []
    if "all" in which:
        return with_hist
    out = []
    for ref in which:
        hits = [r for r in results.records if r.run_id == ref] or [r for r in results.records if r.run_id.startswith(ref)]
        if len(hits) != 1:
            raise ConfigError(f"--loss-curves '{ref}' matches {len(hits)} runs; give a unique run id or prefix")
        if not (hits[0].convergence and hits[0].convergence.get("train_loss")):
            raise ConfigError(f"run {hits[0].run_id} has no per-epoch history (trained before it was recorded, "
                              f"or an exact L-BFGS fit)")
        out.append(hits[0])
    return out


def figure_loss_curves(rec: RunRecord, *, style: FigureStyle = FigureStyle()) -> Any:
    """Train and val loss per epoch (left axis), val accuracy (right axis), the kept epoch marked."""
    conv = rec.convergence or {}
    tl, vl, va = conv.get("train_loss") or [], conv.get("val_loss") or [], conv.get("val_accuracy") or []
    if not tl:
        raise ConfigError(f"run {rec.run_id} has no per-epoch history")
    plt = _plt()
    with plt.rc_context(style.rc()):
        fig, ax = plt.subplots(figsize=(style.width, style.width * 0.7), layout="constrained")
        ep = np.arange(1, len(tl) + 1)
        ax.plot(ep, tl, color=_ACC_COLOUR, label="train loss")
        if vl:
            ax.plot(ep[: len(vl)], vl, color=_KL_COLOUR, ls="--", label="val loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        kept = conv.get("kept_epoch")
        if kept:
            ax.axvline(kept, color="0.5", lw=0.6, ls=":", label=f"kept (epoch {kept})")
        if va:
            tw = ax.twinx()
            tw.plot(ep[: len(va)], np.asarray(va) * 100, color="#009E73", lw=0.8, label="val accuracy")
            tw.set_ylabel("val accuracy (%)", color="#009E73")
            tw.tick_params(axis="y", colors="#009E73")
            h2, l2 = tw.get_legend_handles_labels()
        else:
            h2, l2 = [], []
        h1, l1 = ax.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, frameon=False, loc="upper right")
        ax.set_title(f"{run_label(rec)} seed {rec.seed}\n{conv.get('stop_reason', '')}", loc="left")
    return fig


# ============================================================================ saving

def save_figure(fig: Any, out_dir: str | Path, name: str, formats: Sequence[str] = ("png", "pdf"),
                dpi: int = 300) -> list[Path]:
    """Write ``fig`` as ``<out>/<name>.<fmt>`` for each format (exact figure size, no tight cropping)."""
    bad = [f for f in formats if f not in PLOT_FORMATS]
    if bad:
        raise ConfigError(f"unknown plot format(s) {', '.join(bad)} (choices: {', '.join(PLOT_FORMATS)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = out / f"{name}.{fmt}"
        fig.savefig(p, dpi=dpi, format=fmt)
        paths.append(p)
    _plt().close(fig)
    return paths


def render_plots(results: Results, out_dir: str | Path, *, datasets: Sequence[str] | None = None,
                 formats: Sequence[str] = ("png", "pdf"), style: FigureStyle = FigureStyle(),
                 confusion: str = "latest", loss_curves: Sequence[str] = ()) -> tuple[list[Path], list[str]]:
    """Every figure the records allow: returns the files written and, per figure not drawn, why.

    ``loss_curves`` names runs (ids, prefixes, or ``all``) whose per-epoch loss curves to draw too.
    """
    written: list[Path] = []
    missing: list[str] = []
    for name, build in (("figure1-complementarity", figure1), ("figure3-alpha", figure3)):
        try:
            fig = build(results, datasets=datasets, style=style)
        except ConfigError as exc:
            missing.append(f"{name}: {exc}")
            continue
        written += save_figure(fig, out_dir, name, formats, style.dpi)
    for rec in confusion_runs(results, which=confusion, datasets=datasets):
        fig = figure_confusion(rec, style=style)
        written += save_figure(fig, out_dir, f"confusion-{rec.run_id}", formats, style.dpi)
    for rec in loss_curve_runs(results, loss_curves):
        written += save_figure(figure_loss_curves(rec, style=style), out_dir, f"loss-{rec.run_id}", formats, style.dpi)
    return written, missing
