"""Which records fill a table cell: a results folder's records, row selectors and seed aggregation.

Rows are data: a `Select` over a record's typed fields picks the runs a row shows; `latest_group`
keeps the experiment with the newest record, one run per seed; `aggregate` gives the mean and the
sample standard deviation over those seeds (conventions in `vea_bench.report.tables`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from vea_bench.errors import ConfigError
from vea_bench.report.paper import PAPER_DATASETS, label_space_for, paper_setting
from vea_bench.results import RunRecord

STD_DDOF = 1  # sample standard deviation over seeds


@dataclass
class Results:
    """The records of a results folder and the files skipped (each with why)."""

    root: Path
    records: list[RunRecord]
    paths: dict[str, Path]
    skipped: list[tuple[Path, str]]



# ============================================================================ aggregation

def _created(rec: RunRecord) -> tuple[float, str]:
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(rec.created_at, fmt).timestamp(), rec.run_id
        except (TypeError, ValueError):
            continue
    return 0.0, rec.run_id


@dataclass
class Aggregate:
    """Mean and spread of one metric over the seeds of one experiment (fractions)."""

    mean: float
    std: float | None
    n: int
    values: list[float]
    run_ids: list[str]


def metric_of(rec: RunRecord, split: str, metric: str = "accuracy") -> float | None:
    """A split's metric from a record, None when absent or not a number."""
    m = rec.metrics.get(split) if isinstance(rec.metrics, dict) else None
    v = m.get(metric) if isinstance(m, dict) else None
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    return None


def latest_group(records: Sequence[RunRecord]) -> list[RunRecord]:
    """The experiment (``experiment_id``) with the newest record, one record per seed (its latest rerun)."""
    if not records:
        return []
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.experiment_id, []).append(r)
    best = max(groups.values(), key=lambda g: max(_created(r) for r in g))
    per_seed: dict[Any, RunRecord] = {}
    for r in sorted(best, key=_created):
        per_seed[r.seed] = r
    return sorted(per_seed.values(), key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))


def aggregate(records: Sequence[RunRecord], split: str = "test", metric: str = "accuracy") -> Aggregate | None:
    """Mean ± sample std (ddof=1) of ``metric`` over the seeds of the latest experiment."""
    usable = [r for r in records if metric_of(r, split, metric) is not None]
    chosen = latest_group(usable)
    if not chosen:
        return None
    vals = [metric_of(r, split, metric) for r in chosen]
    arr = np.asarray(vals, dtype=np.float64)
    std = float(np.std(arr, ddof=STD_DDOF)) if arr.size >= 2 else None
    return Aggregate(mean=float(arr.mean()), std=std, n=int(arr.size), values=[float(v) for v in arr],
                     run_ids=[r.run_id for r in chosen])


def _at_paper_alpha(r: RunRecord) -> bool:
    """Trained at the paper's alpha, or a record without one (nothing to prefer)."""
    a = r.config.get("alpha") if isinstance(r.config, dict) else None
    return a is None or (isinstance(a, (int, float)) and abs(float(a) - paper_setting()["alpha"]) < 1e-9)


# ============================================================================ rows as data

@dataclass(frozen=True)
class Select:
    """Which records a row shows: this ``kind``, and ``method`` / ``variant`` / config values where given.

    ``config`` holds (key, value) pairs a record's config must equal; a record lacking the key does
    not match (tables never assume a default). ``paper_alpha`` prefers, per cell, the records
    trained at the paper's alpha when any are present. ``dims`` matches ``config["hidden_dims"]``.
    """

    kind: str
    method: str | None = None
    variant: str | None = None
    config: tuple[tuple[str, Any], ...] = ()
    dims: tuple[int, ...] | None = None
    paper_alpha: bool = False

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Select:
        """A selector from table data (``{"kind": ..., "variant": ..., "config": {...}}``)."""
        return cls(kind=spec["kind"], method=spec.get("method"), variant=spec.get("variant"),
                   config=tuple(sorted((spec.get("config") or {}).items())),
                   dims=tuple(spec["dims"]) if spec.get("dims") is not None else None,
                   paper_alpha=bool(spec.get("paper_alpha", False)))

    def matches(self, r: RunRecord) -> bool:
        cfg = r.config if isinstance(r.config, dict) else {}
        return (r.kind == self.kind and (self.method is None or r.method == self.method)
                and (self.variant is None or r.variant == self.variant)
                and all(k in cfg and cfg[k] == v for k, v in self.config)
                and (self.dims is None or _hidden_dims(r) == self.dims))

    def pick(self, records: Iterable[RunRecord], dataset: str | None = None) -> list[RunRecord]:
        """The matching records (of ``dataset`` when given), paper-alpha ones first if asked."""
        sel = [r for r in records if self.matches(r) and (dataset is None or r.dataset == dataset)]
        if self.paper_alpha:
            sel = [r for r in sel if _at_paper_alpha(r)] or sel
        return sel


def _hidden_dims(r: RunRecord) -> tuple[int, ...] | None:
    dims = r.config.get("hidden_dims") if isinstance(r.config, dict) else None
    return tuple(int(d) for d in dims) if isinstance(dims, list) else None


def paper_gate_setting() -> tuple[tuple[str, Any], ...]:
    """The config values of the paper's gates (Table 4): the VLM's one-hot answer, fitted on train."""
    s = paper_setting()
    return (("gate_fit", s["gate_fit"]), ("vlm_input", s["vlm_input"]))


def emovlm_kd() -> Select:
    """The paper's EmoVLM-KD: its gate in its setting, paper-alpha runs preferred."""
    return Select(kind="gate", variant=paper_setting()["gate"], config=paper_gate_setting(), paper_alpha=True)


def paper_distill(dims: Sequence[int] | None = None) -> Select:
    """The paper's distill head (optionally of these hidden dims), paper-alpha runs preferred."""
    return Select(kind="distill", variant=paper_setting()["distill_head"],
                  dims=tuple(dims) if dims is not None else None, paper_alpha=True)


# Selectors the paper data names by string (its rows' ``"select": "emovlm-kd"``).
NAMED_SELECTS: dict[str, Callable[[], Select]] = {"emovlm-kd": emovlm_kd}


def datasets_in(results: Results) -> list[str]:
    """The paper's five datasets, then any other dataset found in the records."""
    extra = sorted({r.dataset for r in results.records} - set(PAPER_DATASETS))
    return list(PAPER_DATASETS) + extra


def num_classes_for(results: Results, dataset: str) -> int:
    """Class count of a dataset: from its records' label names, else its registered label space."""
    for r in results.records:
        if r.dataset == dataset and r.label_names:
            return len(r.label_names)
    space = label_space_for(dataset)
    if space is None:
        raise ConfigError(f"dataset '{dataset}': no record carries its label names, so its class count is unknown")
    return space.num_classes


def _params_of(records: Sequence[RunRecord]) -> int | None:
    """The parameter count the chosen records stored (the seeds of one experiment share it)."""
    counts = {r.params for r in latest_group(list(records)) if r.params is not None}
    return counts.pop() if len(counts) == 1 else None


def _gate_params(name: str, num_classes: int) -> int:
    """Parameters of a registered gate over C classes, built for real (for rows without a record)."""
    from vea_bench.heads.distill import count_params
    from vea_bench.heads.gates import build_gate

    return count_params(build_gate(name, num_classes))
