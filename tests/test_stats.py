"""report.stats: known answers for McNemar, the paired bootstrap, Holm, the seed t interval, ECE, groups."""
from __future__ import annotations

import math
import statistics
import warnings

import numpy as np
import pytest

from vea_bench.errors import ConfigError
from vea_bench.metrics import confusion, macro_f1
from vea_bench.report import stats as S


def planted(n_both: int, n_a: int, n_b: int, n_neither: int, classes: int = 4, seed: int = 0):
    """Labels and two prediction sets with exact counts: both right, only A, only B, neither."""
    rng = np.random.default_rng(seed)
    n = n_both + n_a + n_b + n_neither
    y = rng.integers(0, classes, n)
    wrong = (y + 1) % classes
    kinds = np.array([0] * n_both + [1] * n_a + [2] * n_b + [3] * n_neither)
    rng.shuffle(kinds)
    a = np.where((kinds == 0) | (kinds == 1), y, wrong)
    b = np.where((kinds == 0) | (kinds == 2), y, wrong)
    return y, a, b


def exact_mcnemar_by_hand(b: int, c: int) -> float:
    """Two-sided exact McNemar: twice the smaller binomial tail of Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def test_planted_difference_gives_the_binomial_p_and_an_interval_covering_it() -> None:
    y, a, b = planted(100, 40, 20, 40)
    m = S.mcnemar_exact(a == y, b == y)
    assert (m.b, m.c) == (40, 20)
    assert m.p == pytest.approx(exact_mcnemar_by_hand(40, 20), rel=1e-9)
    assert 0.01 < m.p < 0.02                     # 2 * P(X <= 20), X ~ Bin(60, 1/2)
    truth = (40 - 20) / 200
    for method in ("percentile", "BCa"):
        iv = S.paired_bootstrap(y, a, b, method=method, seed=1)
        assert iv.estimate == pytest.approx(truth)
        assert iv.covers(truth) and iv.low > 0   # a real difference: the interval excludes zero
    # The unpaired-looking case: no discordant image at all.
    assert S.mcnemar_exact(a == y, a == y).p == 1.0


def test_identical_runs_give_p_one_and_a_zero_interval() -> None:
    y, a, _ = planted(50, 10, 0, 20)
    assert S.mcnemar_exact(a == y, a == y) == S.McNemar(0, 0, 1.0)
    iv = S.paired_bootstrap(y, a, a)
    assert (iv.low, iv.estimate, iv.high) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_covers_the_true_accuracy_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(7)
    hits = 0
    reps = 40
    for r in range(reps):
        y = rng.integers(0, 5, 300)
        pred = np.where(rng.random(300) < 0.7, y, (y + 2) % 5)
        hits += S.bootstrap_ci(y, pred, method="percentile", seed=r, n_resamples=500).covers(0.7)
    assert hits >= 0.85 * reps


def test_degenerate_accuracy_gives_a_point_interval_without_warnings() -> None:
    y = np.arange(30) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iv = S.bootstrap_ci(y, y, method="BCa")
    assert (iv.low, iv.estimate, iv.high) == (1.0, 1.0, 1.0)


def test_vectorised_macro_f1_matches_the_metrics_module() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 6, 200)
    pred = np.where(rng.random(200) < 0.5, y, rng.integers(-1, 6, 200))
    valid = pred >= 0
    want = macro_f1(confusion(y[valid], pred[valid], 6))
    assert float(S._macro_f1(y, pred)) == pytest.approx(want)
    iv = S.bootstrap_ci(y, pred, "macro_f1", n_resamples=300)
    assert iv.low <= want <= iv.high


def test_holm_step_down_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01, 3*0.03, max(2*0.04, 0.09), max(0.5, 0.09)
    assert S.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert S.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])


def test_seed_difference_t_interval_by_hand() -> None:
    a, b = [0.80, 0.82, 0.79], [0.70, 0.71, 0.72]
    d = [x - y for x, y in zip(a, b)]
    half = 4.302652729911275 * statistics.stdev(d) / math.sqrt(3)   # t(0.975, df = 2)
    res = S.seed_difference(a, b)
    assert res.mean == pytest.approx(statistics.mean(d))
    assert (res.low, res.high) == pytest.approx((res.mean - half, res.mean + half))
    assert 0 < res.p < 0.05
    assert S.seed_difference([0.5], [0.4]).low is None
    with pytest.raises(ConfigError):
        S.seed_difference([0.5, 0.6], [0.4])


def test_ece_of_overconfident_and_calibrated_predictions() -> None:
    y = np.zeros(100, dtype=int)
    prob = np.tile([0.9, 0.1], (100, 1))
    y[:40] = 1                                  # confidence 0.9, accuracy 0.6
    cal = S.calibration(prob, y)
    assert cal.ece == pytest.approx(0.3)
    assert sum(cal.count) == 100 and cal.accuracy[13] == pytest.approx(0.6)
    # Confidence 0.75 in bin [0.733, 0.8) with 75 % right: calibrated.
    y2 = np.array([0] * 75 + [1] * 25)
    assert S.calibration(np.tile([0.75, 0.25], (100, 1)), y2).ece == pytest.approx(0.0, abs=1e-12)


def test_accuracy_by_groups_counts_lists_and_bins() -> None:
    correct = np.array([1, 0, 1, 1, 0], dtype=bool)
    out = S.accuracy_by(["a", "b", "a", ["a", "b"], None], correct)
    assert [(g.value, g.n, g.accuracy) for g in out] == [("a", 3, 1.0), ("b", 2, 0.5)]
    assert S.bin_values([1.0, 3.5, 9.0, None], (1.0, 3.0, 9.0)) == ["[1, 3)", "[3, 9]", "[3, 9]", None]


def test_distribution_metrics_against_votes() -> None:
    votes = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    same = S.distribution_metrics(votes, votes)
    assert same.kl == pytest.approx(0.0, abs=1e-4) and same.top1 == 1.0 and same.spearman == pytest.approx(1.0)
    flipped = S.distribution_metrics(votes[:, ::-1], votes)
    assert flipped.top1 == 0.0 and flipped.top2 == 0.0 and flipped.spearman == pytest.approx(-1.0)
    assert flipped.kl > 0.5
