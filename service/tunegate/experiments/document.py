"""The experiments document as records (SPEC §4, §8, §12 "Experiments JSON"): what
`report.build_document` returns and the table, the page, the adaptive split and the
experiment gauges read.

JSON exists only at the edges: `document_json` makes the body of
`GET /v1/experiments/{task}` and of `tunegate report --json`, `document_from_json` reads
one back (`tunegate report --url`, the demo). Field names and order are the JSON's, so
the README's "Experiments" section describes both.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Bounds = tuple[float, float]
Verdict = Literal["a_better", "b_better", "equivalent", "undecided"]


@dataclass(frozen=True, slots=True)
class Rate:
    """A share (or a mean cost) with its 95% interval."""

    value: float | None
    ci95: Bounds | None


@dataclass(frozen=True, slots=True)
class Mean:
    """A mean over `count` observations with its t interval."""

    count: int
    mean: float | None
    ci95: Bounds | None


@dataclass(frozen=True, slots=True)
class Latency:
    mean: float | None
    p50: float | None
    p95: float | None
    # (low, high, count) per non-empty bucket, for charts; high None for the last one.
    histogram: tuple[tuple[float, float | None, int], ...]


@dataclass(frozen=True, slots=True)
class Tokens:
    prompt: float | None
    completion: float | None


@dataclass(frozen=True, slots=True)
class ChecksPass:
    """`checks_first_try_pass`: the share of checked answers that passed first time."""

    rate: float | None
    ci95: Bounds | None


@dataclass(frozen=True, slots=True)
class JudgeScore:
    """`judge_score`: the mean of the judge's score / 10."""

    n: int
    mean: float | None
    ci95: Bounds | None
    anytime_ci95: Bounds | None


@dataclass(frozen=True, slots=True)
class VariantFigures:
    model: str
    tuned: bool
    requests: int
    successes: int
    success_rate: Rate
    first_try_valid: Rate | None
    repair_rate: Rate | None
    latency_s: Latency
    tokens_per_request: Tokens
    cost_usd_per_request: Rate
    cost_usd_per_valid_answer: float | None
    valid_answers: int
    feedback: Mean
    feedback_not_sampled: Mean
    checks_first_try_pass: ChecksPass | None
    check_failures: Mapping[str, int] | None
    judge_score: JudgeScore | None
    first_sample_at: float | None
    last_sample_at: float | None


@dataclass(frozen=True, slots=True)
class FigureComparison:
    """One figure of variant a minus variant b."""

    difference: float | None
    ci95: Bounds | None
    p_value: float | None
    anytime_ci95: Bounds | None
    decision: str
    verdict: Verdict
    samples_needed_per_variant: int | None
    more_samples_needed: int | None


@dataclass(frozen=True, slots=True)
class ComparisonFigures:
    a: str
    b: str
    difference: str
    alpha: float
    figures: Mapping[str, FigureComparison]


@dataclass(frozen=True, slots=True)
class BreakEven:
    tuned: str | None
    few_shot: str
    cost_usd_per_valid_answer: Mapping[str, float | None]
    few_shot_example_tokens_estimate: int
    few_shot_prompt_tokens_per_call: float | None
    few_shot_examples_share_of_input: float | None
    saving_usd_per_request: float | None
    training_cost_usd: float | None
    training_cost_source: str | None
    requests_to_break_even: int | None
    requests_per_day: float | None
    days_to_break_even: float | None


@dataclass(frozen=True, slots=True)
class Preference:
    """`shadow.preference`: the tuned (a) variant's win rate over judged pairs."""

    pairs: int
    ties: int
    tuned_win_rate: float | None
    ci95: Bounds | None
    anytime_ci95: Bounds | None


@dataclass(frozen=True, slots=True)
class Shadow:
    calls: int
    by_primary: Mapping[str, int]
    answered: int
    invalid: int
    agreement: Rate
    latency_s_difference: Mean
    cost_usd_difference: Mean
    shadow_cost_usd: float
    preference: Preference | None


@dataclass(frozen=True, slots=True)
class PolicyFigures:
    alpha: float
    quality_margin: float
    relative_margin: float
    feedback_margin: float
    rho2: float
    min_samples: int
    anytime_valid: bool


@dataclass(frozen=True, slots=True)
class Decision:
    status: str
    recommendation: str | None
    reason: str
    policy: PolicyFigures
    figures: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ExperimentsDocument:
    task: str
    tuned: str | None
    variants: Mapping[str, VariantFigures]
    comparison: ComparisonFigures | None
    break_even: BreakEven | None
    shadow: Shadow | None
    decision: Decision


def document_json(document: ExperimentsDocument) -> dict[str, Any]:
    """The document as JSON data (dicts, lists, numbers, strings, None), its fields in
    their declared order."""
    data: dict[str, Any] = _plain(document)
    return data


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


class DocumentError(ValueError):
    """JSON that is not an experiments document."""


def document_from_json(data: object) -> ExperimentsDocument:
    """The document a gateway answered (`document_json`'s output, parsed); DocumentError
    when `data` is not one."""
    from pydantic import ValidationError

    try:
        document: ExperimentsDocument = _adapter().validate_python(data)
    except ValidationError as exc:
        raise DocumentError(f"not an experiments document: {exc.errors()[0]['msg']}") from None
    return document


@functools.cache
def _adapter() -> Any:
    from pydantic import TypeAdapter  # only readers of a gateway's answer need it

    return TypeAdapter(ExperimentsDocument)
