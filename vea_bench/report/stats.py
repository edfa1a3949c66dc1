"""Statistics a reviewer accepts: intervals, paired tests, multiple-comparison control, calibration.

Everything here works on per-image predictions (`vea_bench.results.predictions`):

- `bootstrap_ci`: a 95 % interval for accuracy or macro-F1, resampling test images
  (`scipy.stats.bootstrap`, percentile by default or BCa, seeded).
- `paired_bootstrap`: the interval of the difference between two runs on the *same* test images,
  resampling images jointly (the pairing removes the between-image variance both runs share).
- `mcnemar_exact`: McNemar's exact test. Only discordant images (one run right, the other wrong)
  carry information; under H0 each is equally likely either way, so with ``b`` images only run A
  gets right and ``c`` only B, ``p = P(|Binomial(b + c, 1/2) - (b+c)/2| >= |b - (b+c)/2|)``
  (`scipy.stats.binomtest`, two-sided); no discordant images gives p = 1.
- `seed_difference`: across seeds, the mean paired difference with its Student-t interval and the
  one-sample t-test p (the seed-to-seed spread is the training noise a single run hides).
- `holm`: Holm's step-down adjustment (few lines; statsmodels is not a dependency for this alone).
- `calibration`: expected calibration error (equal-width confidence bins, weighted by count) and
  the reliability-diagram bins.
- `accuracy_by`: accuracy per group (class, attribute value) with counts;
  `distribution_metrics`: Emotion6's vote-distribution-aware KL, top-k and Spearman.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vea_bench.errors import ConfigError

CONFIDENCE = 0.95
N_RESAMPLES = 2000
DEFAULT_SEED = 0
CI_METHODS = ("BCa", "percentile")
# Percentile by default: BCa's jackknife evaluates the statistic once per image (O(n^2) work), which
# takes tens of seconds on a 20k-image test split; its correction matters little at these sizes.
DEFAULT_METHOD = "percentile"
METRICS = ("accuracy", "macro_f1")
ECE_BINS = 15
_BATCH_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval at ``confidence``."""

    estimate: float
    low: float
    high: float
    confidence: float = CONFIDENCE
    method: str = DEFAULT_METHOD

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high


# ----------------------------------------------------------------------------- metrics on (y, pred)

