"""The oracle: right whenever the teacher or the VLM is right, the ceiling of any fusion of the two."""
from __future__ import annotations

import time

import numpy as np

from vea_bench.heads.baselines.base import BASELINES, BaselineContext, PairBaseline
from vea_bench.metrics import split_metrics
from vea_bench.results import PRED_SPLITS, RunOutput, SplitPredictions


def oracle_predictions(y: np.ndarray, teacher_pred: np.ndarray, vlm_onehot: np.ndarray) -> np.ndarray:
    """Right whenever the teacher or the VLM is right; otherwise the teacher's (wrong) answer."""
    vlm_ok = (vlm_onehot.sum(1) > 0) & (vlm_onehot.argmax(1) == y)
    return np.where((teacher_pred == y) | vlm_ok, y, teacher_pred)


@BASELINES.register("oracle")
class Oracle(PairBaseline):
    """Reads the VLM's one-hot answers whatever ``vlm_input`` the call uses."""

    def run(self, ctx: BaselineContext) -> list[RunOutput]:
        t0 = time.perf_counter()
        d = ctx.onehots()
        names = ctx.cache.label_names
        mets = {s: split_metrics(sa.y, oracle_predictions(sa.y, sa.teacher.argmax(1), sa.vlm), names)
                for s, sa in d.splits.items()}
        cfg = {"teacher": d.sources["teacher"], "vlm": d.sources["vlm"], "rule": "teacher or vlm right"}
        preds = {s: SplitPredictions(sa.rows, sa.y, oracle_predictions(sa.y, sa.teacher.argmax(1), sa.vlm))
                 for s, sa in d.splits.items() if s in PRED_SPLITS}
        return [ctx.output("baseline", "oracle", cfg, mets, t0=t0, predictions=preds)]
