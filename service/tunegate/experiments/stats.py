"""Experiment statistics: plain functions over running sums (count, sum, sum of squares),
so every figure can be computed from what the store keeps, at any time, by any instance.

Fixed-horizon figures (valid when read once, at a sample size fixed in advance):

- Wilson score interval for a proportion (Wilson 1927; Agresti & Coull 1998).
- Newcombe's hybrid score interval for a difference of proportions (Newcombe 1998,
  method 10) and the pooled two-proportion z-test (equal to Pearson's chi-square test
  without continuity correction).
- Welch's t interval and test for a difference of means with unequal variances
  (Welch 1947, Satterthwaite degrees of freedom).
- A delta-method interval for a ratio of means (cost per valid answer).
- Samples per variant to detect a difference with power 0.8 at alpha 0.05 (Fleiss,
  Levin & Paik 2003, eq. 4.14 without continuity correction; for means the normal
  approximation n = (z_a + z_b)^2 (s_a^2 + s_b^2) / delta^2).

Anytime-valid figures (valid however often they are read, e.g. after every 50 requests):

- The asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas,
  "Time-uniform central limit theory and asymptotic confidence sequences" (2021,
  arXiv:2103.06476, Theorem 2.2, the Robbins normal-mixture boundary)::

      estimate +- se * sqrt( 2 (t rho^2 + 1) / (t rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

  where `se` is the estimate's standard error (so `se * sqrt(t)` is the paper's sigma_t)
  and `t` the number of observations. For a difference between two variants the
  observations are all samples of both (t = n_a + n_b): with randomised assignment the
  difference in means is the AIPW estimator of the paper's section 3 with the group means
  as outcome model, whose influence-function variance over t is s_a^2/n_a + s_b^2/n_b.
  `rho` (the mixture's spread) is the tuning parameter: the boundary is tightest at
  t = t_opt for rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / t_opt (the paper's
  closed-form approximation); any rho > 0 keeps the guarantee. Default t_opt = 1000.

Decisions read the confidence sequence only, so a winner declared at any look is wrong
with probability at most alpha (asymptotically; `Policy.min_samples` keeps the first
looks, where the normal approximation is weakest, undecided).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


@functools.cache
def _distributions() -> Any:
    """scipy's distributions, imported on first use: a serving process that computes no
    interval (no adaptive split due) never loads scipy and numpy (~60 MiB resident)."""
    from scipy import stats  # type: ignore[import-untyped]  # scipy ships no stubs

    return stats


Verdict = Literal["a_better", "b_better", "equivalent", "undecided"]


def default_rho2(alpha: float = 0.05, t_opt: float = 1000.0) -> float:
    """The mixture parameter rho^2 that makes the confidence sequence tightest near
    `t_opt` observations (Waudby-Smith et al. 2021)."""
    log_term = -2.0 * math.log(alpha)
    return (log_term + math.log(log_term + 1.0)) / t_opt


@dataclass(frozen=True, slots=True)
class Policy:
    """How figures are compared and what the recommendation requires.

    `quality_margin` is absolute (0.01 = 1 percentage point) for success rate and
    first-try valid; `relative_margin` is a share of the two variants' mean for latency
    and cost; `feedback_margin` is absolute on the 0..1 score."""

    alpha: float = 0.05
    power: float = 0.8
    quality_margin: float = 0.01
    relative_margin: float = 0.05
    feedback_margin: float = 0.05
    rho2: float = default_rho2()
    min_samples: int = 30


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Moments:
    """Running sums of one figure over `n` observations."""

    n: int
    total: float
    total_sq: float

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def variance(self) -> float:
        """The sample variance (n - 1 in the denominator), 0 below two observations."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))