def _accuracy(y: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(y == pred, axis=axis)


def _macro_f1(y: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
    """Macro-F1 over classes present in truth or prediction, vectorised over leading axes.

    Matches the records' macro-F1 (`vea_bench.metrics.split_metrics`), which builds the confusion
    matrix from answered rows only: an unanswered prediction (-1) counts in no class.
    """
    y = np.moveaxis(np.asarray(y), axis, -1)
    pred = np.moveaxis(np.asarray(pred), axis, -1)
    classes = np.unique(np.concatenate([np.unique(y), np.unique(pred)]))
    classes = classes[classes >= 0]
    total = np.zeros(y.shape[:-1])
    present = np.zeros(y.shape[:-1])
    answered = pred >= 0
    for c in classes:
        t, p = (y == c) & answered, pred == c
        tp = np.sum(t & p, axis=-1)
        denom = np.sum(t, axis=-1) + np.sum(p, axis=-1)
        total += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        present += denom > 0
    return np.where(present > 0, total / np.maximum(present, 1), 0.0)


_METRIC_FNS: dict[str, Callable[..., np.ndarray]] = {"accuracy": _accuracy, "macro_f1": _macro_f1}


def metric_fn(metric: str) -> Callable[..., np.ndarray]:
    if metric not in _METRIC_FNS:
        raise ConfigError(f"unknown metric '{metric}' (choices: {', '.join(METRICS)})")
    return _METRIC_FNS[metric]


def _check_method(method: str) -> str:
    if method not in CI_METHODS:
        raise ConfigError(f"unknown interval method '{method}' (choices: {', '.join(CI_METHODS)})")
    return method


def _bootstrap(data: tuple[np.ndarray, ...], stat: Callable[..., np.ndarray], *, method: str, seed: int,
               n_resamples: int, confidence: float) -> Interval:
    import warnings

    from scipy import stats

    est = float(stat(*data, axis=-1))
    if data[0].shape[0] == 0:
        raise ConfigError("no test images to bootstrap over")
    # Resamples in batches of about 2M resampled images, so a 20k-image test split stays ~100 MB.
    batch = max(1, min(n_resamples, _BATCH_ELEMENTS // data[0].shape[0]))

    def run(how: str) -> tuple[float, float]:
        with warnings.catch_warnings():
            # A statistic constant over resamples (every image right) leaves BCa's acceleration
            # undefined; scipy warns and returns NaN, and the percentile interval is used instead.
            warnings.simplefilter("ignore", category=getattr(stats, "DegenerateDataWarning", RuntimeWarning))
            warnings.simplefilter("ignore", category=RuntimeWarning)
            res = stats.bootstrap(data, stat, paired=True, vectorized=True, n_resamples=n_resamples,
                                  confidence_level=confidence, method=how, rng=np.random.default_rng(seed),
                                  batch=batch)
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    lo, hi = run(method)
    used = method
    if not (math.isfinite(lo) and math.isfinite(hi)):
        (lo, hi), used = run("percentile"), "percentile"
    return Interval(est, min(lo, est), max(hi, est), confidence, used)


def bootstrap_ci(y: np.ndarray, pred: np.ndarray, metric: str = "accuracy", *, method: str = DEFAULT_METHOD,
                 seed: int = DEFAULT_SEED, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE) -> Interval:
    """A ``confidence`` interval for ``metric`` of predictions ``pred`` against ``y``, resampling images."""
    fn = metric_fn(metric)
    return _bootstrap((np.asarray(y), np.asarray(pred)), fn, method=_check_method(method), seed=seed,
                      n_resamples=n_resamples, confidence=confidence)


def paired_bootstrap(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, metric: str = "accuracy", *,
                     method: str = DEFAULT_METHOD, seed: int = DEFAULT_SEED, n_resamples: int = N_RESAMPLES,
                     confidence: float = CONFIDENCE) -> Interval:
    """The interval of ``metric(a) - metric(b)`` on the same images, resampled jointly."""
    fn = metric_fn(metric)

    def diff(yy: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return fn(yy, a, axis=axis) - fn(yy, b, axis=axis)

    y, a, b = np.asarray(y), np.asarray(pred_a), np.asarray(pred_b)
    if np.array_equal(a, b):
        return Interval(0.0, 0.0, 0.0, confidence, method)
    return _bootstrap((y, a, b), diff, method=_check_method(method), seed=seed, n_resamples=n_resamples,
                      confidence=confidence)


@dataclass(frozen=True)
class McNemar:
    """Discordant counts (``b``: only A right, ``c``: only B right) and the exact two-sided p."""

    b: int
    c: int
    p: float


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """McNemar's exact test on paired correctness vectors (see the module docstring)."""
    from scipy.stats import binomtest

    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape:
        raise ConfigError(f"McNemar needs paired predictions: {ca.shape[0]} vs {cb.shape[0]} images")
    b, c = int((ca & ~cb).sum()), int((~ca & cb).sum())
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return McNemar(b, c, min(1.0, p))


@dataclass(frozen=True)
class SeedDifference:
    """Across k seeds: the mean paired difference, its Student-t interval (k >= 2) and the t-test p."""

    mean: float
    low: float | None
    high: float | None
    p: float | None
    k: int
    diffs: list[float] = field(default_factory=list)


def seed_difference(values_a: Sequence[float], values_b: Sequence[float], *,
                    confidence: float = CONFIDENCE) -> SeedDifference:
    """Seed-paired differences ``a_i - b_i``: mean, t interval with k - 1 degrees of freedom, p."""
    from scipy import stats

    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ConfigError(f"seed differences need the same seeds on both sides ({a.size} vs {b.size})")
    d = a - b
    k = int(d.size)
    mean = float(d.mean())
    if k < 2:
        return SeedDifference(mean, None, None, None, k, d.tolist())
    sd = float(d.std(ddof=1))
    if sd == 0:
        return SeedDifference(mean, mean, mean, 1.0 if mean == 0 else 0.0, k, d.tolist())
    half = float(stats.t.ppf(0.5 + confidence / 2, k - 1)) * sd / math.sqrt(k)
    p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return SeedDifference(mean, mean - half, mean + half, p, k, d.tolist())


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


# ----------------------------------------------------------------------------- calibration

@dataclass(frozen=True)
class Calibration:
    """ECE and the reliability diagram's bins (mean confidence, accuracy and count per bin)."""

    ece: float
    edges: list[float]
    confidence: list[float | None]
    accuracy: list[float | None]
    count: list[int]


def calibration(prob: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> Calibration:
    """Top-label calibration: confidence = max probability, right when its class is ``y``.

    ECE = sum over equal-width bins of (bin count / N) * |accuracy - mean confidence|. An all-zero
    row (no answer) has confidence 0 and counts as wrong.
    """
    prob = np.asarray(prob, dtype=np.float64)
    y = np.asarray(y)
    if prob.ndim != 2 or prob.shape[0] != y.shape[0] or y.size == 0:
        raise ConfigError("calibration needs N x C probabilities and N labels (N > 0)")
    conf = prob.max(1)
    right = (prob.argmax(1) == y) & (conf > 0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    confs: list[float | None] = []
    accs: list[float | None] = []
    counts: list[int] = []
    for b in range(n_bins):
        m = idx == b
        k = int(m.sum())
        counts.append(k)
        if k:
            mc, ma = float(conf[m].mean()), float(right[m].mean())
            ece += k / y.size * abs(ma - mc)
            confs.append(mc)
            accs.append(ma)
        else:
            confs.append(None)
            accs.append(None)
    return Calibration(float(ece), edges.tolist(), confs, accs, counts)


# ----------------------------------------------------------------------------- groups

@dataclass(frozen=True)
class GroupAccuracy:
    value: str
    n: int
    accuracy: float


def accuracy_by(values: Sequence[Any], correct: np.ndarray) -> list[GroupAccuracy]:
    """Accuracy per distinct value (missing values skipped), largest groups first.

    A list value (EmoSet's objects in an image) puts the image in each of its groups.
    """
    correct = np.asarray(correct, dtype=bool)
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            if item is None or (isinstance(item, float) and math.isnan(item)):
                continue
            groups.setdefault(str(item), []).append(i)
    out = [GroupAccuracy(k, len(ix), float(correct[ix].mean())) for k, ix in groups.items()]
    return sorted(out, key=lambda g: (-g.n, g.value))


def bin_values(values: Sequence[float | None], edges: Sequence[float]) -> list[str | None]:
    """Continuous values (valence, arousal) as labelled bins ``[lo, hi)`` (the last closed; values
    outside the edges join the nearest end bin) for `accuracy_by`."""
    out: list[str | None] = []
    for v in values:
        if v is None or not math.isfinite(float(v)):
            out.append(None)
            continue
        k = int(np.clip(np.searchsorted(edges, float(v), side="right") - 1, 0, len(edges) - 2))
        out.append(f"[{edges[k]:g}, {edges[k + 1]:g}{']' if k == len(edges) - 2 else ')'}")
    return out


@dataclass(frozen=True)
class DistributionMetrics:
    """Against the crowd's vote distribution: mean KL(votes || model), top-k hits, mean Spearman rho."""

    n: int
    kl: float
    top1: float
    top2: float
    spearman: float


def distribution_metrics(prob: np.ndarray, votes: np.ndarray, *, eps: float = 1e-6) -> DistributionMetrics:
    """Compare the model's class probabilities with per-image vote distributions over the same classes.

    ``votes`` rows are renormalised (Emotion6's neutral share is dropped by the caller, since the
    6-way label space has no neutral class); KL uses ``eps`` so a zero model probability stays finite.
    Top-k: the crowd's most-voted class is among the model's k most probable. Spearman: rank
    correlation of the two distributions per image (images where either is constant are skipped).
    """
    from scipy.stats import spearmanr

    p = np.asarray(prob, dtype=np.float64)
    q = np.asarray(votes, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise ConfigError(f"distribution metrics need matching N x C arrays, got {p.shape} and {q.shape}")
    keep = q.sum(1) > 0
    p, q = p[keep], q[keep]
    q = q / q.sum(1, keepdims=True)
    pn = (p + eps) / (p + eps).sum(1, keepdims=True)
    kl = np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / pn), 0.0).sum(1)
    top = np.argsort(-p, axis=1, kind="stable")
    best = q.argmax(1)
    rhos = []
    for a, b in zip(p, q):
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            rhos.append(float(spearmanr(a, b).statistic))
    return DistributionMetrics(
        n=int(keep.sum()), kl=float(kl.mean()) if kl.size else float("nan"),
        top1=float((top[:, 0] == best).mean()) if best.size else float("nan"),
        top2=float((top[:, :2] == best[:, None]).any(1).mean()) if best.size else float("nan"),
        spearman=float(np.mean(rhos)) if rhos else float("nan"))
