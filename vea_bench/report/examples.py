"""Figure 4 (qualitative examples) and the per-group analysis, from stored predictions and the dataset.

Both need what a record does not hold: the images and the per-image attributes. The record names
its cache (``cache["path"]``); the cache records the dataset root it was extracted from (file
attribute ``extra.root``) and each test row's image path (``/splits/test/ids``). Figure 4 opens the
images from there; attributes (EmoSet's brightness, colorfulness, scene, object, facial expression,
human action; Emotion6's valence, arousal and 7-way vote distribution) are read by loading the
dataset index from that root at report time, so the cache format needs no change.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vea_bench.errors import ConfigError
from vea_bench.report import stats as S
from vea_bench.results import RunRecord, SplitPredictions

EMOSET_ATTRIBUTES = ("brightness", "colorfulness", "scene", "object", "facial_expression", "human_action")
VA_EDGES = (1.0, 3.0, 4.0, 5.0, 6.0, 9.0)    # Emotion6's valence / arousal are on a 1-9 scale
UNIT_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DIRECTIONS = {"vlm_right": "VLM right, distill head wrong", "head_right": "distill head right, VLM wrong"}


@dataclass(frozen=True)
class DatasetSource:
    """Where a run's test images are: the cache file, the dataset root it recorded, the test ids."""

    cache: Path
    root: Path
    dataset: str
    split_seed: int | None
    ids: list[str]


def dataset_source(rec: RunRecord, split: str = "test", *, need_root: bool = True) -> DatasetSource:
    """The cache and dataset root of ``rec``; a missing cache or root is a one-line error naming it."""
    from vea_bench.cache.store import FeatureCache

    path = (rec.cache or {}).get("path")
    if not path:
        raise ConfigError(f"run {rec.run_id} names no cache, so its images cannot be found")
    with FeatureCache.open(path) as cache:
        root = (cache.attrs().get("extra") or {}).get("root")
        ids = cache.ids(split)
        seed = cache.split_seed
        dataset = cache.dataset
    if not root:
        raise ConfigError(f"{path}: the cache records no dataset root (extracted by an older vea-bench)")
    if need_root and not Path(root).is_dir():
        raise ConfigError(f"dataset root {root} recorded in {path} does not exist; restore it (or re-extract)")
    return DatasetSource(Path(path), Path(root), dataset, seed, ids)


# ============================================================================ Figure 4

@dataclass
class Example:
    """One test image where the VLM and the distill head disagree."""

    direction: str
    row: int
    image: str
    truth: str
    vlm: str
    head: str
    gate: str
    gate_right: bool
    weights: tuple[float, float] | None = None


def _name(names: Sequence[str], i: int) -> str:
    return "no answer" if i < 0 or i >= len(names) else names[i]


def pick_examples(rec: RunRecord, preds: SplitPredictions, ids: Sequence[str], *, per_direction: int = 4,
                  seed: int = 0) -> list[Example]:
    """Disagreements in both directions, ``per_direction`` each, chosen by ``seed`` (then by row order).

    ``preds`` are a gate run's test predictions with its inputs' (``vlm_pred``, ``distill_pred``).
    """
    if "vlm_pred" not in preds.extra or "distill_pred" not in preds.extra:
        raise ConfigError(f"run {rec.run_id} stored no VLM / distill predictions beside its own (a gate run "
                          f"records them); rerun the gate")
    vlm, head = preds.extra["vlm_pred"].astype(np.int64), preds.extra["distill_pred"].astype(np.int64)
    w = preds.extra.get("source_weights")
    y = preds.y
    masks = {"vlm_right": (vlm == y) & (head != y), "head_right": (head == y) & (vlm != y)}
    rng = np.random.default_rng(seed)
    names = list(rec.label_names)
    out: list[Example] = []
    for direction, m in masks.items():
        idx = np.flatnonzero(m)
        if idx.size > per_direction:
            idx = np.sort(rng.choice(idx, per_direction, replace=False))
        for i in idx:
            row = int(preds.rows[i])
            out.append(Example(direction, row, ids[row], names[y[i]], _name(names, int(vlm[i])),
                               _name(names, int(head[i])), _name(names, int(preds.pred[i])),
                               bool(preds.pred[i] == y[i]),
                               None if w is None else (float(w[i][0]), float(w[i][1]))))
    return out