@dataclass(frozen=True, slots=True)
class RatioSums:
    """Running sums for a ratio of means sum(x) / sum(y) (cost per valid answer: x the
    cost, y 1 for a valid answer), with the cross sum for the delta method."""

    n: int
    x: float
    x_sq: float
    y: float
    y_sq: float
    xy: float

    @property
    def ratio(self) -> float | None:
        return self.x / self.y if self.y else None

    def variance_of_ratio(self) -> float:
        """Delta-method variance of sum(x)/sum(y) (e.g. Cochran 1977, ch. 6)."""
        ratio = self.ratio
        if ratio is None or self.n < 2:
            return math.inf
        n = self.n
        var_x = (self.x_sq - self.x * self.x / n) / (n - 1)
        var_y = (self.y_sq - self.y * self.y / n) / (n - 1)
        cov = (self.xy - self.x * self.y / n) / (n - 1)
        mean_y = self.y / n
        return max(0.0, var_x - 2 * ratio * cov + ratio * ratio * var_y) / (n * mean_y**2)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Variant a minus variant b for one figure."""

    difference: float | None
    interval: Interval | None
    p_value: float | None
    anytime: Interval | None
    verdict: Verdict
    decision: str
    samples_needed: int | None


@functools.lru_cache(maxsize=64)
def z_quantile(alpha: float) -> float:
    """The two-sided normal critical value z_{1 - alpha/2}."""
    return float(_distributions().norm.ppf(1.0 - alpha / 2.0))


def _normal_two_sided(z: float) -> float:
    """2 P(Z > |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2))


def wilson(successes: int, n: int, alpha: float = 0.05) -> Interval | None:
    """Wilson's score interval for a proportion; None without observations."""
    if n == 0:
        return None
    z = z_quantile(alpha)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def newcombe(k_a: int, n_a: int, k_b: int, n_b: int, alpha: float = 0.05) -> Interval | None:
    """Newcombe's hybrid score interval for p_a - p_b (1998, method 10)."""
    wa, wb = wilson(k_a, n_a, alpha), wilson(k_b, n_b, alpha)
    if wa is None or wb is None:
        return None
    pa, pb = k_a / n_a, k_b / n_b
    d = pa - pb
    return Interval(
        d - math.sqrt((pa - wa.low) ** 2 + (wb.high - pb) ** 2),
        d + math.sqrt((wa.high - pa) ** 2 + (pb - wb.low) ** 2),
    )


