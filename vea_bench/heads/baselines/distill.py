"""A saved distill head alone (``--distill RUN_ID``), re-scored on this cache."""
from __future__ import annotations

import time

from vea_bench.heads.baselines.base import BASELINES, Baseline, BaselineContext, BaselineSkipped
from vea_bench.results import PRED_SPLITS, RunOutput, SplitMetrics, from_scores


@BASELINES.register("distill")
class SavedDistill(Baseline):
    """Table 2's distill-only row from a head trained earlier (`load_distill_run` gives it)."""

    needs = ("distill",)
    missing = "pass --distill RUN_ID to evaluate a saved distill head"

    def run(self, ctx: BaselineContext) -> list[RunOutput]:
        t0 = time.perf_counter()
        head, data = ctx.distill, ctx.distill_data
        if data is None:
            raise BaselineSkipped(self.missing)
        mets = {s: SplitMetrics(**m) for s, m in head.metrics.items()}
        cfg = {**head.config.to_dict(), "distill_run": head.extra.get("run_id"), "visual": data.sources.get("visual")}
        preds = {s: from_scores(sa.y, head.logits[s], sa.rows, logits=True) for s, sa in data.splits.items()
                 if s in PRED_SPLITS and head.logits.get(s) is not None}
        return [ctx.output("baseline", "distill", cfg, mets, t0=t0, params=head.params, predictions=preds)]
