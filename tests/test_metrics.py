"""`tunegate.observability.metrics`: outcomes recorded into a fresh `Metrics`, read back from its
Prometheus text exposition as a scraper would; multiprocess mode across real processes."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import Histogram
from prometheus_client.parser import text_string_to_metric_families

from tests.documents import compared, figure
from tests.testkit.outcomes import served
from tunegate.errors import ConfigError
from tunegate.experiments.adaptive import Split
from tunegate.experiments.document import ExperimentsDocument
from tunegate.observability.metrics import (
    FLUSH_DELAY_S,
    NO_VARIANT,
    Metrics,
    add_cells,
    mark_process_dead,
)
from tunegate.quality.checks import CheckResult, CheckVerdict
from tunegate.records import JudgeOutcome, Outcome, ShadowOutcome, UpstreamCall, rejected

TUNED = "ft:gpt-3.5-turbo-0613:acme::7qTVM5AR"
BASE = "gpt-3.5-turbo"
TASK = "ticket-triage"

Sample = tuple[str, frozenset[tuple[str, str]]]

# SPEC §5: name, type, label names (histograms also carry `le` on their buckets).
SPEC_METRICS = {
    "tunegate_requests": ("counter", {"task", "variant", "cache", "outcome"}),
    "tunegate_request_duration_seconds": ("histogram", {"task", "variant", "cache"}),
    "tunegate_upstream_duration_seconds": ("histogram", {"task", "variant", "model"}),
    "tunegate_overhead_duration_seconds": ("histogram", {"task"}),
    "tunegate_time_to_first_token_seconds": ("histogram", {"task", "variant"}),
    "tunegate_tokens": ("counter", {"task", "variant", "model", "kind"}),
    "tunegate_cost_usd": ("counter", {"task", "variant", "model"}),
    "tunegate_cache_lookups": ("counter", {"task", "result"}),
    "tunegate_cache_saved_usd": ("counter", {"task"}),
    "tunegate_json_validation": ("counter", {"task", "variant", "result"}),
    "tunegate_upstream_errors": ("counter", {"task", "variant", "kind"}),
    "tunegate_fallbacks": ("counter", {"task", "from_variant", "to_variant", "reason"}),
    "tunegate_feedback_score": ("histogram", {"task", "variant"}),
    "tunegate_in_flight_requests": ("gauge", set()),
    # Beyond SPEC §5, listed in the README.
    "tunegate_shadow_requests": ("counter", {"task", "variant", "result"}),
    "tunegate_shadow_cost_usd": ("counter", {"task", "variant", "model"}),
    "tunegate_check_results": ("counter", {"task", "variant", "check", "result"}),
    "tunegate_judge_requests": ("counter", {"task", "kind", "result"}),
    "tunegate_judge_cost_usd": ("counter", {"task", "model"}),
    "tunegate_judge_score": ("histogram", {"task", "variant"}),
    "tunegate_capture": ("counter", {"task", "result"}),
    "tunegate_experiment_weight": ("gauge", {"task", "variant"}),
    "tunegate_experiment_state": ("gauge", {"task", "state"}),
    "tunegate_experiment_samples": ("gauge", {"task", "variant"}),
    "tunegate_experiment_difference": ("gauge", {"task", "figure", "bound"}),
    "tunegate_experiment_decision": ("gauge", {"task", "figure", "decision"}),
}


def outcome(**fields: object) -> Outcome:
    """A served, first-try-valid JSON request on the tuned variant; `fields` override."""
    return served(**{"request_id": "r1", "task": TASK, **fields})


def scrape(metrics: Metrics) -> dict[Sample, float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return parse(body.decode())


def parse(text: str) -> dict[Sample, float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Mapping[Sample, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Mapping[Sample, float], name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample_name, labels in samples if sample_name == name]


def shadow_outcome(**fields: object) -> ShadowOutcome:
    """A shadow call of few_shot after tuned answered, agreeing; `fields` override."""
    values: dict[str, object] = {
        "request_id": "r1",
        "task": TASK,
        "primary": "tuned",
        "shadow": "few_shot",
        "model": BASE,
        "status": "ok",
        "agree": True,
        "seconds": 0.02,
        "primary_seconds": 0.012,
        "cost_usd": 0.0004,
        "primary_cost_usd": 0.0001,
    }
    values.update(fields)
    return ShadowOutcome(**values)  # type: ignore[arg-type]  # a test builder over every field


EXPLORING = Split({"tuned": 0.7, "few_shot": 0.3}, "exploring", "P(tuned better) = 0.7")


VALID = figure(0.08, (0.03, 0.13), "a_better", "tuned better", anytime=(0.01, 0.15))
LATENCY = figure(-0.01, (-0.05, 0.03))


def experiment_document() -> ExperimentsDocument:
    """An experiments document with the parts the gauges read."""
    return compared((120, 80), {"first_try_valid": VALID, "latency_s": LATENCY})


def test_every_spec_metric_is_exposed_with_its_type_and_labels() -> None:
    metrics = Metrics()
    checked = (("tuned", CheckVerdict((CheckResult("language", True),))),)
    metrics.record(outcome(ttft_seconds=0.004, saved_usd=0.001, check_results=checked))
    metrics.record(
        outcome(
            status="fallback",
            served="few_shot",
            calls=(
                UpstreamCall("tuned", TUNED, 0.5, error="server_error"),
                UpstreamCall("few_shot", BASE, 0.01, 300, 9, 0.0002),
            ),
            fallbacks=(("tuned", "few_shot", "server_error"),),
        )
    )
    metrics.record_feedback(TASK, "tuned", 1.0)
    metrics.record_capture(TASK, "kept")
    metrics.record_shadow(shadow_outcome())
    metrics.record_judgement(
        JudgeOutcome("r1", TASK, "point", "gpt-4o-mini", "ok", "tuned", score=8.0, cost_usd=1e-5)
    )
    metrics.publish_experiment(TASK, experiment_document(), EXPLORING)
    with metrics.track_in_flight():
        text = metrics.render()[0].decode()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name: f.type for name, f in families.items()} == {
        name: kind for name, (kind, _) in SPEC_METRICS.items()
    }
    for name, (_, labels) in SPEC_METRICS.items():
        assert families[name].samples, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)


def test_a_served_request_counts_request_upstream_tokens_cost_cache_and_json() -> None:
    metrics = Metrics()
    metrics.record(outcome())
    samples = scrape(metrics)

    labels = {"task": TASK, "variant": "tuned"}
    assert value(samples, "tunegate_requests_total", **labels, cache="miss", outcome="ok") == 1
    duration = {**labels, "cache": "miss"}
    assert value(samples, "tunegate_request_duration_seconds_count", **duration) == 1
    assert value(samples, "tunegate_request_duration_seconds_sum", **duration) == 0.0125
    assert value(samples, "tunegate_request_duration_seconds_bucket", **duration, le="0.01") == 0
    assert value(samples, "tunegate_request_duration_seconds_bucket", **duration, le="0.025") == 1
    assert value(samples, "tunegate_request_duration_seconds_bucket", **duration, le="+Inf") == 1

    upstream = {**labels, "model": TUNED}
    assert value(samples, "tunegate_upstream_duration_seconds_count", **upstream) == 1
    assert value(samples, "tunegate_upstream_duration_seconds_sum", **upstream) == 0.012
    assert value(samples, "tunegate_tokens_total", **upstream, kind="prompt") == 120
    assert value(samples, "tunegate_tokens_total", **upstream, kind="completion") == 12
    assert value(samples, "tunegate_cost_usd_total", **upstream) == 0.000432
    assert value(samples, "tunegate_json_validation_total", **labels, result="valid") == 1

    for result, expected in {"miss": 1, "hit": 0, "bypass": 0, "error": 0}.items():
        assert value(samples, "tunegate_cache_lookups_total", task=TASK, result=result) == expected
    assert value(samples, "tunegate_cache_saved_usd_total", task=TASK) == 0
    assert not series(samples, "tunegate_upstream_errors_total")
    assert not series(samples, "tunegate_fallbacks_total")
    assert not series(samples, "tunegate_time_to_first_token_seconds_count")


def test_overhead_is_the_time_not_spent_on_upstream_or_store() -> None:
    metrics = Metrics()
    served = outcome(seconds=0.0125, store_seconds=0.0003)
    metrics.record(served)
    # Upstream took longer than the whole (clock skew): overhead is 0, never negative.
    metrics.record(outcome(seconds=0.010))
    samples = scrape(metrics)

    assert value(samples, "tunegate_overhead_duration_seconds_count", task=TASK) == 2
    assert value(samples, "tunegate_overhead_duration_seconds_sum", task=TASK) == pytest.approx(
        served.overhead_seconds
    )
    assert served.overhead_seconds == pytest.approx(0.0002)
    bucket = "tunegate_overhead_duration_seconds_bucket"
    assert value(samples, bucket, task=TASK, le="2.5e-05") == 1
    assert value(samples, bucket, task=TASK, le="0.0001") == 1
    assert value(samples, bucket, task=TASK, le="0.00025") == 2
    assert value(samples, bucket, task=TASK, le="0.1") == 2


def test_buckets_reach_from_microseconds_to_two_minutes() -> None:
    metrics = Metrics()
    metrics.record(outcome(seconds=120.0, calls=(UpstreamCall("tuned", TUNED, 119.0),)))
    metrics.record(outcome(seconds=121.0, calls=()))
    samples = scrape(metrics)

    def bounds(name: str) -> list[float]:
        return sorted(float(labels["le"]) for labels in series(samples, name))

    assert bounds("tunegate_request_duration_seconds_bucket")[-2:] == [120.0, math.inf]
    assert bounds("tunegate_upstream_duration_seconds_bucket")[-2:] == [120.0, math.inf]
    assert bounds("tunegate_overhead_duration_seconds_bucket")[0] == 0.000025
    assert bounds("tunegate_overhead_duration_seconds_bucket")[-2:] == [0.1, math.inf]
    duration = {"task": TASK, "variant": "tuned", "cache": "miss"}
    bucket = "tunegate_request_duration_seconds_bucket"
    # A value equal to a bound is in that bucket (Prometheus buckets are "<=").
    assert value(samples, bucket, **duration, le="120.0") == 1
    assert value(samples, bucket, **duration, le="+Inf") == 2


def test_a_fallback_is_labelled_by_the_serving_variant_and_charges_each_attempt() -> None:
    metrics = Metrics()
    metrics.record(
        outcome(
            status="fallback",
            served="few_shot",
            served_model=BASE,
            calls=(
                UpstreamCall("tuned", TUNED, 0.010, 100, 20, 0.0004),  # answered, invalid
                UpstreamCall("tuned", TUNED, 0.011, 140, 20, 0.0005),  # re-ask, invalid
                UpstreamCall("few_shot", BASE, 5.0, error="timeout"),
                UpstreamCall("few_shot", BASE, 0.020, 400, 15, 0.0002),  # retry, valid
            ),
            json_results=(("tuned", "invalid"), ("tuned", "invalid"), ("few_shot", "repaired")),
            fallbacks=(("tuned", "few_shot", "invalid_output"),),
        )
    )
    samples = scrape(metrics)

    assert series(samples, "tunegate_requests_total") == [
        {"task": TASK, "variant": "few_shot", "cache": "miss", "outcome": "fallback"}
    ]
    json = "tunegate_json_validation_total"
    assert value(samples, json, task=TASK, variant="tuned", result="invalid") == 2
    assert value(samples, json, task=TASK, variant="few_shot", result="repaired") == 1
    assert len(series(samples, json)) == 2
    tuned = {"task": TASK, "variant": "tuned", "model": TUNED}
    few_shot = {"task": TASK, "variant": "few_shot", "model": BASE}
    assert value(samples, "tunegate_cost_usd_total", **tuned) == pytest.approx(0.0009)
    assert value(samples, "tunegate_cost_usd_total", **few_shot) == 0.0002
    assert value(samples, "tunegate_tokens_total", **tuned, kind="prompt") == 240
    assert value(samples, "tunegate_tokens_total", **few_shot, kind="completion") == 15
    assert value(samples, "tunegate_upstream_duration_seconds_count", **tuned) == 2
    assert value(samples, "tunegate_upstream_duration_seconds_count", **few_shot) == 2
    errors = series(samples, "tunegate_upstream_errors_total")
    assert errors == [{"task": TASK, "variant": "few_shot", "kind": "timeout"}]
    assert value(samples, "tunegate_fallbacks_total", task=TASK, from_variant="tuned",
                 to_variant="few_shot", reason="invalid_output") == 1  # fmt: skip


def test_a_failed_request_is_counted_under_the_variant_first_tried() -> None:
    metrics = Metrics()
    metrics.record(
        outcome(
            status="error",
            served=None,
            served_model=None,
            calls=(
                UpstreamCall("tuned", TUNED, 0.2, error="server_error"),
                UpstreamCall("few_shot", BASE, 0.3, error="rate_limited"),
            ),
            json_results=(),
            fallbacks=(("tuned", "few_shot", "server_error"),),
        )
    )
    samples = scrape(metrics)

    assert series(samples, "tunegate_requests_total") == [
        {"task": TASK, "variant": "tuned", "cache": "miss", "outcome": "error"}
    ]
    assert not series(samples, "tunegate_tokens_total")
    assert not series(samples, "tunegate_cost_usd_total")
    error = "tunegate_upstream_errors_total"
    assert value(samples, error, task=TASK, variant="tuned", kind="server_error") == 1
    assert value(samples, error, task=TASK, variant="few_shot", kind="rate_limited") == 1


def test_a_rejected_request_is_counted_once_under_no_variant() -> None:
    metrics = Metrics()
    metrics.record(rejected("r2", None, 0.0004))
    metrics.record(rejected("r3", TASK, 0.0002))
    samples = scrape(metrics)

    requests = "tunegate_requests_total"
    for task in ("_unknown", TASK):
        labels = {"task": task, "variant": NO_VARIANT, "cache": "bypass", "outcome": "rejected"}
        assert value(samples, requests, **labels) == 1
        assert value(samples, "tunegate_cache_lookups_total", task=task, result="bypass") == 0
    assert not series(samples, "tunegate_request_duration_seconds_count")
    assert not series(samples, "tunegate_overhead_duration_seconds_count")


def test_a_cache_hit_counts_savings_and_no_validation() -> None:
    metrics = Metrics()
    metrics.record(
        outcome(
            cache="hit",
            cache_lookup="hit",
            calls=(),
            seconds=0.0009,
            saved_usd=0.000432,
            json_results=(),
        )
    )
    metrics.record(outcome(cache="miss", cache_lookup="error"))
    samples = scrape(metrics)

    assert value(samples, "tunegate_cache_lookups_total", task=TASK, result="hit") == 1
    assert value(samples, "tunegate_cache_lookups_total", task=TASK, result="error") == 1
    assert value(samples, "tunegate_cache_saved_usd_total", task=TASK) == 0.000432
    hit = {"task": TASK, "variant": "tuned", "cache": "hit"}
    assert value(samples, "tunegate_request_duration_seconds_count", **hit) == 1
    # A hit checks nothing: only the miss's answer counts as a validation.
    valid = {"task": TASK, "variant": "tuned", "result": "valid"}
    assert value(samples, "tunegate_json_validation_total", **valid) == 1


def test_streams_record_time_to_first_token() -> None:
    metrics = Metrics()
    metrics.record(outcome(ttft_seconds=0.003, json_results=()))
    metrics.record(outcome(json_results=()))  # not a stream
    samples = scrape(metrics)

    labels = {"task": TASK, "variant": "tuned"}
    assert value(samples, "tunegate_time_to_first_token_seconds_count", **labels) == 1
    assert value(samples, "tunegate_time_to_first_token_seconds_sum", **labels) == 0.003


def test_feedback_scores_fill_buckets_from_zero_to_one() -> None:
    metrics = Metrics()
    for score in (0.0, 0.5, 1.0, 1.0):
        metrics.record_feedback(TASK, "few_shot", score)
    samples = scrape(metrics)

    labels = {"task": TASK, "variant": "few_shot"}
    bucket = "tunegate_feedback_score_bucket"
    assert value(samples, bucket, **labels, le="0.0") == 1
    assert value(samples, bucket, **labels, le="0.4") == 1
    assert value(samples, bucket, **labels, le="0.5") == 2
    assert value(samples, bucket, **labels, le="1.0") == 4
    assert value(samples, "tunegate_feedback_score_sum", **labels) == 2.5


def test_in_flight_counts_the_requests_being_served() -> None:
    metrics = Metrics()
    gauge = "tunegate_in_flight_requests"
    with metrics.track_in_flight():
        with metrics.track_in_flight():
            assert value(scrape(metrics), gauge) == 2
        assert value(scrape(metrics), gauge) == 1
    with pytest.raises(RuntimeError), metrics.track_in_flight():
        raise RuntimeError("the request failed")
    assert value(scrape(metrics), gauge) == 0


@pytest.mark.anyio
async def test_the_lull_begins_when_the_last_request_in_flight_ends() -> None:
    metrics = Metrics()
    with metrics.track_in_flight():
        with metrics.track_in_flight():
            waiter = asyncio.create_task(metrics.lull.wait(patience_s=60))
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not waiter.done()  # one request is still being served
    await asyncio.wait_for(waiter, timeout=5)


def test_a_multiprocess_directory_needs_the_environment_set_before_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(str(tmp_path))


# A worker process: records OUTCOMES (an expression) and then does ACTION.
WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from tunegate.records import Outcome, UpstreamCall
    from tunegate.observability.metrics import Metrics
    from tests.test_metrics import OUTCOMES

    metrics = Metrics(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    action = sys.argv[1]
    if action == "crash-in-flight":
        for o in OUTCOMES:
            metrics.record(o)
        request = metrics.track_in_flight()  # held, so it is never exited
        request.__enter__()
        metrics.flush()
        print(os.getpid(), flush=True)
        os._exit(0)
    elif action == "serve":
        for o in OUTCOMES[:2]:
            with metrics.track_in_flight():
                metrics.record(o)
        metrics.close()
    elif action == "scrape":
        sys.stdout.write(metrics.render()[0].decode())
    elif action == "in-loop":
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        def on_disk():
            registry = CollectorRegistry()
            MultiProcessCollector(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
            return b"tunegate_requests_total{" in generate_latest(registry)

        async def main():
            metrics.record(OUTCOMES[0])
            before = on_disk()
            await asyncio.sleep(float(sys.argv[2]))
            print(before, on_disk())

        asyncio.run(main())
    """
)

