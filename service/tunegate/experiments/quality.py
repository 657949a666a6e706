"""Quality figures of output checks and judges (SPEC §8, §12 Experiments JSON), from the
stored sums: pure.

Per variant: `checks_first_try_pass` (Wilson interval), `check_failures` per kind and
`judge_score` (mean of score/10, t interval and confidence sequence). Over the shadow
pairs: `preference`, the tuned (a) variant's win rate with ties counted half. For the
decision, the same figures as a - b comparisons: checks and judge score as differences
of the two variants, the preference as the win rate minus 0.5 (so `equivalent` means its
confidence sequence lies within 0.5 ± the quality margin).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from tunegate.experiments import fields as f
from tunegate.experiments import stats
from tunegate.experiments.document import Bounds, ChecksPass, JudgeScore, Preference
from tunegate.experiments.stats import Comparison, Interval, Moments, Policy

Sums = Mapping[str, float]


def _pair(interval: Interval | None) -> Bounds | None:
    return (interval.low, interval.high) if interval else None


def _share(interval: Interval | None) -> Bounds | None:
    """An interval of a figure that lies in [0, 1], clipped to it."""
    return (max(0.0, interval.low), min(1.0, interval.high)) if interval else None


def _count(s: Sums, field: str) -> int:
    return int(s.get(field, 0))


def checks_first_try_pass(s: Sums, alpha: float) -> ChecksPass:
    k, n = _count(s, f.CHECKS_PASSED_FIRST), _count(s, f.CHECKED)
    return ChecksPass(rate=k / n if n else None, ci95=_pair(stats.wilson(k, n, alpha)))


def check_failures(s: Sums) -> dict[str, int]:
    return {
        name.removeprefix(f.CHECK_FAILURE): int(v)
        for name, v in sorted(s.items())
        if name.startswith(f.CHECK_FAILURE)
    }


def judge_moments(s: Sums) -> Moments:
    n, total, total_sq = f.feedback(f.JUDGE_SCORE)
    return Moments(_count(s, n), s.get(total, 0.0), s.get(total_sq, 0.0))


def _anytime(m: Moments, policy: Policy) -> Interval | None:
    mean = m.mean
    if mean is None or m.n < 2:
        return None
    radius = stats.cs_radius(math.sqrt(m.variance / m.n), m.n, policy.alpha, policy.rho2)
    return Interval(mean - radius, mean + radius)


def judge_score(s: Sums, policy: Policy) -> JudgeScore:
    m = judge_moments(s)
    return JudgeScore(
        n=m.n,
        mean=m.mean,
        ci95=_share(stats.mean_interval(m, policy.alpha)),
        anytime_ci95=_share(_anytime(m, policy)),
    )


def preference_moments(pairs: Mapping[tuple[str, str], Sums], a: str, b: str) -> Moments:
    """a's score over judged pairs of a and b (1 a better, 0.5 tie, 0 b better), whichever
    of them answered the caller."""
    a_first, b_first = pairs.get((a, b), {}), pairs.get((b, a), {})
    n = _count(a_first, f.JUDGED_PAIRS) + _count(b_first, f.JUDGED_PAIRS)
    ties = _count(a_first, f.JUDGED_TIES) + _count(b_first, f.JUDGED_TIES)
    b_lost = _count(b_first, f.JUDGED_PAIRS) - _count(b_first, f.JUDGED_TIES)
    wins = _count(a_first, f.JUDGED_PRIMARY_WINS) + b_lost - _count(b_first, f.JUDGED_PRIMARY_WINS)
    return Moments(n, wins + ties / 2, wins + ties / 4)


def preference(
    pairs: Mapping[tuple[str, str], Sums], a: str, b: str, policy: Policy
) -> Preference | None:
    """`shadow.preference` for a (the tuned arm) against b; None without judged pairs."""
    m = preference_moments(pairs, a, b)
    if not m.n:
        return None
    ties = _count(pairs.get((a, b), {}), f.JUDGED_TIES) + _count(
        pairs.get((b, a), {}), f.JUDGED_TIES
    )
    return Preference(
        pairs=m.n,
        ties=ties,
        tuned_win_rate=m.mean,
        ci95=_share(stats.mean_interval(m, policy.alpha)),
        anytime_ci95=_share(_anytime(m, policy)),
    )


def preference_comparison(
    pairs: Mapping[tuple[str, str], Sums], names: tuple[str, str], policy: Policy
) -> Comparison | None:
    """The preference as a decision figure: a's win rate minus 0.5."""
    m = preference_moments(pairs, *names)
    if m.mean is None:
        return None
    interval = stats.mean_interval(m, policy.alpha)
    anytime = _anytime(m, policy)
    verdict, decision = stats.decide(
        _shift(anytime), policy.quality_margin, names, higher_is_better=True
    )
    return Comparison(
        difference=m.mean - 0.5,
        interval=_shift(interval),
        p_value=None,
        anytime=_shift(anytime),
        verdict=verdict,
        decision=decision,
        samples_needed=None,
    )


def _shift(interval: Interval | None) -> Interval | None:
    return Interval(interval.low - 0.5, interval.high - 0.5) if interval else None


def quality_comparisons(
    a: Sums, b: Sums, names: tuple[str, str], policy: Policy, *, checks: bool, judge: bool
) -> dict[str, Comparison]:
    """checks_first_try_pass and judge_score, a - b, with the quality margin."""
    figures: dict[str, Comparison] = {}
    if checks:
        figures["checks_first_try_pass"] = stats.compare_proportions(
            _count(a, f.CHECKS_PASSED_FIRST),
            _count(a, f.CHECKED),
            _count(b, f.CHECKS_PASSED_FIRST),
            _count(b, f.CHECKED),
            names,
            policy,
            higher_is_better=True,
        )
    if judge:
        figures["judge_score"] = stats.compare_means(
            judge_moments(a),
            judge_moments(b),
            names,
            policy,
            higher_is_better=True,
            margin=policy.quality_margin,
        )
    return figures
