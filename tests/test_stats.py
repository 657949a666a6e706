"""The experiment statistics against reference values, and the anytime-valid decisions
against simulation: read after every 50 requests, identical variants rarely get a
winner (naive p-values often do); a clearly better variant is found."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats  # type: ignore[import-untyped]  # no stubs

from tunegate.experiments import stats
from tunegate.experiments.stats import Interval, Moments, Policy, RatioSums

POLICY = Policy()


def moments(values: list[float]) -> Moments:
    return Moments(len(values), sum(values), sum(v * v for v in values))


def test_wilson_interval_for_45_of_50() -> None:
    # Newcombe (1998), table I: 81/263 -> 0.2553 to 0.3662; and 45/50 by hand.
    interval = stats.wilson(81, 263)
    assert interval is not None
    assert (interval.low, interval.high) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    interval = stats.wilson(45, 50)
    assert interval is not None
    assert (interval.low, interval.high) == pytest.approx((0.78640, 0.95653), abs=1e-4)
    assert stats.wilson(0, 0) is None
    zero = stats.wilson(0, 10)
    assert zero is not None
    assert (zero.low, zero.high) == pytest.approx((0.0, 0.27753), abs=1e-4)


def test_newcombe_difference_matches_the_published_example() -> None:
    # Newcombe (1998), table II example (56/70 vs 48/80): method 10 gives 0.0524 to 0.3339.
    interval = stats.newcombe(56, 70, 48, 80)
    assert interval is not None
    assert (interval.low, interval.high) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_two_proportion_p_value_equals_chi_square_without_correction() -> None:
    table = [[45, 5], [38, 12]]
    chi2 = scipy_stats.chi2_contingency(table, correction=False)
    assert stats.two_proportion_p_value(45, 50, 38, 50) == pytest.approx(chi2.pvalue)
    assert stats.two_proportion_p_value(50, 50, 50, 50) == 1.0


def test_welch_matches_scipy() -> None:
    a = [0.21, 0.25, 0.19, 0.30, 0.27, 0.22, 0.24, 0.31]
    b = [0.35, 0.29, 0.41, 0.38, 0.33, 0.45, 0.30, 0.37, 0.39, 0.36, 0.44]
    result = stats.welch(moments(a), moments(b))
    assert result is not None
    interval, p = result
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(reference.pvalue, rel=1e-9)
    ci = reference.confidence_interval(0.95)
    assert (interval.low, interval.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_mean_interval_matches_scipy() -> None:
    values = [3.1, 2.9, 3.4, 3.0, 2.7, 3.3]
    interval = stats.mean_interval(moments(values))
    assert interval is not None
    low, high = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values)
    )
    assert (interval.low, interval.high) == pytest.approx((low, high))


def test_samples_needed() -> None:
    # Fleiss et al.: 0.6 vs 0.8 at alpha 0.05, power 0.8 -> 82 per group (no correction).
    assert stats.samples_for_proportions(0.6, 0.8) == 82
    # Cohen's d = 0.5 -> 63 per group with the normal approximation.
    assert stats.samples_for_means(1.0, 1.0, 0.5) == 63
    assert stats.samples_for_proportions(0.9, 0.9) is None


def test_ratio_variance_by_the_delta_method() -> None:
    rng = np.random.default_rng(3)
    costs = rng.gamma(2.0, 0.001, size=400)
    valid = (rng.random(400) < 0.8).astype(float)
    sums = RatioSums(
        400,
        float(costs.sum()),
        float((costs**2).sum()),
        float(valid.sum()),
        float(valid.sum()),
        float((costs * valid).sum()),
    )
    assert sums.ratio == pytest.approx(costs.sum() / valid.sum())
    # The delta method against a bootstrap of the same data.
    picks = rng.integers(0, 400, size=(4000, 400))
    boot = costs[picks].sum(axis=1) / valid[picks].sum(axis=1)
    assert math.sqrt(sums.variance_of_ratio()) == pytest.approx(boot.std(), rel=0.1)


def test_confidence_sequence_radius() -> None:
    # Waudby-Smith et al. (2021): at t = t_opt the normal-mixture boundary is about 1.55
    # times the fixed-horizon z interval for alpha 0.05.
    rho2 = stats.default_rho2(0.05, t_opt=1000)
    radius = stats.cs_radius(1.0, 1000, 0.05, rho2)
    expected = math.sqrt(
        2 * (1000 * rho2 + 1) / (1000 * rho2) * math.log(math.sqrt(1000 * rho2 + 1) / 0.05)
    )
    assert radius == pytest.approx(expected)
    assert 1.4 * 1.96 < radius < 1.7 * 1.96
    # Wider than a fixed interval at every t, and tightest (per standard error) near t_opt.
    per_t = [stats.cs_radius(1.0, t, 0.05, rho2) for t in (50, 200, 1000, 10_000)]
    assert all(r > 1.96 for r in per_t)
    assert per_t[0] > per_t[1] > per_t[2]


def test_decisions() -> None:
    names = ("tuned", "few_shot")
    assert stats.decide(Interval(0.01, 0.05), 0.01, names, higher_is_better=True) == (
        "a_better",
        "tuned better",
    )
    assert stats.decide(Interval(0.01, 0.05), 0.01, names, higher_is_better=False)[1] == (
        "few_shot better"
    )
    assert stats.decide(Interval(-0.005, 0.008), 0.01, names, higher_is_better=True) == (
        "equivalent",
        "equivalent within margin 0.01",
    )
    assert stats.decide(Interval(-0.02, 0.03), 0.01, names, higher_is_better=True)[0] == (
        "undecided"
    )
    few = stats.compare_proportions(9, 10, 5, 10, names, POLICY)
    assert few.verdict == "undecided"  # below min_samples
    assert few.p_value is not None


def _looks(p_a: float, p_b: float, runs: int, seed: int) -> tuple[float, float, float]:
    """Share of runs whose confidence sequence ever names a winner, share whose naive
    p-value is ever below alpha, share that named only variant a: 2,000 requests each,
    randomised 50/50, read after every 50."""
    rng = np.random.default_rng(seed)
    n, every = 2000, 50
    arm = rng.random((runs, n)) < 0.5
    ok = np.where(arm, rng.random((runs, n)) < p_a, rng.random((runs, n)) < p_b)
    n_a, k_a = np.cumsum(arm, axis=1), np.cumsum(arm & ok, axis=1)
    n_b, k_b = np.cumsum(~arm, axis=1), np.cumsum(~arm & ok, axis=1)
    any_winner = naive = only_a = 0
    for run in range(runs):
        verdicts: set[str] = set()
        naive_hit = False
        for t in range(every - 1, n, every):
            c = stats.compare_proportions(
                int(k_a[run, t]),
                int(n_a[run, t]),
                int(k_b[run, t]),
                int(n_b[run, t]),
                ("a", "b"),
                POLICY,
            )
            if c.verdict in ("a_better", "b_better"):
                verdicts.add(c.verdict)
            naive_hit = naive_hit or (c.p_value is not None and c.p_value < POLICY.alpha)
        any_winner += bool(verdicts)
        naive += naive_hit
        only_a += verdicts == {"a_better"}
    return any_winner / runs, naive / runs, only_a / runs


@pytest.mark.parametrize("p", [0.9, 0.5])
def test_identical_variants_rarely_get_a_winner(p: float) -> None:
    cs_rate, naive_rate, _ = _looks(p, p, runs=400, seed=int(p * 100))
    assert cs_rate <= POLICY.alpha
    assert naive_rate > 3 * POLICY.alpha  # peeking at fixed-horizon p-values


def test_a_clearly_better_variant_is_found() -> None:
    _, _, only_a = _looks(0.98, 0.85, runs=200, seed=5)
    assert only_a >= 0.98


def test_latency_histogram_quantiles() -> None:
    rng = np.random.default_rng(1)
    samples = rng.lognormal(mean=math.log(0.08), sigma=0.5, size=5000)
    counts: dict[int, int] = {}
    for value in samples:
        index = stats.bucket_of(float(value))
        counts[index] = counts.get(index, 0) + 1
    for q in (0.5, 0.95):
        estimate = stats.histogram_quantile(counts, q)
        assert estimate == pytest.approx(float(np.quantile(samples, q)), rel=0.08)
    assert stats.histogram_quantile({}, 0.5) is None
    assert stats.bucket_of(0.0) == 0
    assert stats.bucket_of(1e9) == len(stats.LATENCY_EDGES)
