"""The experiments document (`GET /v1/experiments/{task}`, SPEC §4 and §7) built from the
stored sums (report_text.py shows it as a table, report_html.py as a page).

The document's records are in document.py, whose field names the README's "Experiments"
section describes. Pure functions: they take the task's config and the sums
`Experiments.read` returned.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

from tunegate.config.compiled import Task, Variant
from tunegate.experiments import fields as f
from tunegate.experiments import quality, stats
from tunegate.experiments.document import (
    Bounds,
    BreakEven,
    ComparisonFigures,
    Decision,
    ExperimentsDocument,
    FigureComparison,
    Latency,
    Mean,
    PolicyFigures,
    Rate,
    Shadow,
    Tokens,
    VariantFigures,
)
from tunegate.experiments.stats import Comparison, Interval, Moments, Policy, RatioSums

Sums = Mapping[str, float]
# OpenAI's chat format adds about this many tokens per message around its content.
TOKENS_PER_MESSAGE = 4
CHARS_PER_TOKEN = 4
QUALITY = ("success_rate", "first_try_valid", "checks_first_try_pass", "judge_score", "preference")


def build_document(
    task: Task,
    sums: Mapping[str, Sums],
    policy: Policy | None = None,
    pairs: Mapping[tuple[str, str], Sums] | None = None,
    dataset_cost_usd: float | None = None,
) -> ExperimentsDocument:
    """Per-variant figures, the comparison of the tuned variant with the other, the
    break-even, the shadow pairs' figures (from `Experiments.read_pairs`) and the
    decision."""
    policy = policy or Policy()
    variants = {
        name: _variant_figures(task, task.variants[name], sums.get(name, {}), policy)
        for name in task.variants
    }
    tuned = next((n for n, v in task.variants.items() if v.is_tuned), None)
    pair = _pair(task, sums)
    if pair is None:
        return ExperimentsDocument(
            task=task.name,
            tuned=tuned,
            variants=variants,
            comparison=None,
            break_even=None,
            shadow=None,
            decision=_no_decision(policy, "the task needs two variants to compare"),
        )
    a, b = pair
    comparisons = _compare(task, sums.get(a, {}), sums.get(b, {}), (a, b), policy)
    comparisons |= quality.quality_comparisons(
        sums.get(a, {}),
        sums.get(b, {}),
        (a, b),
        policy,
        checks=task.checks is not None,
        judge=task.judge is not None,
    )
    preferred = quality.preference_comparison(pairs or {}, (a, b), policy)
    if preferred is not None:
        comparisons["preference"] = preferred
    comparison = ComparisonFigures(
        a=a,
        b=b,
        difference="a - b",
        alpha=policy.alpha,
        figures={
            name: _figure_comparison(c, sums.get(a, {}), sums.get(b, {}))
            for name, c in comparisons.items()
        },
    )
    return ExperimentsDocument(
        task=task.name,
        tuned=tuned,
        variants=variants,
        comparison=comparison,
        break_even=_break_even(task, sums, (a, b), variants, dataset_cost_usd),
        shadow=_shadow(pairs or {}, (a, b), policy),
        decision=_decision(comparisons, (a, b), sums, policy),
    )


def _shadow(
    pairs: Mapping[tuple[str, str], Sums], names: tuple[str, str], policy: Policy
) -> Shadow | None:
    """Paired figures of a and b over the shadow calls in either direction: agreement of
    the parsed outputs, and a - b differences of latency and cost on the same inputs."""
    a, b = names
    a_first, b_first = pairs.get((a, b), {}), pairs.get((b, a), {})
    calls = _count(a_first, f.N) + _count(b_first, f.N)
    if not calls:
        return None
    answered = _count(a_first, f.ANSWERED) + _count(b_first, f.ANSWERED)
    agree = _count(a_first, f.AGREE) + _count(b_first, f.AGREE)

    def paired(field: str) -> Mean:
        # Stored as shadow - primary: b - a when a answered the caller, a - b otherwise.
        total = b_first.get(field, 0.0) - a_first.get(field, 0.0)
        total_sq = a_first.get(f.squared(field), 0.0) + b_first.get(f.squared(field), 0.0)
        return _mean(Moments(answered, total, total_sq), policy.alpha)

    return Shadow(
        calls=calls,
        by_primary={a: _count(a_first, f.N), b: _count(b_first, f.N)},
        answered=answered,
        invalid=_count(a_first, f.INVALID) + _count(b_first, f.INVALID),
        agreement=_rate(agree, answered, policy.alpha),
        latency_s_difference=paired(f.D_LATENCY),
        cost_usd_difference=paired(f.D_COST),
        shadow_cost_usd=a_first.get(f.COST, 0.0) + b_first.get(f.COST, 0.0),
        preference=quality.preference(pairs, a, b, policy),
    )


def _pair(task: Task, sums: Mapping[str, Sums]) -> tuple[str, str] | None:
    """The tuned variant (model `ft:...`) against the other variant with most samples;
    without a tuned one, the first two variants in config order."""
    names = list(task.variants)
    if len(names) < 2:
        return None
    tuned = next((n for n in names if task.variants[n].is_tuned), None)
    if tuned is None:
        return names[0], names[1]
    others = sorted((n for n in names if n != tuned), key=lambda n: -sums.get(n, {}).get(f.N, 0))
    return tuned, others[0]


def _count(s: Sums, field: str) -> int:
    return int(s.get(field, 0))


def _moments(s: Sums, field: str) -> Moments:
    return Moments(_count(s, f.N), s.get(field, 0.0), s.get(f.squared(field), 0.0))


def _feedback(s: Sums, prefix: str) -> Moments:
    n, total, total_sq = f.feedback(prefix)
    return Moments(_count(s, n), s.get(total, 0.0), s.get(total_sq, 0.0))


def _ratio(s: Sums) -> RatioSums:
    ok = s.get(f.OK, 0.0)
    cost, cost_sq = s.get(f.COST, 0.0), s.get(f.squared(f.COST), 0.0)
    return RatioSums(_count(s, f.N), cost, cost_sq, ok, ok, s.get(f.COST_OK, 0.0))


def _bounds(interval: Interval | None) -> Bounds | None:
    return (interval.low, interval.high) if interval else None


def _rate(k: int, n: int, alpha: float) -> Rate:
    return Rate(value=k / n if n else None, ci95=_bounds(stats.wilson(k, n, alpha)))


def _mean(m: Moments, alpha: float) -> Mean:
    return Mean(count=m.n, mean=m.mean, ci95=_bounds(stats.mean_interval(m, alpha)))


def _variant_figures(task: Task, variant: Variant, s: Sums, policy: Policy) -> VariantFigures:
    n, ok = _count(s, f.N), _count(s, f.OK)
    alpha = policy.alpha
    histogram = {
        int(k.removeprefix(f.HISTOGRAM)): int(v) for k, v in s.items() if k.startswith(f.HISTOGRAM)
    }
    cost = _moments(s, f.COST)
    return VariantFigures(
        model=variant.model,
        tuned=variant.is_tuned,
        requests=n,
        successes=ok,
        success_rate=_rate(ok, n, alpha),
        first_try_valid=_rate(_count(s, f.FIRST_VALID), n, alpha) if task.is_json else None,
        repair_rate=_rate(_count(s, f.REPAIRED), n, alpha) if task.is_json else None,
        latency_s=Latency(
            mean=_moments(s, f.LATENCY).mean,
            p50=stats.histogram_quantile(histogram, 0.5),
            p95=stats.histogram_quantile(histogram, 0.95),
            histogram=tuple(
                (stats.bucket_low(i), stats.bucket_high(i), count)
                for i, count in sorted(histogram.items())
                if count
            ),
        ),
        tokens_per_request=Tokens(
            prompt=s.get(f.PROMPT_TOKENS, 0.0) / n if n else None,
            completion=s.get(f.COMPLETION_TOKENS, 0.0) / n if n else None,
        ),
        cost_usd_per_request=Rate(value=cost.mean, ci95=_bounds(stats.mean_interval(cost, alpha))),
        cost_usd_per_valid_answer=s.get(f.COST, 0.0) / ok if ok else None,
        valid_answers=ok,
        feedback=_mean(_feedback(s, f.FEEDBACK), alpha),
        feedback_not_sampled=_mean(_feedback(s, f.FEEDBACK_NOT_SAMPLED), alpha),
        checks_first_try_pass=(
            quality.checks_first_try_pass(s, alpha) if task.checks is not None else None
        ),
        check_failures=quality.check_failures(s) if task.checks is not None else None,
        judge_score=quality.judge_score(s, policy) if task.judge is not None else None,
        first_sample_at=s.get(f.FIRST_TS),
        last_sample_at=s.get(f.LAST_TS),
    )


def _compare(
    task: Task, a: Sums, b: Sums, names: tuple[str, str], policy: Policy
) -> dict[str, Comparison]:
    n_a, n_b = _count(a, f.N), _count(b, f.N)

    def proportion(field: str, higher_is_better: bool = True) -> Comparison:
        return stats.compare_proportions(
            _count(a, field),
            n_a,
            _count(b, field),
            n_b,
            names,
            policy,
            higher_is_better=higher_is_better,
        )

    figures = {"success_rate": proportion(f.OK)}
    if task.is_json:
        figures["first_try_valid"] = proportion(f.FIRST_VALID)
    figures["latency_s"] = stats.compare_means(
        _moments(a, f.LATENCY), _moments(b, f.LATENCY), names, policy, higher_is_better=False
    )
    figures["cost_usd_per_request"] = stats.compare_means(
        _moments(a, f.COST), _moments(b, f.COST), names, policy, higher_is_better=False
    )
    figures["cost_usd_per_valid_answer"] = stats.compare_ratios(_ratio(a), _ratio(b), names, policy)
    figures["feedback_score"] = stats.compare_means(
        _feedback(a, f.FEEDBACK),
        _feedback(b, f.FEEDBACK),
        names,
        policy,
        higher_is_better=True,
        margin=policy.feedback_margin,
    )
    return figures


def _figure_comparison(c: Comparison, a: Sums, b: Sums) -> FigureComparison:
    have = min(_count(a, f.N), _count(b, f.N))
    return FigureComparison(
        difference=c.difference,
        ci95=_bounds(c.interval),
        p_value=c.p_value,
        anytime_ci95=_bounds(c.anytime),
        decision=c.decision,
        verdict=c.verdict,
        samples_needed_per_variant=c.samples_needed,
        more_samples_needed=max(0, c.samples_needed - have) if c.samples_needed else None,
    )


def example_tokens(variant: Variant) -> int:
    """Estimated input tokens of a variant's few-shot examples: their turns (the prefix
    after the system prompt) at ~4 characters per token plus ~4 tokens per message."""
    turns = [m for m in variant.prefix if m.get("role") != "system"]
    return sum(
        math.ceil(len(str(m.get("content", ""))) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE
        for m in turns
    )


def _break_even(
    task: Task,
    sums: Mapping[str, Sums],
    names: tuple[str, str],
    figures: Mapping[str, VariantFigures],
    dataset_cost_usd: float | None = None,
) -> BreakEven:
    """The tuned arm's saving per request and when it pays back its training: the task's
    `training_cost_usd`, else the estimate of its latest `dataset export` (SPEC §9)."""
    a, b = names
    tuned, other = (a, b) if task.variants[a].is_tuned else (None, b)
    few = task.variants[other]
    s_few = sums.get(other, {})
    calls = _count(s_few, f.CALLS)
    prompt_per_call = s_few.get(f.PROMPT_TOKENS, 0.0) / calls if calls else None
    est = example_tokens(few)
    other_cost = figures[other].cost_usd_per_request.value
    tuned_cost = figures[tuned].cost_usd_per_request.value if tuned is not None else None
    saving = None
    if tuned_cost is not None and other_cost is not None:
        saving = other_cost - tuned_cost
    training = task.training_cost_usd
    source = "config" if training is not None else None
    if training is None and dataset_cost_usd is not None:
        training, source = dataset_cost_usd, "dataset export (estimate)"
    requests = None
    if saving is not None and saving > 0 and training is not None:
        requests = math.ceil(training / saving)
    per_day = _requests_per_day(sums)
    return BreakEven(
        tuned=tuned,
        few_shot=other,
        cost_usd_per_valid_answer={n: figures[n].cost_usd_per_valid_answer for n in names},
        few_shot_example_tokens_estimate=est,
        few_shot_prompt_tokens_per_call=prompt_per_call,
        few_shot_examples_share_of_input=(
            min(1.0, est / prompt_per_call) if prompt_per_call else None
        ),
        saving_usd_per_request=saving,
        training_cost_usd=training,
        training_cost_source=source,
        requests_to_break_even=requests,
        requests_per_day=per_day,
        days_to_break_even=requests / per_day if requests and per_day else None,
    )


def _requests_per_day(sums: Mapping[str, Sums]) -> float | None:
    """Samples per day over all variants, from the first to the latest sample."""
    firsts = [s[f.FIRST_TS] for s in sums.values() if f.FIRST_TS in s]
    lasts = [s[f.LAST_TS] for s in sums.values() if f.LAST_TS in s]
    total = sum(_count(s, f.N) for s in sums.values())
    if not firsts or not lasts or max(lasts) <= min(firsts):
        return None
    return total * 86400.0 / (max(lasts) - min(firsts))


def _policy_figures(policy: Policy) -> PolicyFigures:
    return PolicyFigures(
        alpha=policy.alpha,
        quality_margin=policy.quality_margin,
        relative_margin=policy.relative_margin,
        feedback_margin=policy.feedback_margin,
        rho2=policy.rho2,
        min_samples=policy.min_samples,
        anytime_valid=True,
    )


def _no_decision(policy: Policy, reason: str, figures: Mapping[str, str] | None = None) -> Decision:
    return Decision(
        status="undecided",
        recommendation=None,
        reason=reason,
        policy=_policy_figures(policy),
        figures=figures or {},
    )


def _decision(
    comparisons: Mapping[str, Comparison],
    names: tuple[str, str],
    sums: Mapping[str, Sums],
    policy: Policy,
) -> Decision:
    """Quality (success rate, first-try valid) not worse by more than the margin, then the
    cheaper cost per valid answer wins; all read from the confidence sequences."""
    a, b = names
    undecided = functools.partial(
        _no_decision, policy, figures={name: c.decision for name, c in comparisons.items()}
    )
    have = min(_count(sums.get(a, {}), f.N), _count(sums.get(b, {}), f.N))
    if have < policy.min_samples:
        return undecided(f"fewer than {policy.min_samples} samples for a variant")
    margin = policy.quality_margin
    quality = [comparisons[q].anytime for q in QUALITY if q in comparisons]
    bounds = [q for q in quality if q is not None]
    not_worse = {a: all(q.low > -margin for q in bounds), b: all(q.high < margin for q in bounds)}
    worse = {a: any(q.high < -margin for q in bounds), b: any(q.low > margin for q in bounds)}
    cost = comparisons["cost_usd_per_valid_answer"].verdict
    cheaper = {a: cost == "a_better", b: cost == "b_better"}
    for winner, loser in ((a, b), (b, a)):
        if not_worse[winner] and (cheaper[winner] or worse[loser]):
            why = (
                "cheaper per valid answer"
                if cheaper[winner]
                else (f"{loser}'s quality is worse by more than the margin")
            )
            return dataclasses.replace(
                undecided(f"{winner}: quality not worse by more than {margin:g}; {why}"),
                status="recommend",
                recommendation=winner,
            )
    if not_worse[a] and not_worse[b] and cost == "equivalent":
        return dataclasses.replace(
            undecided("quality and cost equivalent within margins"), status="equivalent"
        )
    return undecided("the confidence sequences do not settle quality and cost yet")
