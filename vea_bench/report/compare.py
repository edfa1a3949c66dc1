"""Paired comparisons between runs (or seed groups) and the significance marks of the tables.

`compare` answers "is A better than B?" from the per-image test predictions both runs stored
(`vea_bench.results.predictions`): on one run each, the paired-bootstrap interval of the difference
and McNemar's exact p; on seed groups, the mean seed-paired difference with its t interval (and
each seed's paired comparison). Two runs are paired only on the same test images: the same
dataset, the same test manifest hash and the same cache rows, else a one-line error.

`annotate_tables` adds to rendered tables what a reviewer asks for: each cell's bootstrap interval
(a cell's latest run; over seeds the t interval of the mean is shown instead) and, per column, the
best row and the rows not significantly different from it after Holm's correction over that
column's comparisons (McNemar on the latest run of each row, or a paired t-test over seeds when
both rows have two or more seeds in common).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vea_bench.errors import ConfigError
from vea_bench.report import stats as S
from vea_bench.report.selection import Results, _created, latest_group
from vea_bench.results import RunRecord, SplitPredictions, load_for

ALPHA = 0.05
DEFAULT_CI_METHOD = "percentile"


def resolve(results: Results, spec: str) -> list[RunRecord]:
    """A run (exact id or unique prefix) or a group (records sharing ``group``, one config, latest per seed)."""
    recs = results.records
    hit = [r for r in recs if r.run_id == spec] or [r for r in recs if r.run_id.startswith(spec)]
    if len(hit) == 1:
        return hit
    group = [r for r in recs if r.group == spec]
    if group:
        sigs = {r.experiment_id for r in group}
        if len(sigs) > 1:
            raise ConfigError(f"group '{spec}' holds {len(sigs)} configurations (a sweep); name one run id "
                              f"(see `vea-bench results list`)")
        return latest_group(group)
    if len(hit) > 1:
        raise ConfigError(f"'{spec}' matches {len(hit)} runs under {results.root}; give more of the run id")
    raise ConfigError(f"no run or group '{spec}' under {results.root} (see `vea-bench results list`)")


def predictions_of(results: Results, rec: RunRecord, split: str = "test") -> SplitPredictions:
    p = load_for(rec, results.root, split)
    if p is None:
        raise ConfigError(f"run {rec.run_id} stored no per-image {split} predictions (a run made before they "
                          f"were recorded, or not from the cache); rerun it")
    return p


def align(a: RunRecord, pa: SplitPredictions, b: RunRecord, pb: SplitPredictions,
          split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, pred_a, pred_b)`` on the shared test images; a mismatch of images is a one-line error."""
    ma = ((a.cache or {}).get("manifest_hashes") or {}).get(split)
    mb = ((b.cache or {}).get("manifest_hashes") or {}).get(split)
    if a.dataset != b.dataset or ma != mb:
        raise ConfigError(f"{a.run_id} and {b.run_id} were not tested on the same images "
                          f"({a.dataset} {split} manifest {str(ma)[:12]} vs {b.dataset} {str(mb)[:12]})")
    if not np.array_equal(np.sort(pa.rows), np.sort(pb.rows)):
        raise ConfigError(f"{a.run_id} and {b.run_id} differ in their {split} rows ({len(pa)} vs {len(pb)} images; "
                          f"one dropped rows a source failed on); they cannot be paired")
    oa, ob = np.argsort(pa.rows, kind="stable"), np.argsort(pb.rows, kind="stable")
    if not np.array_equal(pa.y[oa], pb.y[ob]):
        raise ConfigError(f"{a.run_id} and {b.run_id} disagree on the labels of the same rows; not one test split")
    return pa.y[oa], pa.pred[oa], pb.pred[ob]


@dataclass
class PairResult:
    """One run against another on the same images (differences are fractions, A - B)."""

    run_a: str
    run_b: str
    n: int
    acc_a: S.Interval
    acc_b: S.Interval
    diff: S.Interval
    f1_diff: S.Interval
    mcnemar: S.McNemar
    seed: int | None = None


@dataclass
class Comparison:
    """``a`` vs ``b``: the per-pair results and, over two or more seed pairs, the seed-level difference."""

    label_a: str
    label_b: str
    pairs: list[PairResult]
    seeds: S.SeedDifference | None = None
    method: str = DEFAULT_CI_METHOD
    n_resamples: int = S.N_RESAMPLES
    boot_seed: int = S.DEFAULT_SEED
    notes: list[str] = field(default_factory=list)


