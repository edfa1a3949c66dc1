"""The costly ensemble: run both the teacher and the VLM and mix their answers, the alternative the paper avoids."""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from vea_bench.heads.baselines.base import BASELINES, BaselineContext, PairBaseline
from vea_bench.metrics import split_metrics
from vea_bench.results import PRED_SPLITS, RunOutput, from_scores, softmax

ENSEMBLE_GRID = tuple(round(0.05 * k, 2) for k in range(21))


def ensemble_scores(teacher_logits: np.ndarray, vlm_vec: np.ndarray, weight: float) -> np.ndarray:
    """``w * softmax(teacher) + (1 - w) * vlm`` (one-hot or normalised VLM probabilities)."""
    return weight * softmax(teacher_logits) + (1.0 - weight) * np.asarray(vlm_vec, dtype=np.float64)


def pick_ensemble_weight(y: np.ndarray, teacher_logits: np.ndarray, vlm_vec: np.ndarray,
                         grid: Sequence[float] = ENSEMBLE_GRID) -> float:
    """The teacher weight with the best accuracy on the given split (first of ties)."""
    accs = [float((ensemble_scores(teacher_logits, vlm_vec, w).argmax(1) == y).mean()) for w in grid]
    return float(grid[int(np.argmax(accs))])


@BASELINES.register("ensemble")
class Ensemble(PairBaseline):
    """The teacher weight is picked on val (train when the cache has no val), never on test."""

    def run(self, ctx: BaselineContext) -> list[RunOutput]:
        t0 = time.perf_counter()
        pair = ctx.paired()
        sel = "val" if "val" in pair.splits else "train"
        sv = pair.splits[sel]
        weight = pick_ensemble_weight(sv.y, sv.teacher, sv.vlm)
        names = ctx.cache.label_names
        mets = {s: split_metrics(sa.y, ensemble_scores(sa.teacher, sa.vlm, weight), names)
                for s, sa in pair.splits.items()}
        cfg = {"teacher": pair.sources["teacher"], "vlm": pair.sources["vlm"], "vlm_input": ctx.vlm_input,
               "teacher_weight": weight, "weight_picked_on": sel, "rule": "w*softmax(teacher)+(1-w)*vlm"}
        preds = {s: from_scores(sa.y, ensemble_scores(sa.teacher, sa.vlm, weight), sa.rows, logits=False)
                 for s, sa in pair.splits.items() if s in PRED_SPLITS}
        return [ctx.output("baseline", "ensemble", cfg, mets, t0=t0, predictions=preds)]
