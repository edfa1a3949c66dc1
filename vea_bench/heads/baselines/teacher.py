"""The teacher alone: the conventional model's logits from the cache, scored as they are."""
from __future__ import annotations

import time

from vea_bench.heads.baselines.base import BASELINES, Baseline, BaselineContext
from vea_bench.metrics import split_metrics
from vea_bench.results import PRED_SPLITS, RunOutput, from_scores


@BASELINES.register("teacher")
class TeacherAlone(Baseline):
    """What the gate must beat on the conventional side (its KL to itself is 0 by construction)."""

    needs = ("teacher",)
    missing = "no teacher source"

    def run(self, ctx: BaselineContext) -> list[RunOutput]:
        t0 = time.perf_counter()
        d = ctx.pair if ctx.pair is not None else ctx.load("teacher")
        names = ctx.cache.label_names
        mets = {s: split_metrics(sa.y, sa.teacher, names, teacher_logits=sa.teacher) for s, sa in d.splits.items()}
        preds = {s: from_scores(sa.y, sa.teacher, sa.rows, logits=True) for s, sa in d.splits.items()
                 if s in PRED_SPLITS}
        return [ctx.output("baseline", "teacher", {"source": d.sources["teacher"]}, mets, t0=t0, predictions=preds)]
