"""The experiments document as text for a terminal (`tunegate report TASK`): the
variants side by side, then the comparison, the break-even, the shadow pairs and the
decision, each a section of its own."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from tunegate.experiments.document import (
    Bounds,
    BreakEven,
    ChecksPass,
    ComparisonFigures,
    Decision,
    ExperimentsDocument,
    JudgeScore,
    Rate,
    Shadow,
    VariantFigures,
)


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return str(value)


def _pct(figure: Rate | None) -> str:
    if figure is None or figure.value is None or figure.ci95 is None:
        return "-"
    low, high = figure.ci95
    return f"{100 * figure.value:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _interval(pair: Bounds | None, digits: int = 4) -> str:
    return f"[{_fmt(pair[0], digits)}, {_fmt(pair[1], digits)}]" if pair else "-"


def render_table(document: ExperimentsDocument) -> str:
    """The experiments document (`report.build_document`) as text for a terminal."""
    lines = [f"task {document.task}  (tuned variant: {document.tuned or '-'})", ""]
    lines += _variants(document.variants)
    comparison = document.comparison
    if comparison:
        lines += _comparison(comparison)
    if document.break_even:
        lines += _break_even(document.break_even)
    if document.shadow and comparison:
        lines += _shadow(document.shadow, comparison)
    lines += _decision(document.decision)
    return "\n".join(lines)


_VARIANT_ROWS: list[tuple[str, Callable[[VariantFigures], str]]] = [
    ("samples", lambda v: str(v.requests)),
    ("success rate", lambda v: _pct(v.success_rate)),
    ("first-try JSON valid", lambda v: _pct(v.first_try_valid)),
    ("repaired/re-asked", lambda v: _pct(v.repair_rate)),
    ("latency p50 / p95 s", lambda v: f"{_fmt(v.latency_s.p50)} / {_fmt(v.latency_s.p95)}"),
    (
        "tokens in / out",
        lambda v: (
            f"{_fmt(v.tokens_per_request.prompt, 1)} / {_fmt(v.tokens_per_request.completion, 1)}"
        ),
    ),
    ("cost USD / request", lambda v: _fmt(v.cost_usd_per_request.value, 6)),
    ("cost USD / valid answer", lambda v: _fmt(v.cost_usd_per_valid_answer, 6)),
    ("feedback n, mean", lambda v: f"{v.feedback.count}, {_fmt(v.feedback.mean)}"),
    ("checks first-try pass", lambda v: _checks_pass(v.checks_first_try_pass)),
    ("check failures", lambda v: _failures(v.check_failures)),
    ("judge score n, mean", lambda v: _judge(v.judge_score)),
]


def _variants(variants: Mapping[str, VariantFigures]) -> list[str]:
    rows = [("", *variants)]
    rows += [(label, *(get(v) for v in variants.values())) for label, get in _VARIANT_ROWS]
    return _columns(rows)


def _comparison(comparison: ComparisonFigures) -> list[str]:
    rows = [("figure", "difference", "95% CI", "p", "anytime 95% CS", "decision", "n needed")]
    for name, c in comparison.figures.items():
        rows.append(
            (
                name,
                _fmt(c.difference, 4),
                _interval(c.ci95),
                _fmt(c.p_value, 3),
                _interval(c.anytime_ci95),
                c.decision,
                _fmt(c.samples_needed_per_variant),
            )
        )
    return ["", f"{comparison.a} - {comparison.b}:", *_columns(rows)]


def _break_even(even: BreakEven) -> list[str]:
    share = even.few_shot_examples_share_of_input
    return [
        "",
        f"break-even: saving per request {_fmt(even.saving_usd_per_request, 6)} USD; "
        f"few-shot examples ~{even.few_shot_example_tokens_estimate} tokens"
        + (f" ({100 * share:.0f}% of input)" if share is not None else ""),
        _payback(even),
    ]


def _shadow(shadow: Shadow, comparison: ComparisonFigures) -> list[str]:
    lines = [
        "",
        f"shadow pairs ({comparison.a} - {comparison.b} on the same inputs): "
        f"{shadow.calls} calls, {shadow.answered} answered, "
        f"{shadow.invalid} invalid; shadow cost {_fmt(shadow.shadow_cost_usd, 6)} USD "
        "(apart from the callers')",
    ]
    rows = [("figure", "value", "95% CI")]
    agreement = shadow.agreement
    rows.append(("agreement", _fmt(agreement.value), _interval(agreement.ci95, 3)))
    for label, figure, digits in (
        ("latency difference s", shadow.latency_s_difference, 4),
        ("cost difference USD", shadow.cost_usd_difference, 8),
    ):
        rows.append((label, _fmt(figure.mean, digits), _interval(figure.ci95, digits)))
    lines += ["  " + line for line in _columns(rows)]
    preference = shadow.preference
    if preference:
        lines.append(
            f"  judge preference: {comparison.a} wins {_fmt(preference.tuned_win_rate)} "
            f"of {preference.pairs} pairs ({preference.ties} ties, counted half), "
            f"95% CI {_interval(preference.ci95, 3)}, "
            f"anytime {_interval(preference.anytime_ci95, 3)}"
        )
    return lines


def _decision(decision: Decision) -> list[str]:
    return [
        "",
        f"decision: {decision.status}"
        + (f" -> {decision.recommendation}" if decision.recommendation else "")
        + f" ({decision.reason})",
    ]


def _checks_pass(figure: ChecksPass | None) -> str:
    return _pct(Rate(figure.rate, figure.ci95)) if figure is not None else "-"


def _failures(failures: Mapping[str, int] | None) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in failures.items()) if failures else "-"


def _judge(score: JudgeScore | None) -> str:
    if score is None or score.mean is None:
        return "-"
    return f"{score.n}, {_fmt(score.mean)} {_interval(score.ci95, 3)}"


def _payback(even: BreakEven) -> str:
    saving = even.saving_usd_per_request
    if saving is None or saving <= 0:
        return "  the tuned variant is not cheaper per request: it never pays back its tuning"
    if even.requests_to_break_even is None:
        return "  no training_cost_usd configured for the task, and no dataset exported"
    source = (
        " (dataset export's estimate)"
        if even.training_cost_source == "dataset export (estimate)"
        else ""
    )
    return (
        f"  training {_fmt(even.training_cost_usd, 2)} USD{source} pays back after "
        f"{even.requests_to_break_even} requests = {_fmt(even.days_to_break_even, 1)} "
        f"days at {_fmt(even.requests_per_day, 0)} samples/day"
    )


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