OUTCOMES = (
    outcome(),
    outcome(
        status="fallback",
        served="few_shot",
        calls=(
            UpstreamCall("tuned", TUNED, 0.5, error="server_error"),
            UpstreamCall("few_shot", BASE, 0.01, 300, 9, 0.0002),
        ),
        fallbacks=(("tuned", "few_shot", "server_error"),),
        ttft_seconds=0.002,
    ),
    rejected("r9", None, 0.001),
)


def worker(directory: Path, *argv: str) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_multiprocess_workers_add_up_and_dead_workers_leave_the_gauge(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    crashed_pid = int(worker(directory, "crash-in-flight"))
    worker(directory, "serve")

    samples = parse(worker(directory, "scrape"))
    single = Metrics()
    for o in (*OUTCOMES, *OUTCOMES[:2]):
        single.record(o)
    expected = scrape(single)
    assert value(samples, "tunegate_in_flight_requests") == 1  # the crashed worker's
    del samples[("tunegate_in_flight_requests", frozenset())]
    del expected[("tunegate_in_flight_requests", frozenset())]
    assert samples == pytest.approx(expected)
    ok = {"task": TASK, "variant": "tuned", "cache": "miss", "outcome": "ok"}
    assert value(samples, "tunegate_requests_total", **ok) == 2

    mark_process_dead(str(directory), crashed_pid)
    after = parse(worker(directory, "scrape"))
    assert value(after, "tunegate_in_flight_requests") == 0
    assert value(after, "tunegate_requests_total", **ok) == 2


def test_a_worker_writes_its_files_within_the_flush_delay(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    before, after = worker(directory, "in-loop", str(FLUSH_DELAY_S + 0.5)).split()
    assert (before, after) == ("False", "True")


def test_shadow_calls_count_by_result_and_their_cost_stays_apart() -> None:
    metrics = Metrics()
    metrics.record(outcome())
    metrics.record_shadow(shadow_outcome())
    metrics.record_shadow(shadow_outcome(status="error", agree=None, cost_usd=0.0))
    metrics.record_shadow(shadow_outcome(status="skipped", agree=None, cost_usd=0.0))
    samples = scrape(metrics)
    shadow = "tunegate_shadow_requests_total"
    for result in ("ok", "error", "skipped"):
        assert value(samples, shadow, task=TASK, variant="few_shot", result=result) == 1
    assert value(
        samples, "tunegate_shadow_cost_usd_total", task=TASK, variant="few_shot", model=BASE
    ) == pytest.approx(0.0004)
    # The callers' cost counter holds the primary's call only.
    assert [labels["variant"] for labels in series(samples, "tunegate_cost_usd_total")] == ["tuned"]


def test_experiment_gauges_carry_the_split_bounds_and_decisions() -> None:
    metrics = Metrics()
    metrics.publish_experiment(TASK, experiment_document(), EXPLORING)
    samples = scrape(metrics)
    weight = "tunegate_experiment_weight"
    assert value(samples, weight, task=TASK, variant="tuned") == 0.7
    assert value(samples, weight, task=TASK, variant="few_shot") == 0.3
    states = {
        labels["state"]: value(samples, "tunegate_experiment_state", **labels)
        for labels in series(samples, "tunegate_experiment_state")
    }
    assert states == {"configured": 0, "warming": 0, "exploring": 1, "stopped": 0}
    difference = "tunegate_experiment_difference"
    bounds = {
        labels["bound"]: value(samples, difference, **labels)
        for labels in series(samples, difference)
        if labels["figure"] == "first_try_valid"
    }
    assert bounds == {
        "estimate": 0.08,
        "ci_low": 0.03,
        "ci_high": 0.13,
        "cs_low": 0.01,
        "cs_high": 0.15,
    }
    decisions = {
        (labels["figure"], labels["decision"])
        for labels in series(samples, "tunegate_experiment_decision")
    }
    assert decisions == {
        ("first_try_valid", "tuned"),
        ("latency_s", "undecided"),
        ("overall", "undecided"),
    }
    # A later document replaces the task's gauges: no stale series stay behind.
    later = compared((120, 80), {"first_try_valid": VALID})
    metrics.publish_experiment(TASK, later, EXPLORING)
    assert ("latency_s", "undecided") not in {
        (labels["figure"], labels["decision"])
        for labels in series(scrape(metrics), "tunegate_experiment_decision")
    }


def test_buffered_cells_land_in_the_librarys_histogram_and_a_change_there_fails_loudly() -> None:
    histogram = Histogram("cells_seconds", "cells", ("task",), registry=None, buckets=(0.1, 1.0))
    add_cells(histogram.labels("t"), [2.0, 0.0, 1.0, 3.5])  # per bucket, +Inf, then the sum
    samples = {
        (s.name, s.labels.get("le")): s.value for m in histogram.collect() for s in m.samples
    }
    assert samples[("cells_seconds_bucket", "0.1")] == 2.0
    assert samples[("cells_seconds_bucket", "1.0")] == 2.0
    assert samples[("cells_seconds_bucket", "+Inf")] == 3.0
    assert samples[("cells_seconds_count", None)] == 3.0
    assert samples[("cells_seconds_sum", None)] == 3.5
    with pytest.raises(RuntimeError, match="no longer keeps `_buckets` and `_sum`"):
        add_cells(object(), [1.0, 0.0])  # type: ignore[arg-type]  # what a changed library is
