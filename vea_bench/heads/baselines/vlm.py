"""The VLM alone: Table 1's zero-shot / instruction-tuned row and Table 2's row (1)."""
from __future__ import annotations

import time

from vea_bench.heads.baselines.base import BASELINES, Baseline, BaselineContext
from vea_bench.metrics import split_metrics
from vea_bench.results import PRED_SPLITS, RunOutput, from_scores


@BASELINES.register("vlm")
class VlmAlone(Baseline):
    """The VLM's parsed answers scored as they are: a "vlm-eval" record, tuned when its source was
    extracted with a LoRA adapter."""

    needs = ("vlm",)
    missing = "no vlm source"

    def run(self, ctx: BaselineContext) -> list[RunOutput]:
        t0 = time.perf_counter()
        # the pair's rows where the call reads one with one-hot answers, so its baselines score the same images
        d = ctx.pair if ctx.pair is not None and ctx.vlm_input == "onehot" else ctx.load("vlm")
        src = d.sources["vlm"]
        names = ctx.cache.label_names
        mets = {s: split_metrics(sa.y, sa.vlm, names) for s, sa in d.splits.items()}
        vprov = ctx.cache.source("vlm", src.split("/", 1)[-1]).provenance
        cfg = {"source": src, "input": "onehot", "tuned": bool(vprov.get("adapter")),
               "backend": vprov.get("backend"), "model": vprov.get("model")}
        preds = {s: from_scores(sa.y, sa.vlm, sa.rows, logits=False) for s, sa in d.splits.items() if s in PRED_SPLITS}
        return [ctx.output("vlm-eval", "VLM", cfg, mets, t0=t0, predictions=preds)]
