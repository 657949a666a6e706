"""The experiments document as a self-contained HTML page (`tunegate report TASK --html
FILE`): the comparison as charts, for people who would rather look than read.

Inline SVG and CSS only: no script, no font, no request to anywhere, so the file can be
mailed or attached to a ticket. Pure: the page is a function of the document that
`report.build_document` returns; every name in it is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape

from tunegate.experiments.document import (
    Bounds,
    BreakEven,
    ComparisonFigures,
    Decision,
    ExperimentsDocument,
    FigureComparison,
    Mean,
    Shadow,
    VariantFigures,
)
from tunegate.experiments.report_text import render_table

Variants = Mapping[str, VariantFigures]
Bar = tuple[str, float, Bounds | None]

WIDTH = 640
ROW = 26
LABEL = 130
COLOURS = ("#3b6fb6", "#d9822b", "#3a9a5b", "#a14fa8")

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 760px;
       color: #1d2330; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.note { color: #5b6477; } svg { display: block; margin: .5rem 0 1rem; }
svg text { font: 12px system-ui, sans-serif; fill: #1d2330; }
.axis { stroke: #9aa3b5; } .zero { stroke: #1d2330; stroke-dasharray: 3 3; }
.whisker { stroke: #1d2330; stroke-width: 1.5; }
pre { background: #f4f6fa; padding: 1rem; overflow-x: auto; font-size: 12px; }
.decision { padding: .75rem 1rem; background: #eef4ec; border-left: 4px solid #3a9a5b; }
"""


