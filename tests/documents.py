"""Experiments documents made to order for the tests of their readers (the adaptive split,
the experiment gauges): two variants `tuned` and `few_shot` and the figures a test names."""

from __future__ import annotations

from collections.abc import Mapping

from tunegate.experiments.document import (
    Bounds,
    ComparisonFigures,
    Decision,
    ExperimentsDocument,
    FigureComparison,
    Latency,
    Mean,
    PolicyFigures,
    Rate,
    Tokens,
    VariantFigures,
    Verdict,
)

NO_RATE = Rate(None, None)
NO_MEAN = Mean(0, None, None)
POLICY = PolicyFigures(0.05, 0.01, 0.05, 0.05, 0.0073, 30, True)


def variant(requests: int) -> VariantFigures:
    """A variant's figures where only the number of samples is known."""
    return VariantFigures(
        model="m",
        tuned=False,
        requests=requests,
        successes=0,
        success_rate=NO_RATE,
        first_try_valid=None,
        repair_rate=None,
        latency_s=Latency(None, None, None, ()),
        tokens_per_request=Tokens(None, None),
        cost_usd_per_request=NO_RATE,
        cost_usd_per_valid_answer=None,
        valid_answers=0,
        feedback=NO_MEAN,
        feedback_not_sampled=NO_MEAN,
        checks_first_try_pass=None,
        check_failures=None,
        judge_score=None,
        first_sample_at=None,
        last_sample_at=None,
    )


def figure(
    difference: float,
    ci95: Bounds | None,
    verdict: Verdict = "undecided",
    decision: str | None = None,
    anytime: Bounds | None = None,
) -> FigureComparison:
    return FigureComparison(
        difference=difference,
        ci95=ci95,
        p_value=None,
        anytime_ci95=anytime,
        decision=decision or verdict,
        verdict=verdict,
        samples_needed_per_variant=None,
        more_samples_needed=None,
    )


def compared(
    requests: tuple[int, int],
    figures: Mapping[str, FigureComparison],
    status: str = "undecided",
    recommendation: str | None = None,
) -> ExperimentsDocument:
    """`tuned` (a) compared with `few_shot` (b) on `figures`, with that many samples."""
    return ExperimentsDocument(
        task="t",
        tuned="tuned",
        variants={"tuned": variant(requests[0]), "few_shot": variant(requests[1])},
        comparison=ComparisonFigures("tuned", "few_shot", "a - b", 0.05, figures),
        break_even=None,
        shadow=None,
        decision=Decision(status, recommendation, "", POLICY, {}),
    )
