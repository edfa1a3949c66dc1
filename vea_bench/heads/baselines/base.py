"""What a baseline is: the `Baseline` contract, its registry `BASELINES`, and the `BaselineContext` it reads."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from vea_bench.cache.store import FeatureCache
from vea_bench.errors import ConfigError
from vea_bench.heads.data import HeadData, load_head_data
from vea_bench.registry import Registry
from vea_bench.results import RunOutput, RunRecord, SplitMetrics, SplitPredictions

# The sources a baseline may need: the cache's source kinds, "distill" (a saved head passed in)
# and "features" (any visual or backbone source).
NEEDS = ("vlm", "teacher", "visual", "backbone", "features", "distill")


class BaselineSkipped(Exception):
    """Raised by `Baseline.run` when this cache cannot feed it; the message says why."""


class Baseline:
    """One baseline. ``needs`` lists the sources it reads (`NEEDS`); `run` returns its runs' outputs.

    A baseline whose ``needs`` the cache lacks is skipped with ``missing`` as the reason. Set
    ``pair = True`` when it reads ``ctx.pair`` (teacher and VLM on the same rows): the VLM-alone and
    teacher-alone baselines then read those same rows too, so every baseline of one call is scored
    on one set of images.
    """

    needs: ClassVar[tuple[str, ...]] = ()
    missing: ClassVar[str] = ""
    pair: ClassVar[bool] = False

    def run(self, ctx: BaselineContext) -> list[RunOutput]:
        raise NotImplementedError


class PairBaseline(Baseline):
    """A baseline over the teacher and the VLM on the same rows (`BaselineContext.paired`)."""

    needs = ("vlm", "teacher")
    missing = "needs both a vlm and a teacher source"
    pair = True


BASELINES: Registry[type[Baseline]] = Registry("baseline", plugins="vea_bench.baselines")


@dataclass
class BaselineContext:
    """What a baseline reads: the open cache, the chosen source keys, options, and shared data."""

    cache: FeatureCache
    vlm: str | None = None
    teacher: str | None = None
    visual: str | None = None
    backbones: Sequence[str] | None = None
    vlm_input: str = "onehot"
    distill: Any | None = None
    distill_data: HeadData | None = None
    probe_l2: float = 1e-4
    probe_iters: int = 100
    device: str = "cpu"
    pair: HeadData | None = None
    _onehots: HeadData | None = field(default=None, repr=False)

    def has(self, need: str) -> bool:
        """Whether this call can feed ``need`` (a source kind, "features" or "distill")."""
        if need not in NEEDS:
            raise ConfigError(f"a baseline needs '{need}', which is not a source (choices: {', '.join(NEEDS)})")
        if need == "distill":
            return self.distill is not None
        if need == "features":
            return self.has("visual") or self.has("backbone")
        named = {"vlm": self.vlm, "teacher": self.teacher, "visual": self.visual}.get(need)
        return bool(self.cache.source_keys(need)) or named is not None

    def feasible(self, baseline: type[Baseline]) -> bool:
        return all(self.has(n) for n in baseline.needs)

    def load(self, *need: str, vlm_input: str = "onehot") -> HeadData:
        """The cache's ``need`` sources (the chosen keys) for every split."""
        return load_head_data(self.cache, vlm=self.vlm, teacher=self.teacher, need=need, vlm_input=vlm_input)

    def paired(self) -> HeadData:
        """Teacher logits and the VLM's answers (as ``vlm_input`` asks) on the same rows."""
        if self.pair is None:
            raise BaselineSkipped(PairBaseline.missing)
        return self.pair

    def onehots(self) -> HeadData:
        """Teacher logits and the VLM's one-hot answers on the same rows (read once)."""
        self.paired()
        if self._onehots is None:
            self._onehots = self.load("teacher", "vlm")
        return self._onehots

    def output(self, kind: str, method: str, config: dict[str, Any], metrics: dict[str, SplitMetrics], *,
               t0: float, params: int | None = None,
               predictions: dict[str, SplitPredictions] | None = None) -> RunOutput:
        """A baseline's record (wall time from ``t0``) with its per-image predictions."""
        c = self.cache
        rec = RunRecord(kind=kind, method=method, dataset=c.dataset, config=config,
                        metrics={s: asdict(m) for s, m in metrics.items()}, params=params,
                        label_names=c.label_names, cache=c.provenance(), wall_time_s=time.perf_counter() - t0)
        return RunOutput(rec, dict(predictions or {}))