def render_html(document: ExperimentsDocument) -> str:
    """The page: the decision, then quality, cost, latency, differences and shadow pairs
    as charts, and every figure as the text table."""
    variants = document.variants
    names = list(variants)
    colour = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(names)}
    parts = [
        f"<h1>Experiment: {escape(document.task)}</h1>",
        _decision(document.decision),
        _legend(names, colour, variants),
        *_quality(names, colour, variants),
        *_cost(names, colour, variants),
        _break_even(document.break_even),
        "<h2>Latency</h2>",
        _latency(names, colour, variants),
    ]
    comparison = document.comparison
    if comparison:
        parts += _differences(comparison)
    if document.shadow:
        parts.append(_shadow(document.shadow, comparison))
    parts.append(f"<h2>All figures</h2><pre>{escape(render_table(document))}</pre>")
    body = "\n".join(part for part in parts if part)
    title = escape(f"tunegate experiment {document.task}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _quality(names: Sequence[str], colour: Mapping[str, str], variants: Variants) -> list[str]:
    parts = ["<h2>Quality (95% confidence intervals)</h2>"]
    for title, rates in (
        ("success rate", {n: v.success_rate for n, v in variants.items()}),
        ("first-try JSON valid", {n: v.first_try_valid for n, v in variants.items()}),
        ("repaired or re-asked", {n: v.repair_rate for n, v in variants.items()}),
    ):
        rows: list[Bar] = [
            (name, figure.value, figure.ci95)
            for name in names
            if (figure := rates[name]) and figure.value is not None
        ]
        if rows:
            parts.append(_bars(title, rows, colour, 1.0, percent=True))
    feedback: list[Bar] = [
        (name, mean.mean, mean.ci95)
        for name in names
        if (mean := variants[name].feedback).mean is not None
    ]
    if feedback:
        parts.append(_bars("feedback score", feedback, colour, 1.0))
    return parts + _quality_signals(names, colour, variants)


def _cost(names: Sequence[str], colour: Mapping[str, str], variants: Variants) -> list[str]:
    parts = ["<h2>Cost (USD)</h2>"]
    per_request: list[Bar] = [
        (name, figure.value, figure.ci95)
        for name in names
        if (figure := variants[name].cost_usd_per_request).value is not None
    ]
    per_valid: list[Bar] = [
        (name, value, None)
        for name in names
        if (value := variants[name].cost_usd_per_valid_answer) is not None
    ]
    for title, rows in (("per request", per_request), ("per valid answer", per_valid)):
        if rows:
            parts.append(_bars(title, rows, colour, _top(rows)))
    return parts


def _differences(comparison: ComparisonFigures) -> list[str]:
    return [
        f"<h2>Differences {escape(comparison.a)} &minus; {escape(comparison.b)}</h2>"
        '<p class="note">Bars: 95% confidence interval; whiskers: the anytime-valid 95% '
        "confidence sequence the decision reads. The dashed line is no difference.</p>",
        _forest(comparison.figures),
    ]


def _decision(decision: Decision) -> str:
    winner = decision.recommendation
    head = f"{escape(decision.status)}" + (f": use <b>{escape(winner)}</b>" if winner else "")
    return f'<p class="decision">Decision {head} &mdash; {escape(decision.reason)}</p>'


def _legend(names: Sequence[str], colour: Mapping[str, str], variants: Variants) -> str:
    items = [
        f'<span style="color:{colour[n]}">&#9632;</span> <b>{escape(n)}</b> '
        f"({escape(variants[n].model)}, {variants[n].requests} samples)"
        for n in names
    ]
    return '<p class="note">' + " &nbsp; ".join(items) + "</p>"


def _top(rows: Iterable[Bar]) -> float:
    highest = max((max([v, *(ci or ())]) for _, v, ci in rows), default=0.0)
    return highest * 1.15 or 1.0


def _bars(
    title: str,
    rows: Sequence[Bar],
    colour: Mapping[str, str],
    top: float,
    *,
    percent: bool = False,
) -> str:
    """Horizontal bars from 0 with their interval as a whisker; `top` is the full scale."""
    span = WIDTH - LABEL - 90
    height = ROW * len(rows) + 24

    def x(value: float) -> float:
        return LABEL + span * max(0.0, min(value, top)) / top

    shapes = [f'<text x="0" y="14"><tspan font-weight="600">{escape(title)}</tspan></text>']
    for i, (name, value, ci) in enumerate(rows):
        y = 22 + i * ROW
        shown = f"{100 * value:.1f}%" if percent else _number(value)
        shapes.append(f'<text x="0" y="{y + 14}">{escape(name)}</text>')
        shapes.append(
            f'<rect x="{LABEL}" y="{y + 3}" width="{x(value) - LABEL:.1f}" height="{ROW - 10}" '
            f'fill="{colour[name]}" opacity="0.8"/>'
        )
        if ci:
            low, high, middle = x(ci[0]), x(ci[1]), y + 3 + (ROW - 10) / 2
            shapes.append(
                f'<path class="whisker" d="M{low:.1f} {middle - 5}v10M{low:.1f} {middle}'
                f'H{high:.1f}M{high:.1f} {middle - 5}v10"/>'
            )
        right = x(max([value, *(ci or ())])) + 6
        shapes.append(f'<text x="{right:.1f}" y="{y + 14}">{shown}</text>')
    return _svg(height, shapes)


def _forest(figures: Mapping[str, FigureComparison]) -> str:
    """One row per compared figure: its interval and confidence sequence around zero,
    each row on its own scale (the figures have different units)."""
    rows = [(name, f, f.difference) for name, f in figures.items() if f.difference is not None]
    if not rows:
        return '<p class="note">Not enough samples for differences yet.</p>'
    left = LABEL + 45  # the figures' names are longer than the variants'
    span = WIDTH - left - 160
    middle = left + span / 2
    shapes = []
    for i, (name, figure, difference) in enumerate(rows):
        y = 8 + i * ROW
        bounds = [abs(difference)]
        for interval in (figure.ci95, figure.anytime_ci95):
            if interval:
                bounds += [abs(v) for v in interval if math.isfinite(v)]
        scale = (span / 2) / (max(bounds) * 1.1 or 1.0)

        def x(value: float, scale: float = scale) -> float:
            return middle + max(-span / 2, min(span / 2, value * scale))

        centre = y + ROW / 2
        shapes.append(f'<text x="0" y="{centre + 4}">{escape(name.replace("_", " "))}</text>')
        if figure.anytime_ci95:
            low, high = (x(v) for v in figure.anytime_ci95)
            shapes.append(f'<path class="whisker" d="M{low:.1f} {centre}H{high:.1f}"/>')
        if figure.ci95:
            low, high = (x(v) for v in figure.ci95)
            shapes.append(
                f'<rect x="{low:.1f}" y="{centre - 6}" width="{max(1.0, high - low):.1f}" '
                'height="12" fill="#3b6fb6" opacity="0.6"/>'
            )
        shapes.append(f'<circle cx="{x(difference):.1f}" cy="{centre}" r="3"/>')
        label = f"{_number(difference)}  {escape(figure.decision)}"
        shapes.append(f'<text x="{left + span + 10}" y="{centre + 4}">{label}</text>')
    height = 16 + ROW * len(rows)
    shapes.insert(0, f'<path class="zero" d="M{middle} 0V{height}"/>')
    return _svg(height, shapes)


def _latency(names: Sequence[str], colour: Mapping[str, str], variants: Variants) -> str:
    """Each variant's latency distribution (share of samples per bucket, log scale) with
    its p50 and p95 marked."""
    histograms = {n: variants[n].latency_s.histogram for n in names}
    edges = [
        edge
        for buckets in histograms.values()
        for low, high, _ in buckets
        for edge in (low, high)
        if edge
    ]
    if not edges:
        return '<p class="note">No latency samples yet.</p>'
    lowest, highest = min(edges), max(edges)
    if highest <= lowest:
        highest = lowest * 2
    left, span, plot = 40, WIDTH - 60, 160

    def x(seconds: float) -> float:
        seconds = min(max(seconds, lowest), highest)
        return left + span * math.log(seconds / lowest) / math.log(highest / lowest)

    shapes = [f'<path class="axis" d="M{left} {plot}H{left + span}"/>']
    for name in names:
        buckets = histograms[name]
        total = sum(count for _, _, count in buckets) or 1
        tallest = max((count / total for _, _, count in buckets), default=1.0) or 1.0
        points = []
        for low, high, count in buckets:
            a, b = x(low or lowest), x(high or highest)
            y = plot - (plot - 10) * (count / total) / tallest
            points.append(f"M{a:.1f} {plot}V{y:.1f}H{b:.1f}V{plot}")
        shapes.append(
            f'<path d="{"".join(points)}" fill="{colour[name]}" fill-opacity="0.3" '
            f'stroke="{colour[name]}"/>'
        )
        latency = variants[name].latency_s
        for q, seconds in (("p50", latency.p50), ("p95", latency.p95)):
            if seconds:
                at = x(seconds)
                shapes.append(
                    f'<path d="M{at:.1f} 8V{plot}" stroke="{colour[name]}" stroke-dasharray="4 3"/>'
                    f'<text x="{at + 3:.1f}" y="{20 if q == "p50" else 34}" '
                    f'fill="{colour[name]}">{q} {_seconds(seconds)}</text>'
                )
    for tick in _ticks(lowest, highest):
        shapes.append(f'<text x="{x(tick) - 12:.1f}" y="{plot + 16}">{_seconds(tick)}</text>')
    return _svg(plot + 24, shapes)


def _shadow(shadow: Shadow, comparison: ComparisonFigures | None) -> str:
    names = f"{comparison.a} &minus; {comparison.b}" if comparison else "a &minus; b"
    agreement = shadow.agreement
    parts = [
        f"<h2>Shadow pairs ({escape(names)} on the same inputs)</h2>",
        f'<p class="note">{shadow.calls} shadow calls, {shadow.answered} answered, '
        f"{shadow.invalid} invalid; shadow cost {_number(shadow.shadow_cost_usd)} USD, "
        "counted apart from the callers' cost.</p>",
    ]
    if agreement.value is not None:
        rows: list[Bar] = [("agreement", agreement.value, agreement.ci95)]
        parts.append(_bars("parsed outputs agree", rows, {"agreement": COLOURS[2]}, 1.0,
                           percent=True))  # fmt: skip
    paired = {
        "latency s": _paired(shadow.latency_s_difference),
        "cost USD": _paired(shadow.cost_usd_difference),
    }
    parts.append(_forest({k: v for k, v in paired.items() if v}))
    preference = shadow.preference
    if preference and preference.tuned_win_rate is not None:
        rows = [("win rate", preference.tuned_win_rate, preference.ci95)]
        title = (
            f"judge preference for {comparison.a if comparison else 'a'} "
            f"({preference.pairs} pairs, {preference.ties} ties count half)"
        )
        parts.append(_bars(title, rows, {"win rate": COLOURS[3 % len(COLOURS)]}, 1.0,
                           percent=True))  # fmt: skip
    return "\n".join(parts)


def _quality_signals(
    names: Sequence[str], colour: Mapping[str, str], variants: Variants
) -> list[str]:
    """Bars for the output checks' first-try pass rate and the judge's mean score."""
    checks: list[Bar] = [
        (name, figure.rate, figure.ci95)
        for name in names
        if (figure := variants[name].checks_first_try_pass) and figure.rate is not None
    ]
    judged: list[Bar] = [
        (name, score.mean, score.ci95)
        for name in names
        if (score := variants[name].judge_score) and score.mean is not None
    ]
    parts = []
    if checks:
        parts.append(_bars("output checks passed first try", checks, colour, 1.0, percent=True))
    if judged:
        parts.append(_bars("judge score (score/10)", judged, colour, 1.0))
    return parts


def _paired(figure: Mean) -> FigureComparison | None:
    """A paired mean difference as a row of the forest plot."""
    if figure.mean is None:
        return None
    return FigureComparison(
        difference=figure.mean,
        ci95=figure.ci95,
        p_value=None,
        anytime_ci95=None,
        decision="",
        verdict="undecided",
        samples_needed_per_variant=None,
        more_samples_needed=None,
    )


def _break_even(even: BreakEven | None) -> str:
    if even is None or even.saving_usd_per_request is None:
        return ""
    saving = even.saving_usd_per_request
    text = f"The tuned variant saves {_number(saving)} USD per request"
    if even.requests_to_break_even:
        text += (
            f"; its training ({_number(even.training_cost_usd or 0.0)} USD) pays back after "
            f"{even.requests_to_break_even:,} requests"
        )
        if even.days_to_break_even is not None:
            text += f" (~{even.days_to_break_even:.1f} days at today's traffic)"
    elif saving <= 0:
        text = "The tuned variant is not cheaper per request: it never pays back its tuning"
    return f'<p class="note">{escape(text)}.</p>'


def _ticks(lowest: float, highest: float) -> list[float]:
    ticks, tick = [], 10 ** math.floor(math.log10(lowest))
    while tick <= highest:
        for step in (1, 2, 5):
            if lowest <= tick * step <= highest:
                ticks.append(tick * step)
        tick *= 10
    return ticks[:: max(1, len(ticks) // 8)]


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2g} s"


def _number(value: float) -> str:
    size = abs(value)
    if size >= 10_000:
        return f"{value:,.0f}"
    if size >= 0.01 or value == 0:
        return f"{value:.4g}"
    return f"{value:.8f}".rstrip("0").rstrip(".")  # costs: 0.000102, never 1.02e-04


def _svg(height: float, shapes: Iterable[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" role="img">' + "".join(shapes) + "</svg>"
    )
