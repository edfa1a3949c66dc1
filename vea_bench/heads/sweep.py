"""Sweeps over alpha, depth, gate and seed: grids from flags, members batched, one record each.

Every member is an ordinary run (same code path as `vea-bench train distill|gate`), checked by the
same validation before anything trains (a grid with one bad value is refused whole), and writes
an ordinary record; members of one sweep share the record's ``group``.
"""
from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError
from vea_bench.heads.config import apply_schedule
from vea_bench.heads.data import HeadData
from vea_bench.heads.gates import GATES
from vea_bench.heads.pipeline import (
    DistillConfig,
    GateConfig,
    HeadResult,
    distill_record,
    gate_inputs,
    gate_record,
    member_label,
    train_distill,
    train_gates,
    warn_convergence,
)
from vea_bench.progress import Progress
from vea_bench.results import RunRecord

SWEEP_KINDS = ("alpha", "depth", "gate", "seed")


def _decimal(tok: str, flag: str) -> Decimal:
    try:
        d = Decimal(tok.strip())
    except InvalidOperation:
        raise ConfigError(f"{flag}: '{tok.strip()}' is not a number") from None
    if not d.is_finite():
        raise ConfigError(f"{flag}: '{tok.strip()}' is not a finite number")
    return d


def parse_grid(text: str, cast: Callable[[Any], Any] = float, *, flag: str = "grid") -> list[Any]:
    """Values of a grid flag: comma-separated items, each a number or an inclusive ``start:stop:step``.

    Ranges are computed in decimal arithmetic, so ``0:1:0.1`` gives exactly 0.0, 0.1, ..., 1.0
    (11 values, no 0.30000000000000004). Duplicates are dropped, order kept.
    """
    if text is None or not str(text).strip():
        raise ConfigError(f"{flag}: empty grid")
    out: list[Any] = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            raise ConfigError(f"{flag}: empty item in '{text}'")
        if ":" in item:
            parts = item.split(":")
            if len(parts) != 3:
                raise ConfigError(f"{flag}: range '{item}' must be start:stop:step")
            start, stop, step = (_decimal(p, flag) for p in parts)
            if step <= 0:
                raise ConfigError(f"{flag}: step must be positive in '{item}'")
            if stop < start:
                raise ConfigError(f"{flag}: stop < start in '{item}'")
            count = int((stop - start) / step)
            vals = [start + k * step for k in range(count + 1)]
        else:
            vals = [_decimal(item, flag)]
        for v in vals:
            if cast is int:
                if v != v.to_integral_value():
                    raise ConfigError(f"{flag}: '{v}' is not an integer")
                val: Any = int(v)
            else:
                val = cast(float(v))
            if val not in out:
                out.append(val)
    return out


