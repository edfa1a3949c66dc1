"""The paper's Figure 1: images only the teacher gets right, only the VLM, both, neither."""
from __future__ import annotations

import time

import numpy as np

from vea_bench.heads.baselines.base import BASELINES, BaselineContext, PairBaseline
from vea_bench.results import RunOutput, SplitMetrics


def complementarity_counts(y: np.ndarray, teacher_pred: np.ndarray, vlm_onehot: np.ndarray) -> dict[str, int]:
    """Figure 1: images only the teacher gets right, only the VLM, both, neither (unparsed = wrong)."""
    vlm_ok = (vlm_onehot.sum(1) > 0) & (vlm_onehot.argmax(1) == y)
    t_ok = teacher_pred == y
    return {"teacher_only": int((t_ok & ~vlm_ok).sum()), "vlm_only": int((~t_ok & vlm_ok).sum()),
            "both": int((t_ok & vlm_ok).sum()), "neither": int((~t_ok & ~vlm_ok).sum())}


@BASELINES.register("complementarity")
class Complementarity(PairBaseline):
    """A "complementarity" record: the counts in ``metrics[split]["extra"]``, accuracy the oracle's."""

    def run(self, ctx: BaselineContext) -> list[RunOutput]:
        t0 = time.perf_counter()
        d = ctx.onehots()
        mets = {}
        for s, sa in d.splits.items():
            counts = complementarity_counts(sa.y, sa.teacher.argmax(1), sa.vlm)
            n = max(1, len(sa))
            mets[s] = SplitMetrics(accuracy=(n - counts["neither"]) / n if len(sa) else float("nan"), n=len(sa),
                                   extra=dict(counts))
        cfg = {"teacher": d.sources["teacher"], "vlm": d.sources["vlm"]}
        return [ctx.output("complementarity", "complementarity", cfg, mets, t0=t0)]
