"""Cheap baselines from the cache: each source alone, linear probes, the costly ensemble, the oracle.

They bound EmoVLM-KD from both sides: the VLM alone and the teacher alone are what the gate must
beat; the VLM + teacher ensemble is the run-both alternative the paper avoids; the oracle (right
when either source is right) is the ceiling of any fusion of the two; the complementarity counts
are the paper's Figure 1.

Each baseline is one `Baseline` subclass in one module of this package, registered in `BASELINES`
(`vea_bench.registry`); `run_baselines` runs the ones asked for that the cache's sources allow and
returns their unsaved `RunOutput` (record and per-image predictions) for a `ResultsStore` to
write. A baseline of your own is one file (docs/extending.md), or an entry point under
``vea_bench.baselines`` in your own package.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from vea_bench.cache.store import FeatureCache
from vea_bench.errors import CacheError
from vea_bench.heads.baselines.base import BASELINES, Baseline, BaselineContext, BaselineSkipped, PairBaseline

# The built-in baselines, one module each, registered on import in the order they run and are listed.
from vea_bench.heads.baselines.vlm import VlmAlone  # noqa: I001
from vea_bench.heads.baselines.teacher import TeacherAlone
from vea_bench.heads.baselines.distill import SavedDistill
from vea_bench.heads.baselines.probes import LinearProbes, fit_linear_probe, probe_logits
from vea_bench.heads.baselines.ensemble import ENSEMBLE_GRID, Ensemble, ensemble_scores, pick_ensemble_weight
from vea_bench.heads.baselines.oracle import Oracle, oracle_predictions
from vea_bench.heads.baselines.complementarity import Complementarity, complementarity_counts
from vea_bench.heads.data import HeadData
from vea_bench.progress import Progress, ensure
from vea_bench.results import RunOutput

log = logging.getLogger(__name__)


def run_baselines(
    cache: FeatureCache,
    *,
    only: Sequence[str] | None = None,
    vlm: str | None = None,
    teacher: str | None = None,
    visual: str | None = None,
    backbones: Sequence[str] | None = None,
    vlm_input: str = "onehot",
    distill: Any | None = None,
    distill_data: HeadData | None = None,
    probe_l2: float = 1e-4,
    probe_iters: int = 100,
    device: str = "cpu",
    progress: Progress | None = None,
) -> tuple[list[RunOutput], list[str]]:
    """All baselines ``only`` names (default: every registered one) that the cache's sources allow.

    Returns their unsaved outputs and what was skipped, with why. A key the user named that does
    not exist is a one-line error; so is a call where no baseline can run. ``distill`` is a
    `HeadResult` of a saved distill head (see `load_distill_run`).
    """
    want = [BASELINES.canonical(w) for w in only] if only else BASELINES.names()
    ctx = BaselineContext(cache, vlm=vlm, teacher=teacher, visual=visual, backbones=backbones, vlm_input=vlm_input,
                          distill=distill, distill_data=distill_data, probe_l2=probe_l2, probe_iters=probe_iters,
                          device=device)
    kinds = {w: BASELINES.get(w) for w in want}
    if not any(ctx.feasible(b) for b in kinds.values()):
        raise CacheError(f"{cache.path}: no baseline could run: {', '.join(want)} need sources the cache lacks "
                         f"(has: {', '.join(s.name for s in cache.sources()) or 'none'})")
    if any(b.pair for b in kinds.values()) and ctx.has("vlm") and ctx.has("teacher"):
        ctx.pair = ctx.load("teacher", "vlm", vlm_input=vlm_input)
    progress = ensure(progress)
    progress.start("baselines", total=len(want))
    outputs: list[RunOutput] = []
    skipped: list[str] = []
    for name, kind in kinds.items():
        if not ctx.feasible(kind):
            skipped.append(f"{name}: {kind.missing or 'needs ' + ', '.join(kind.needs)}")
        else:
            try:
                outputs.extend(kind().run(ctx))
            except BaselineSkipped as why:
                skipped.append(f"{name}: {why}")
        progress.advance(1, baseline=name)
    progress.finish()
    if not outputs:
        raise CacheError(f"{cache.path}: no baseline could run ({'; '.join(skipped)})")
    for s in skipped:
        log.info("skipped %s", s)
    return outputs, skipped


__all__ = ["BASELINES", "ENSEMBLE_GRID", "Baseline", "BaselineContext", "BaselineSkipped", "Complementarity",
           "Ensemble", "LinearProbes", "Oracle", "PairBaseline", "SavedDistill", "TeacherAlone", "VlmAlone",
           "complementarity_counts", "ensemble_scores", "fit_linear_probe", "oracle_predictions",
           "pick_ensemble_weight", "probe_logits", "run_baselines"]