def two_proportion_p_value(k_a: int, n_a: int, k_b: int, n_b: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test."""
    if n_a == 0 or n_b == 0:
        return None
    pooled = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 1.0
    z = (k_a / n_a - k_b / n_b) / se
    return _normal_two_sided(z)


def mean_interval(m: Moments, alpha: float = 0.05) -> Interval | None:
    """Student's t interval for a mean; None below two observations."""
    if m.n < 2 or m.mean is None:
        return None
    half = float(_distributions().t.ppf(1 - alpha / 2, m.n - 1)) * math.sqrt(m.variance / m.n)
    return Interval(m.mean - half, m.mean + half)


def welch(a: Moments, b: Moments, alpha: float = 0.05) -> tuple[Interval, float] | None:
    """Welch's interval for mean_a - mean_b and its two-sided p-value; None below two
    observations on either side."""
    if a.n < 2 or b.n < 2 or a.mean is None or b.mean is None:
        return None
    d = a.mean - b.mean
    va, vb = a.variance / a.n, b.variance / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(d, d), (1.0 if d == 0 else 0.0)
    df = (va + vb) ** 2 / (va * va / (a.n - 1) + vb * vb / (b.n - 1))
    t_crit = float(_distributions().t.ppf(1 - alpha / 2, df))
    p = float(2 * _distributions().t.sf(abs(d) / se, df))
    return Interval(d - t_crit * se, d + t_crit * se), p


def cs_radius(se: float, t: int, alpha: float = 0.05, rho2: float = default_rho2()) -> float:
    """Half-width of the two-sided asymptotic confidence sequence (Waudby-Smith et al.
    2021, Theorem 2.2) for an estimate with standard error `se` after `t` observations."""
    if t < 1:
        return math.inf
    trho = t * rho2
    return se * math.sqrt(2 * (trho + 1) / trho * math.log(math.sqrt(trho + 1) / alpha))


def samples_for_proportions(
    p_a: float, p_b: float, alpha: float = 0.05, power: float = 0.8
) -> int | None:
    """Samples per variant for the z-test to detect p_a != p_b (Fleiss et al. 2003)."""
    delta = abs(p_a - p_b)
    if delta == 0:
        return None
    mean = (p_a + p_b) / 2
    z_a, z_b = z_quantile(alpha), z_quantile(2 * (1 - power))
    root = z_a * math.sqrt(2 * mean * (1 - mean)) + z_b * math.sqrt(
        p_a * (1 - p_a) + p_b * (1 - p_b)
    )
    return math.ceil(root * root / (delta * delta))


def samples_for_means(
    var_a: float, var_b: float, delta: float, alpha: float = 0.05, power: float = 0.8
) -> int | None:
    """Samples per variant to detect a difference `delta` in means (normal approx.)."""
    if delta == 0:
        return None
    z = z_quantile(alpha) + z_quantile(2 * (1 - power))
    return max(2, math.ceil(z * z * (var_a + var_b) / (delta * delta)))


def decide(
    anytime: Interval | None,
    margin: float,
    names: tuple[str, str],
    *,
    higher_is_better: bool,
) -> tuple[Verdict, str]:
    """Read a confidence sequence for a - b: a winner when it excludes 0, equivalence
    when it lies within (-margin, margin), else undecided."""
    if anytime is None:
        return "undecided", "undecided"
    if anytime.low > 0 or anytime.high < 0:
        a_wins = (anytime.low > 0) == higher_is_better
        winner = names[0] if a_wins else names[1]
        return ("a_better" if a_wins else "b_better"), f"{winner} better"
    if -margin < anytime.low and anytime.high < margin:
        return "equivalent", f"equivalent within margin {margin:.6g}"
    return "undecided", "undecided"


def _anytime(d: float, se: float, t: int, policy: Policy) -> Interval:
    radius = cs_radius(se, t, policy.alpha, policy.rho2)
    return Interval(d - radius, d + radius)


def compare_proportions(
    k_a: int,
    n_a: int,
    k_b: int,
    n_b: int,
    names: tuple[str, str],
    policy: Policy,
    *,
    higher_is_better: bool = True,
) -> Comparison:
    """Compare two proportions. The confidence sequence estimates each variance with one
    pseudo-success and one pseudo-failure added ((k+1)/(n+2)), so a variant with no
    failures yet does not look certain."""
    if n_a == 0 or n_b == 0:
        return Comparison(None, None, None, None, "undecided", "undecided", None)
    pa, pb = k_a / n_a, k_b / n_b
    d = pa - pb
    sa, sb = (k_a + 1) / (n_a + 2), (k_b + 1) / (n_b + 2)
    se = math.sqrt(sa * (1 - sa) / n_a + sb * (1 - sb) / n_b)
    anytime = _anytime(d, se, n_a + n_b, policy)
    verdict, text = _verdict(
        anytime, policy.quality_margin, names, higher_is_better, n_a, n_b, policy
    )
    return Comparison(
        difference=d,
        interval=newcombe(k_a, n_a, k_b, n_b, policy.alpha),
        p_value=two_proportion_p_value(k_a, n_a, k_b, n_b),
        anytime=anytime,
        verdict=verdict,
        decision=text,
        samples_needed=samples_for_proportions(pa, pb, policy.alpha, policy.power),
    )


def compare_means(
    a: Moments,
    b: Moments,
    names: tuple[str, str],
    policy: Policy,
    *,
    higher_is_better: bool,
    margin: float | None = None,
) -> Comparison:
    """Compare two means (Welch; confidence sequence on the same standard error). Without
    `margin`, equivalence means within `policy.relative_margin` of the two means' mean."""
    if a.mean is None or b.mean is None or a.n < 2 or b.n < 2:
        return Comparison(None, None, None, None, "undecided", "undecided", None)
    d = a.mean - b.mean
    se = math.sqrt(a.variance / a.n + b.variance / b.n)
    fixed = welch(a, b, policy.alpha)
    anytime = _anytime(d, se, a.n + b.n, policy)
    if margin is None:
        margin = policy.relative_margin * abs(a.mean + b.mean) / 2
    verdict, text = _verdict(anytime, margin, names, higher_is_better, a.n, b.n, policy)
    return Comparison(
        difference=d,
        interval=fixed[0] if fixed else None,
        p_value=fixed[1] if fixed else None,
        anytime=anytime,
        verdict=verdict,
        decision=text,
        samples_needed=samples_for_means(a.variance, b.variance, d, policy.alpha, policy.power),
    )


def compare_ratios(
    a: RatioSums, b: RatioSums, names: tuple[str, str], policy: Policy
) -> Comparison:
    """Compare two ratios of means (lower is better: cost per valid answer), with
    delta-method standard errors and a normal interval."""
    if a.ratio is None or b.ratio is None or a.n < 2 or b.n < 2:
        return Comparison(None, None, None, None, "undecided", "undecided", None)
    d = a.ratio - b.ratio
    var_a, var_b = a.variance_of_ratio(), b.variance_of_ratio()
    se = math.sqrt(var_a + var_b)
    z = z_quantile(policy.alpha)
    p = _normal_two_sided(d / se) if se > 0 else (1.0 if d == 0 else 0.0)
    anytime = _anytime(d, se, a.n + b.n, policy)
    margin = policy.relative_margin * abs(a.ratio + b.ratio) / 2
    verdict, text = _verdict(anytime, margin, names, False, a.n, b.n, policy)
    needed = samples_for_means(var_a * a.n, var_b * b.n, d, policy.alpha, policy.power)
    return Comparison(d, Interval(d - z * se, d + z * se), p, anytime, verdict, text, needed)


def _verdict(
    anytime: Interval,
    margin: float,
    names: tuple[str, str],
    higher_is_better: bool,
    n_a: int,
    n_b: int,
    policy: Policy,
) -> tuple[Verdict, str]:
    if min(n_a, n_b) < policy.min_samples:
        return "undecided", "undecided"
    return decide(anytime, margin, names, higher_is_better=higher_is_better)


def histogram_edges(
    first: float = 0.005, factor: float = 1.15, count: int = 72
) -> tuple[float, ...]:
    """Upper edges of the fixed log-spaced latency buckets (5 ms to about 120 s)."""
    return tuple(first * factor**i for i in range(count))


LATENCY_EDGES = histogram_edges()


def bucket_of(seconds: float, edges: Sequence[float] = LATENCY_EDGES) -> int:
    """The bucket index of `seconds`: i for edges[i-1] <= seconds < edges[i] (0 below the
    first edge, len(edges) above the last)."""
    return bisect.bisect_right(edges, seconds)


def bucket_low(index: int, edges: Sequence[float] = LATENCY_EDGES) -> float:
    """The lower edge of bucket `index` (0 for the first)."""
    return 0.0 if index == 0 else edges[min(index, len(edges)) - 1]


def bucket_high(index: int, edges: Sequence[float] = LATENCY_EDGES) -> float | None:
    """The upper edge of bucket `index` (None for the last, open-ended one)."""
    return edges[index] if index < len(edges) else None


def histogram_quantile(
    counts: Mapping[int, int], q: float, edges: Sequence[float] = LATENCY_EDGES
) -> float | None:
    """The `q` quantile from bucket counts, interpolated geometrically inside its bucket
    (relative error below the buckets' factor)."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(counts):
        count = counts[index]
        if count and seen + count >= rank:
            if index == 0:
                return edges[0]
            if index >= len(edges):
                return edges[-1]
            low, high = edges[index - 1], edges[index]
            share = (rank - seen) / count
            return float(low * (high / low) ** share)
        seen += count
    return edges[-1]