def figure4(examples: Sequence[Example], root: Path, *, title: str = "", font_size: float = 7.0,
            cell: float = 1.7) -> Any:
    """A grid: one row per direction, each image captioned with truth, VLM, head, gate (and weights)."""
    from PIL import Image

    from vea_bench.report.plots import _plt

    if not examples:
        raise ConfigError("no test image where the VLM and the distill head disagree")
    plt = _plt()
    rows = [d for d in DIRECTIONS if any(e.direction == d for e in examples)]
    ncol = max(sum(e.direction == d for e in examples) for d in rows)
    text_h = (max(caption(e).count("\n") for e in examples) + 1) * font_size * 1.35 / 72 + 0.08
    head_h = (font_size + 4) / 72
    # A fixed grid (title strip, images, captions per direction) rather than a layout engine, so
    # captions never overflow their cell: every height is computed from the font size.
    ratios = [head_h, cell, text_h] * len(rows)
    top_h = 0.35 if title else 0.05
    width = max(cell * ncol + 0.1 * (ncol - 1) + 0.2, 3.6)
    height = sum(ratios) + top_h + 0.1
    with plt.rc_context({"font.size": font_size, "pdf.fonttype": 42}):
        fig = plt.figure(figsize=(width, height))
        gs = fig.add_gridspec(len(ratios), ncol, height_ratios=ratios, left=0.1 / width, right=1 - 0.1 / width,
                              top=1 - top_h / height, bottom=0.05 / height, hspace=0.0, wspace=0.1 / cell)
        for r, d in enumerate(rows):
            head = fig.add_subplot(gs[3 * r, :])
            head.set_axis_off()
            head.text(0.0, 0.5, DIRECTIONS[d], fontsize=font_size + 0.5, fontweight="bold", va="center")
            for c, e in enumerate([e for e in examples if e.direction == d]):
                ax = fig.add_subplot(gs[3 * r + 1, c])
                ax.set_axis_off()
                path = root / e.image
                try:
                    with Image.open(path) as im:
                        ax.imshow(np.asarray(im.convert("RGB")))
                except OSError as exc:
                    raise ConfigError(f"{path}: cannot read the test image ({exc.__class__.__name__})") from None
                tx = fig.add_subplot(gs[3 * r + 2, c])
                tx.set_axis_off()
                tx.text(0.0, 0.97, caption(e), va="top", ha="left", fontsize=font_size, linespacing=1.2)
        if title:
            fig.suptitle(title, fontsize=font_size + 1, y=1 - 0.08 / height, va="top")
    return fig


def caption(e: Example) -> str:
    lines = [f"truth: {e.truth}", f"VLM: {e.vlm}", f"head: {e.head}",
             f"gate: {e.gate} {'(right)' if e.gate_right else '(wrong)'}"]
    if e.weights is not None:
        lines.append(f"w head/VLM: {e.weights[0]:.2f}/{e.weights[1]:.2f}")
    return "\n".join(lines)


# ============================================================================ per-group analysis

@dataclass
class GroupTable:
    """Accuracy by the values of one attribute, for one run."""

    attribute: str
    groups: list[S.GroupAccuracy]


@dataclass
class GroupReport:
    """A run's per-class and per-attribute accuracy and, for Emotion6, its distribution-aware metrics."""

    run_id: str
    per_class: list[S.GroupAccuracy]
    attributes: list[GroupTable] = field(default_factory=list)
    distribution: S.DistributionMetrics | None = None
    note: str = ""


def split_meta(src: DatasetSource) -> dict[str, dict[str, Any]]:
    """Per test image path, its meta (attributes) from the dataset index at the recorded root."""
    from vea_bench.datasets import load_dataset
    from vea_bench.errors import VeaError

    try:
        index = load_dataset(src.dataset, src.root, seed=src.split_seed if src.split_seed is not None else 42)
    except VeaError as exc:
        raise ConfigError(f"dataset root {src.root}: cannot load its attributes ({exc})") from None
    return {s.path: dict(s.meta) for s in index.split("test")}


def group_report(rec: RunRecord, preds: SplitPredictions, src: DatasetSource | None,
                 meta: dict[str, dict[str, Any]] | None) -> GroupReport:
    """Accuracy by class and by each attribute the dataset carries (with counts); Emotion6's vote metrics."""
    names = list(rec.label_names)
    correct = preds.correct
    rep = GroupReport(rec.run_id, S.accuracy_by([_name(names, int(v)) for v in preds.y], correct))
    if src is None or meta is None:
        return rep
    metas = [meta.get(src.ids[int(r)], {}) for r in preds.rows]
    for attr in EMOSET_ATTRIBUTES:
        vals = [m.get(attr) for m in metas]
        present = [v for v in vals if v is not None]
        if not present:
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            # Continuous scores (EmoSet's brightness, colorfulness in [0, 1]): fifths of the range.
            binned = S.bin_values([None if v is None else float(v) for v in vals], UNIT_EDGES)
            rep.attributes.append(GroupTable(f"{attr} (binned)", S.accuracy_by(binned, correct)))
        else:
            rep.attributes.append(GroupTable(attr, S.accuracy_by(vals, correct)))
    for attr in ("valence", "arousal"):
        vals = [m.get(attr) for m in metas]
        if any(isinstance(v, (int, float)) for v in vals):
            binned = S.bin_values([float(v) if isinstance(v, (int, float)) else None for v in vals], VA_EDGES)
            rep.attributes.append(GroupTable(f"{attr} (binned)", S.accuracy_by(binned, correct)))
    dists = [m.get("distribution") for m in metas]
    if preds.prob is not None and any(d is not None for d in dists):
        rep.distribution = _distribution(names, preds.prob, dists)
        rep.note = "vote distribution renormalised over the six emotions (its neutral share dropped)"
    return rep


def _distribution(names: Sequence[str], prob: np.ndarray, dists: Sequence[Any]) -> S.DistributionMetrics | None:
    from vea_bench.datasets.emotion6 import DISTRIBUTION_LABELS

    cols = [DISTRIBUTION_LABELS.index(n) for n in names if n in DISTRIBUTION_LABELS]
    if len(cols) != len(names):
        return None
    keep = [i for i, d in enumerate(dists) if d is not None and len(d) == len(DISTRIBUTION_LABELS)
            and all(isinstance(x, (int, float)) and math.isfinite(x) for x in d)]
    if not keep:
        return None
    votes = np.asarray([[dists[i][c] for c in cols] for i in keep], dtype=np.float64)
    return S.distribution_metrics(prob[keep], votes)
