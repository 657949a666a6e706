"""Writes dashboards/tunegate.json, the Grafana dashboard over tunegate's metrics (SPEC §5).

    python config/grafana/build_dashboard.py          # rewrite the JSON
    python config/grafana/build_dashboard.py --check  # exit 1 if the JSON is out of date

The checked-in JSON is what Grafana provisions and what tests/test_observability.py runs
against a real Prometheus; edit the panels here and rewrite it. Every query filters on the
dashboard's `$task` and `$variant` variables (regexes; "All" is `.*`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "tunegate.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/datasources/
RATE = "$__rate_interval"

TASK = 'task=~"$task"'
CHECKS = "tunegate_check_results_total"
PASSED = 'result="pass"'
VARIANT = 'variant=~"$variant"'
ANSWERED = 'outcome!="rejected"'


def series(metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join(matchers)}}}"


def rate(selector: str, by: str) -> str:
    return f"sum by ({by}) (rate({selector}[{RATE}]))"


def quantile(q: float, metric: str, by: str, *matchers: str) -> str:
    grouping = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, {rate(series(f'{metric}_bucket', *matchers), grouping)})"


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(
    title: str,
    description: str,
    unit: str,
    targets: list[tuple[str, str]],
    *,
    stack: bool = False,
    max_value: float | None = None,
    signed: bool = False,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        **({} if signed else {"min": 0}),
        "custom": {
            "drawStyle": "line",
            "fillOpacity": 30 if stack else 10,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "spanNulls": False,
        },
    }
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)
        ],
    }


def percentiles(
    metric: str, by: str, qs: tuple[float, ...], *matchers: str
) -> list[tuple[str, str]]:
    label = f" {{{{{by}}}}}" if by else ""
    return [(quantile(q, metric, by, *matchers), f"p{round(q * 100)}{label}") for q in qs]


def table(title: str, description: str, targets: list[tuple[str, str]]) -> dict[str, Any]:
    """The current value of each series, one row each (instant queries)."""
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
        "targets": [
            {**target(expr, legend, chr(ord("A") + i)), "instant": True, "format": "table"}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def difference(title: str, figure: str, unit: str) -> dict[str, Any]:
    """A compared figure over time: estimate, confidence sequence and interval."""

    def bound(name: str) -> str:
        return series(
            "tunegate_experiment_difference", TASK, f'figure="{figure}"', f'bound="{name}"'
        )

    return panel(
        title,
        f"{figure.replace('_', ' ')}, tuned minus the other variant. The anytime-valid 95% "
        "confidence sequence (cs) stays valid however often it is read: a winner is declared "
        "only once it excludes 0 and the margin. ci is the fixed-horizon 95% interval.",
        unit,
        [
            (bound(name), f"{{{{task}}}} {name}")
            for name in ("estimate", "cs_low", "cs_high", "ci_low", "ci_high")
        ],
        signed=True,
    )


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


COST = series("tunegate_cost_usd_total", TASK, VARIANT)
SHADOW_COST = series("tunegate_shadow_cost_usd_total", TASK, VARIANT)
JSON_CHECKS = series("tunegate_json_validation_total", TASK, VARIANT)
FEEDBACK = ("tunegate_feedback_score_sum", "tunegate_feedback_score_count")

PANELS: list[dict[str, Any]] = [
    row("Traffic"),
    panel(
        "Requests by outcome",
        "Requests per second by outcome (ok, fallback, error, invalid_output, deadline, rejected).",
        "reqps",
        [(rate(series("tunegate_requests_total", TASK, VARIANT), "outcome"), "{{outcome}}")],
        stack=True,
    ),
    panel(
        "In-flight requests",
        "Task requests being served now, summed over instances and workers.",
        "short",
        [("sum(tunegate_in_flight_requests)", "in flight")],
    ),
    row("Latency"),
    panel(
        "Request latency by variant",
        "Whole-request latency (retries and fallbacks included) by serving variant.",
        "s",
        percentiles(
            "tunegate_request_duration_seconds", "variant", (0.5, 0.95, 0.99), TASK, VARIANT
        ),
    ),
    panel(
        "Gateway overhead",
        "Time spent in the gateway itself, not waiting on the upstream or the store.",
        "s",
        percentiles("tunegate_overhead_duration_seconds", "", (0.5, 0.99), TASK),
    ),
    panel(
        "Time to first token",
        "Streams: time from the request to the first token, by variant.",
        "s",
        percentiles("tunegate_time_to_first_token_seconds", "variant", (0.5, 0.95), TASK, VARIANT),
    ),
    panel(
        "Upstream latency p95 by model",
        "95th percentile of each upstream call, failed attempts included.",
        "s",
        [
            (
                quantile(
                    0.95, "tunegate_upstream_duration_seconds", "variant, model", TASK, VARIANT
                ),
                "{{variant}} ({{model}})",
            )
        ],
    ),
    row("Tokens and cost"),
    panel(
        "Tokens per second",
        "Upstream tokens per second by variant and kind (prompt, completion).",
        "short",
        [
            (
                rate(series("tunegate_tokens_total", TASK, VARIANT), "variant, kind"),
                "{{variant}} {{kind}}",
            )
        ],
        stack=True,
    ),
    panel(
        "Cost per hour",
        "Upstream spend in USD per hour at the current rate, by task and variant.",
        "currencyUSD",
        [(f"3600 * {rate(COST, 'task, variant')}", "{{task}} / {{variant}}")],
        stack=True,
    ),
    panel(
        "Cost per 1,000 requests",
        "Upstream spend per 1,000 answered requests (cache hits included), by task and variant.",
        "currencyUSD",
        [
            (
                f"1000 * {rate(COST, 'task, variant')} / "
                + rate(series("tunegate_requests_total", TASK, VARIANT, ANSWERED), "task, variant"),
                "{{task}} / {{variant}}",
            )
        ],
    ),
    panel(
        "Shadow cost per hour",
        "Spend on shadow calls (the paired comparison), in USD per hour by task and shadow "
        "variant; never part of the callers' cost.",
        "currencyUSD",
        [
            (
                f"3600 * {rate(SHADOW_COST, 'task, variant')}",
                "{{task}} / {{variant}}",
            )
        ],
        stack=True,
    ),
    row("Cache"),
    panel(
        "Cache hit ratio",
        "Hits among cache lookups that reached the store (bypasses excluded), by task.",
        "percentunit",
        [
            (
                rate(series("tunegate_cache_lookups_total", TASK, 'result="hit"'), "task")
                + " / "
                + rate(series("tunegate_cache_lookups_total", TASK, 'result!="bypass"'), "task"),
                "{{task}}",
            )
        ],
        max_value=1,
    ),
    panel(
        "Cache savings per hour",
        "Upstream cost the cache saved, in USD per hour, by task.",
        "currencyUSD",
        [(f"3600 * {rate(series('tunegate_cache_saved_usd_total', TASK), 'task')}", "{{task}}")],
    ),
    row("Quality"),
    panel(
        "JSON validity by variant",
        "Share of JSON checks that were valid, repaired or invalid, by the variant checked.",
        "percentunit",
        [
            (
                f"{rate(JSON_CHECKS, 'variant, result')}"
                f" / ignoring (result) group_left {rate(JSON_CHECKS, 'variant')}",
                "{{variant}} {{result}}",
            )
        ],
        max_value=1,
    ),
    panel(
        "Fallback rate by reason",
        "Moves to a fallback variant per answered request, by why the failing variant "
        "(filtered by $variant) failed.",
        "percentunit",
        [
            (
                rate(series("tunegate_fallbacks_total", TASK, 'from_variant=~"$variant"'), "reason")
                + " / scalar(sum(rate("
                + series("tunegate_requests_total", TASK, ANSWERED)
                + f"[{RATE}])))",
                "{{reason}}",
            )
        ],
    ),
    panel(
        "Upstream errors by kind",
        "Failed upstream calls per second by variant and kind.",
        "reqps",
        [
            (
                rate(series("tunegate_upstream_errors_total", TASK, VARIANT), "variant, kind"),
                "{{variant}} {{kind}}",
            )
        ],
        stack=True,
    ),
    panel(
        "Shadow calls by result",
        "Shadow calls per second by shadow variant and result: ok, invalid (failed the "
        "JSON check), error, skipped (too many in flight).",
        "reqps",
        [
            (
                rate(series("tunegate_shadow_requests_total", TASK, VARIANT), "variant, result"),
                "{{variant}} {{result}}",
            )
        ],
        stack=True,
    ),
    panel(
        "Feedback score by variant",
        "Mean feedback score (0..1) over the last hour, by the variant that served.",
        "percentunit",
        [
            (
                " / ".join(
                    f"sum by (variant) (increase({series(name, TASK, VARIANT)}[1h]))"
                    for name in FEEDBACK
                ),
                "{{variant}}",
            )
        ],
        max_value=1,
    ),
    row("Quality signals: output checks and judge"),
    panel(
        "Output checks passed",
        "Share of evaluated answers that passed each output check (output.checks), by "
        "variant and check kind, over the last 30 minutes; re-asked answers count each "
        "time. Alert TunegateCheckPassRateDrop fires below 80%.",
        "percentunit",
        [
            (
                rate(series(CHECKS, TASK, VARIANT, PASSED), "variant, check")
                + " / "
                + rate(series(CHECKS, TASK, VARIANT), "variant, check"),
                "{{variant}} {{check}}",
            )
        ],
        max_value=1,
    ),
    panel(
        "Judge score by variant",
        "Mean judge score (score/10) of judged samples over the last hour, by the variant "
        "that made the answer.",
        "percentunit",
        [
            (
                " / ".join(
                    f"sum by (variant) (increase({series(name, TASK, VARIANT)}[1h]))"
                    for name in ("tunegate_judge_score_sum", "tunegate_judge_score_count")
                ),
                "{{variant}}",
            )
        ],
        max_value=1,
    ),
    panel(
        "Judge calls by result, and their cost",
        "Judgements per second by kind (point, pair) and result (ok, invalid, error, "
        "skipped: more than 16 in flight); the judge's cost per hour, apart from callers'.",
        "reqps",
        [
            (
                rate(series("tunegate_judge_requests_total", TASK), "kind, result"),
                "{{kind}} {{result}}",
            ),
            (
                f"{rate(series('tunegate_judge_cost_usd_total', TASK), 'model')} * 3600",
                "USD/h {{model}}",
            ),
        ],
    ),
    difference("Judge preference, tuned win rate - 0.5", "preference", "percentunit"),
    row("Experiments"),
    panel(
        "Traffic split",
        "Share of traffic each variant gets now: the configured weights, or an adaptive "
        "split's current ones (routing.adaptive).",
        "percentunit",
        [(series("tunegate_experiment_weight", TASK, VARIANT), "{{task}} / {{variant}}")],
        max_value=1,
    ),
    table(
        "Decisions",
        "Each compared figure's decision (the better variant, equivalent or undecided), "
        "the overall recommendation, and the split's state (warming, exploring, stopped).",
        [
            (f"{series('tunegate_experiment_decision', TASK)} == 1", "{{figure}}"),
            (f"{series('tunegate_experiment_state', TASK)} == 1", "{{state}}"),
        ],
    ),
    difference("First-try JSON valid, difference", "first_try_valid", "percentunit"),
    difference("Cost per valid answer, difference", "cost_usd_per_valid_answer", "currencyUSD"),
    panel(
        "Experiment samples",
        "Samples per variant in the shared figures (requests the router chose it for; "
        "cache hits, forced variants and shadow calls excluded).",
        "short",
        [(series("tunegate_experiment_samples", TASK, VARIANT), "{{task}} / {{variant}}")],
    ),
    row("Fine-tuning capture"),
    panel(
        "Captured exchanges",
        "Sampled exchanges kept for fine-tuning per second (capture:), and those skipped: "
        "an opted-out key (capture: false), a failed check, or a stream.",
        "reqps",
        [(rate(series("tunegate_capture_total", TASK), "task, result"), "{{task}} {{result}}")],
        stack=True,
    ),
]


def variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": query,
        "refresh": 2,  # on time range change: new tasks and variants appear
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two panels per line, a row header across the whole width."""
    y = 0
    x = 0
    for number, item in enumerate(panels, start=1):
        item["id"] = number
        if item["type"] == "row":
            y += 0 if x == 0 else 8
            item["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
            y += 1
            x = 0
            continue
        item["gridPos"] = {"h": 8, "w": 12, "x": x, "y": y}
        x = 12 - x
        y += 8 if x == 0 else 0
    return panels


def dashboard() -> dict[str, Any]:
    return {
        "uid": "tunegate",
        "title": "tunegate",
        "description": "Traffic, latency, cost, cache and output quality per task and variant.",
        "tags": ["tunegate"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                variable("task", "label_values(tunegate_requests_total, task)"),
                variable(
                    "variant", 'label_values(tunegate_requests_total{task=~"$task"}, variant)'
                ),
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": layout(PANELS),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--check"]:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