def parse_names(text: str, *, flag: str = "--gates") -> list[str]:
    """Comma-separated gate names, each resolved through the registry (did-you-mean on typos)."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise ConfigError(f"{flag}: empty list")
    out: list[str] = []
    for n in names:
        canon = GATES.canonical(n)
        if canon not in out:
            out.append(canon)
    return out


def new_group(kind: str) -> str:
    """The ``group`` tying the records one command wrote (a sweep's members, a gate and its head)."""
    prefix = f"sweep-{kind}" if kind in SWEEP_KINDS else kind
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass
class SweepPlan:
    """The members of a sweep: distill configs, and gate configs each over one distill config."""

    kind: str
    distill: list[DistillConfig]
    gates: list[tuple[GateConfig, int]]   # (gate config, index into distill)


def plan_sweep(
    kind: str,
    base_distill: DistillConfig,
    base_gate: GateConfig,
    *,
    seeds: Sequence[int] = (0,),
    alphas: Sequence[float] | None = None,
    depths: Sequence[int] | None = None,
    lrs: Sequence[float] | None = None,
    gates: Sequence[str] | None = None,
) -> SweepPlan:
    """The grid of ``kind``: alpha/depth sweep distill heads (x seeds x learning rates); gate and
    seed sweeps train one distill head per seed and gates on top of it."""
    if kind not in SWEEP_KINDS:
        raise ConfigError(f"unknown sweep '{kind}' (choices: {', '.join(SWEEP_KINDS)})")
    seeds = list(seeds)
    lr_list = list(lrs) if lrs else [base_distill.lr]
    swept = ("lr",) if lrs else ()
    if kind == "alpha":
        alist = list(alphas) if alphas else [round(0.1 * k, 10) for k in range(11)]
        d = [replace(base_distill, alpha=a, seed=s, lr=lr) for a, s, lr in itertools.product(alist, seeds, lr_list)]
        return _checked(SweepPlan(kind, d, []), ("alpha",) + swept)
    if kind == "depth":
        dlist = list(depths) if depths else [1, 2, 3, 4, 5]
        d = [replace(base_distill, depth=k, seed=s, lr=lr) for k, s, lr in itertools.product(dlist, seeds, lr_list)]
        return _checked(SweepPlan(kind, d, []), ("depth",) + swept)
    d = [replace(base_distill, seed=s) for s in seeds]
    glist = list(gates) if gates else ([base_gate.gate] if kind == "seed" else GATES.names())
    g = [(replace(base_gate, gate=name, seed=s), i) for name in glist for i, s in enumerate(seeds)]
    return _checked(SweepPlan(kind, d, g), ("gate",) if kind == "gate" else ())


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _checked(plan: SweepPlan, swept: tuple[str, ...]) -> SweepPlan:
    """``plan`` with every member validated (and scheduled) exactly as a single run of its stage is.

    The swept fields count as set by the user (the reference schedule refuses an ``lr`` grid, as
    it refuses ``--lr``). One bad value refuses the whole grid before anything trains, in one line
    naming each refused value and why.
    """
    refused: dict[str, str] = {}

    def check(cfg: Any, kind: str, fields: tuple[str, ...]) -> Any:
        try:
            return apply_schedule(cfg, kind, explicit={f: getattr(cfg, f) for f in fields + ("seed",)})
        except ConfigError as exc:
            what = ", ".join(f"{f} {_shown(getattr(cfg, f))}" for f in fields) or f"{kind} seed {cfg.seed}"
            refused.setdefault(what, str(exc))
            return cfg

    distill_fields = swept if plan.kind in ("alpha", "depth") else ()
    distill = [check(c, "distill", distill_fields) for c in plan.distill]
    gates = [(check(c, "gate", swept if plan.kind == "gate" else ()), i) for c, i in plan.gates]
    if refused:
        items = [f"{what} ({why})" for what, why in refused.items()]
        more = f" and {len(items) - 3} more" if len(items) > 3 else ""
        raise ConfigError(f"sweep {plan.kind} refused, nothing trained: {'; '.join(items[:3])}{more}")
    return SweepPlan(plan.kind, distill, gates)


def run_plan(
    plan: SweepPlan,
    data: HeadData,
    *,
    results_dir: str | Path,
    device: str | None = "cpu",
    progress: Progress | None = None,
    group: str | None = None,
    distill_results: Sequence[HeadResult] | None = None,
    distill_run: str | None = None,
) -> list[RunRecord]:
    """Train the plan's members (batched), write one record per member, return the records."""
    group = group or new_group(plan.kind)
    records: list[RunRecord] = []
    need_train = bool(plan.gates)  # gates are evaluated on every split, train included
    if distill_results is None:
        splits = list(data.splits) if need_train else data.eval_splits()
        distill_results = train_distill(data, plan.distill, eval_splits=splits, device=device, progress=progress)
        for r in distill_results:
            rec = distill_record(data, r, results_dir=results_dir, group=group, device=device)
            warn_convergence(f"{rec.run_id} ({member_label(r.config)})", r.convergence)
            records.append(rec)
    if not plan.gates:
        return records
    by_fit: dict[tuple[str, int], list[int]] = {}
    for j, (g, _) in enumerate(plan.gates):
        by_fit.setdefault((g.gate_fit, g.folds), []).append(j)
    gate_res: list[HeadResult | None] = [None] * len(plan.gates)
    for (fit, folds), js in by_fit.items():
        heads = sorted({plan.gates[j][1] for j in js})
        v1_list = gate_inputs(data, [distill_results[i] for i in heads], fit, folds, device=device, progress=progress)
        v1_of = dict(zip(heads, v1_list))
        cfgs = [plan.gates[j][0] for j in js]
        res = train_gates(data, cfgs, [v1_of[plan.gates[j][1]] for j in js], device=device, progress=progress,
                          tau=distill_results[0].config.tau)
        for j, r in zip(js, res):
            gate_res[j] = r
    for j, r in enumerate(gate_res):
        assert r is not None
        rec = gate_record(data, r, distill_results[plan.gates[j][1]], results_dir=results_dir, group=group,
                          distill_run=distill_run, device=device)
        warn_convergence(f"{rec.run_id} ({member_label(r.config)})", r.convergence)
        records.append(rec)
    return records