def compare_pair(results: Results, a: RunRecord, b: RunRecord, *, method: str = DEFAULT_CI_METHOD,
                 seed: int = S.DEFAULT_SEED, n_resamples: int = S.N_RESAMPLES) -> PairResult:
    y, pa, pb = align(a, predictions_of(results, a), b, predictions_of(results, b))
    kw: dict[str, Any] = {"method": method, "seed": seed, "n_resamples": n_resamples}
    return PairResult(
        run_a=a.run_id, run_b=b.run_id, n=int(y.size),
        acc_a=S.bootstrap_ci(y, pa, **kw), acc_b=S.bootstrap_ci(y, pb, **kw),
        diff=S.paired_bootstrap(y, pa, pb, **kw), f1_diff=S.paired_bootstrap(y, pa, pb, "macro_f1", **kw),
        mcnemar=S.mcnemar_exact(pa == y, pb == y), seed=_pair_seed(a.seed, b.seed))


def _pair_seed(a: int | None, b: int | None) -> int | None:
    """The seed a pair stands for: the shared one, or the seeded side's when the other is deterministic."""
    if a == b or b is None:
        return a
    return b if a is None else None


def _pairs(ra: list[RunRecord], rb: list[RunRecord]) -> list[tuple[RunRecord, RunRecord]]:
    """Seed-matched pairs; a single (deterministic) run on one side pairs with each run of the other."""
    if len(ra) == 1 and len(rb) == 1:
        return [(ra[0], rb[0])]
    if len(ra) == 1:
        return [(ra[0], r) for r in rb]
    if len(rb) == 1:
        return [(r, rb[0]) for r in ra]
    bs = {r.seed: r for r in rb}
    out = [(r, bs[r.seed]) for r in ra if r.seed in bs]
    if not out:
        raise ConfigError("the two groups share no seed; compare single runs instead")
    return out


def compare(results: Results, spec_a: str, spec_b: str, *, method: str = DEFAULT_CI_METHOD,
            seed: int = S.DEFAULT_SEED, n_resamples: int = S.N_RESAMPLES) -> Comparison:
    """Compare two runs or groups (see the module docstring); ``method`` is 'percentile' or 'BCa'."""
    S._check_method(method)
    if n_resamples < 100:
        raise ConfigError(f"--resamples must be at least 100, got {n_resamples}")
    ra, rb = resolve(results, spec_a), resolve(results, spec_b)
    return compare_records(results, ra, rb, _label(spec_a, ra), _label(spec_b, rb), method=method, seed=seed,
                           n_resamples=n_resamples)


def compare_records(results: Results, ra: list[RunRecord], rb: list[RunRecord], label_a: str, label_b: str, *,
                    method: str = DEFAULT_CI_METHOD, seed: int = S.DEFAULT_SEED,
                    n_resamples: int = S.N_RESAMPLES) -> Comparison:
    """`compare` on already chosen runs (one or several seeds per side)."""
    pairs = [compare_pair(results, a, b, method=method, seed=seed, n_resamples=n_resamples) for a, b in _pairs(ra, rb)]
    cmp = Comparison(label_a, label_b, pairs, method=method, n_resamples=n_resamples, boot_seed=seed)
    if len(pairs) >= 2:
        cmp.seeds = S.seed_difference([p.acc_a.estimate for p in pairs], [p.acc_b.estimate for p in pairs])
    if len(ra) > 1 and len(rb) > 1 and len(pairs) < min(len(ra), len(rb)):
        cmp.notes.append(f"only {len(pairs)} seed(s) in common")
    return cmp


def _label(spec: str, recs: list[RunRecord]) -> str:
    r = recs[0]
    what = f"{r.kind} {r.method} on {r.dataset}"
    return f"{spec} ({what}, {len(recs)} run{'s' if len(recs) > 1 else ''})"


def _pp(x: float) -> str:
    return f"{x * 100:+.2f}"


def format_comparison(c: Comparison) -> list[str]:
    """Plain lines for the terminal (percentage points; A - B)."""
    lines = [f"A = {c.label_a}", f"B = {c.label_b}"]
    how = f"95% paired bootstrap ({c.method}, {c.n_resamples} resamples, seed {c.boot_seed})"
    for p in c.pairs:
        tag = f"seed {p.seed}: " if len(c.pairs) > 1 and p.seed is not None else ""
        if len(c.pairs) > 1 and p.seed is None:
            tag = f"{p.run_a[-6:]} vs {p.run_b[-6:]}: "
        lines.append(f"{tag}accuracy A {p.acc_a.estimate * 100:.2f} [{p.acc_a.low * 100:.2f}, {p.acc_a.high * 100:.2f}]"
                     f"  B {p.acc_b.estimate * 100:.2f} [{p.acc_b.low * 100:.2f}, {p.acc_b.high * 100:.2f}]  (n = {p.n})")
        lines.append(f"{tag}difference A - B: {_pp(p.diff.estimate)} pp, {how} [{_pp(p.diff.low)}, {_pp(p.diff.high)}]; "
                     f"McNemar exact p = {p.mcnemar.p:.4g} (only A right {p.mcnemar.b}, only B right {p.mcnemar.c})")
        lines.append(f"{tag}macro-F1 difference A - B: {_pp(p.f1_diff.estimate)} pp [{_pp(p.f1_diff.low)}, "
                     f"{_pp(p.f1_diff.high)}]")
    if c.seeds is not None:
        s = c.seeds
        lines.append(f"across {s.k} seed pairs: mean difference {_pp(s.mean)} pp, 95% t interval "
                     f"[{_pp(s.low)}, {_pp(s.high)}], paired t-test p = {s.p:.4g}" if s.low is not None and s.p is not None
                     else f"across {s.k} seed pairs: mean difference {_pp(s.mean)} pp")
    lines += c.notes
    return lines


# ----------------------------------------------------------------------------- table marks

@dataclass
class _CellRuns:
    row: int
    value: float
    recs: list[RunRecord]


def _records_by_id(results: Results) -> dict[str, RunRecord]:
    return {r.run_id: r for r in results.records}


def _cell_p(results: Results, best: _CellRuns, other: _CellRuns) -> float | None:
    """p of 'other differs from best': paired t over >= 2 common seeds, else McNemar on latest runs."""
    sb = {r.seed: r for r in best.recs if r.seed is not None}
    so = {r.seed: r for r in other.recs if r.seed is not None}
    common = sorted(set(sb) & set(so))
    if len(common) >= 2:
        from vea_bench.report.selection import metric_of

        d = S.seed_difference([metric_of(sb[k], "test") or 0.0 for k in common],
                              [metric_of(so[k], "test") or 0.0 for k in common])
        return d.p
    a = max(best.recs, key=_created)
    b = max(other.recs, key=_created)
    try:
        y, pa, pb = align(a, predictions_of(results, a), b, predictions_of(results, b))
    except ConfigError:
        return None
    return S.mcnemar_exact(pa == y, pb == y).p


def annotate_tables(tables: Sequence[Any], results: Results, *, ci: bool = True, marks: bool = True,
                    method: str = DEFAULT_CI_METHOD, seed: int = S.DEFAULT_SEED,
                    n_resamples: int = S.N_RESAMPLES, split: str = "test") -> list[str]:
    """Fill cells' ``ci`` and ``mark`` in place; returns notes (what could not be tested, and why)."""
    by_id = _records_by_id(results)
    notes: set[str] = set()
    for t in tables:
        for col in t.columns:
            if col.kind != "acc":
                continue
            cands: list[_CellRuns] = []
            for i, row in enumerate(t.rows):
                cell = row.cells.get(col.key)
                if cell is None or cell.reported or not isinstance(cell.value, (int, float)) or not cell.run_ids:
                    continue
                recs = [by_id[r] for r in cell.run_ids if r in by_id]
                if not recs:
                    continue
                if ci:
                    cell.ci = _cell_ci(results, recs, method=method, seed=seed, n_resamples=n_resamples)
                    if cell.ci is None:
                        notes.add("no interval where a run stored no per-image predictions")
                cands.append(_CellRuns(i, float(cell.value), recs))
            if marks and len(cands) >= 2:
                best = max(cands, key=lambda c: c.value)
                others = [c for c in cands if c is not best]
                ps = [_cell_p(results, best, o) for o in others]
                tested = [(o, p) for o, p in zip(others, ps) if p is not None]
                adj = S.holm([p for _, p in tested]) if tested else []
                t.rows[best.row].cells[col.key].mark = "best"
                for (o, _), pa in zip(tested, adj):
                    if pa >= ALPHA:
                        t.rows[o.row].cells[col.key].mark = "tie"
                if len(tested) < len(others):
                    notes.add("rows without paired predictions are not tested against the best")
        if marks:
            t.notes.append("▲ best in its column; ≈ not significantly different from it (Holm-corrected "
                           f"p ≥ {ALPHA} over the column; McNemar exact on the latest runs, or a paired t-test "
                           "over seeds when both rows have two or more seeds in common).")
        if ci:
            t.notes.append(f"[lo, hi]: 95 % interval: bootstrap over test images ({method}, {n_resamples} "
                           "resamples) for one run; Student-t over seeds for a mean over seeds.")
    return sorted(notes)


def _cell_ci(results: Results, recs: list[RunRecord], *, method: str, seed: int,
             n_resamples: int) -> tuple[float, float] | None:
    """Percent interval: over seeds the t interval of the mean, for one run the bootstrap over images."""
    from vea_bench.report.selection import metric_of

    vals = [v for r in recs if (v := metric_of(r, "test")) is not None]
    if len(vals) >= 2:
        from scipy import stats as st

        a = np.asarray(vals)
        half = float(st.t.ppf(0.975, a.size - 1)) * float(a.std(ddof=1)) / math.sqrt(a.size)
        # Accuracy lives in [0, 100]: a t interval over few seeds can reach past either end.
        return (max(0.0, float(a.mean() - half) * 100), min(100.0, float(a.mean() + half) * 100))
    p = load_for(recs[0], results.root)
    if p is None:
        return None
    iv = S.bootstrap_ci(p.y, p.pred, method=method, seed=seed, n_resamples=n_resamples)
    return (iv.low * 100, iv.high * 100)

