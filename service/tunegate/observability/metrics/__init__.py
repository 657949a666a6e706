"""Prometheus metrics (SPEC §5): every metric, its recording and its exposition. The only
module importing `prometheus_client`.

`Metrics.record(outcome)` turns one request's `Outcome` into samples. Label values come
from the config (task, variant, model) or fixed enums, never from a request:

- `variant` on request metrics is the serving variant; a request no variant served
  (error, invalid_output, deadline) is counted under the variant first tried, and one
  that never reached a variant (rejected) under `NO_VARIANT` ("none").
- Upstream, token, cost, error and JSON metrics are labelled by the variant of each call,
  so a failed attempt is charged to the variant that made it.
- Rejected requests are counted in `tunegate_requests_total` only: their latency says
  nothing about serving and would drag every percentile down.

Recording is on every request's path, so it only adds to plain dicts and lists (a few µs
per request); prometheus-client's own metric objects lock and validate on every call,
which costs several times more. The dicts are read when Prometheus scrapes.

Several worker processes (`tunegate serve --workers N`) use prometheus-client's
multiprocess mode: one directory of memory-mapped files, one set per worker, summed by
`render()` in whichever worker answers the scrape. Each worker copies its dicts into its
files within `FLUSH_DELAY_S` of any change, on `render()` and on `close()`. The library
chooses its storage when it is imported, from `PROMETHEUS_MULTIPROC_DIR`, so the
supervisor must set that variable to an empty directory before it starts the workers,
call `close()` as a worker shuts down, and `mark_process_dead(directory, pid)` after a
worker exits (so the in-flight gauge forgets it).
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from itertools import accumulate
from types import TracebackType
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from tunegate.errors import ConfigError
from tunegate.flow.background import Lull
from tunegate.observability.metrics.buffer import Counts, Observations
from tunegate.observability.metrics.families import (
    CACHE_LOOKUPS,
    CACHE_RESULTS,
    CACHE_SAVED,
    CAPTURE,
    CHECK_RESULTS,
    COST,
    EXPERIMENT_DECISION,
    EXPERIMENT_DIFFERENCE,
    EXPERIMENT_SAMPLES,
    EXPERIMENT_STATE,
    EXPERIMENT_WEIGHT,
    FALLBACKS,
    FEEDBACK_SCORE,
    JSON_VALIDATION,
    JUDGE_COST,
    JUDGE_REQUESTS,
    JUDGE_SCORE,
    OVERHEAD_DURATION,
    REQUEST_DURATION,
    REQUESTS,
    SHADOW_COST,
    SHADOW_REQUESTS,
    STORE_STATE,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    UPSTREAM_DURATION,
    UPSTREAM_ERRORS,
    Family,
    Labels,
)
from tunegate.observability.metrics.families import EXPERIMENT_FAMILIES as EXPERIMENT_FAMILIES
from tunegate.observability.metrics.families import FAMILIES as FAMILIES
from tunegate.observability.metrics.families import FLUSH_DELAY_S as FLUSH_DELAY_S
from tunegate.observability.metrics.families import IN_FLIGHT as IN_FLIGHT
from tunegate.observability.metrics.families import NO_VARIANT as NO_VARIANT

if TYPE_CHECKING:  # the gateway imports the whole request flow; records need none of it
    from tunegate.experiments.adaptive import Split
    from tunegate.experiments.document import ExperimentsDocument
    from tunegate.records import JudgeOutcome, Outcome, ShadowOutcome


class Metrics:
    """The gateway's metrics; one instance per process, made by the app factory.

    `multiprocess_dir`: the shared directory of `serve --workers N`; it must equal
    `PROMETHEUS_MULTIPROC_DIR` in this process's environment (see the module docstring).
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        # Totals since start; in multiprocess mode, what changed since the last flush.
        self._counts = {f: Counts() for f in FAMILIES if not f.is_histogram}
        self._observations = {
            f: Observations(f.buckets, le_values(f.buckets)) for f in FAMILIES if f.is_histogram
        }
        self._requests = self._counts[REQUESTS]
        self._duration = self._observations[REQUEST_DURATION]
        self._upstream = self._observations[UPSTREAM_DURATION]
        self._overhead = self._observations[OVERHEAD_DURATION]
        self._ttft = self._observations[TIME_TO_FIRST_TOKEN]
        self._tokens = self._counts[TOKENS]
        self._cost = self._counts[COST]
        self._cache_lookups = self._counts[CACHE_LOOKUPS]
        self._cache_saved = self._counts[CACHE_SAVED]
        self._json = self._counts[JSON_VALIDATION]
        self._checks = self._counts[CHECK_RESULTS]
        self._upstream_errors = self._counts[UPSTREAM_ERRORS]
        self._fallbacks = self._counts[FALLBACKS]
        self._feedback = self._observations[FEEDBACK_SCORE]
        self._in_flight = 0
        self._in_flight_tracker = _InFlight(self)
        self._lull = Lull(lambda: self._in_flight)
        self._tasks_seen: set[str] = set()
        self._flush_pending = False
        self._files: Files | None = None
        self._experiments: dict[str, dict[Family, dict[Labels, float]]] = {}
        self._registry = CollectorRegistry()
        self._registry.register(_ExperimentGauges(self._experiments))
        if multiprocess_dir is None:
            self._registry.register(self)
        else:
            check_multiprocess(multiprocess_dir)
            self._files = Files()
            # The collector registers itself; the call is untyped in the library.
            multiprocess.MultiProcessCollector(self._registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]

    def record(self, outcome: Outcome) -> None:
        """Record one finished request. Cheap (a few µs): called once per request."""
        task = outcome.task
        if task not in self._tasks_seen:
            self._first_sight(task)
        variant = outcome.served or outcome.chosen or NO_VARIANT
        self._requests.add((task, variant, outcome.cache, outcome.status))
        if outcome.cache_lookup is not None:
            self._cache_lookups.add((task, outcome.cache_lookup))
        if outcome.status != "rejected":
            self._record_work(outcome, task, variant)
        if self._files is not None and not self._flush_pending:
            self._schedule_flush()

    def _record_work(self, outcome: Outcome, task: str, variant: str) -> None:
        """Durations, upstream calls, JSON checks and fallbacks of a request that ran."""
        upstream_seconds = 0.0
        for call in outcome.calls:
            upstream_seconds += call.seconds
            name, model = call.variant, call.model
            self._upstream.observe((task, name, model), call.seconds)
            if call.error is not None:
                self._upstream_errors.add((task, name, call.error))
                continue
            self._tokens.add((task, name, model, "prompt"), call.prompt_tokens)
            self._tokens.add((task, name, model, "completion"), call.completion_tokens)
            self._cost.add((task, name, model), call.cost_usd)
        self._duration.observe((task, variant, outcome.cache), outcome.seconds)
        # `Outcome.overhead_seconds`, from the sum this loop made anyway: the property
        # would sum the calls a second time (a fifth of what recording costs).
        overhead = outcome.seconds - upstream_seconds - outcome.store_seconds
        self._overhead.observe((task,), overhead if overhead > 0.0 else 0.0)
        if outcome.ttft_seconds is not None:
            self._ttft.observe((task, variant), outcome.ttft_seconds)
        if outcome.saved_usd:
            self._cache_saved.add((task,), outcome.saved_usd)
        for checked, result in outcome.json_results:
            self._json.add((task, checked, result))
        for checked, verdict in outcome.check_results:
            for check in verdict.results:
                self._checks.add((task, checked, check.kind, "pass" if check.passed else "fail"))
        for from_variant, to_variant, reason in outcome.fallbacks:
            self._fallbacks.add((task, from_variant, to_variant, reason))

    def record_shadow(self, outcome: ShadowOutcome) -> None:
        """Record one shadow call: its result and its cost, apart from the callers'."""
        self._counts[SHADOW_REQUESTS].add((outcome.task, outcome.shadow, outcome.status))
        if outcome.cost_usd:
            self._counts[SHADOW_COST].add(
                (outcome.task, outcome.shadow, outcome.model), outcome.cost_usd
            )
        if self._files is not None and not self._flush_pending:
            self._schedule_flush()

    def record_judgement(self, outcome: JudgeOutcome) -> None:
        """Record one judgement: its result, its cost (apart) and a pointwise score."""
        self._counts[JUDGE_REQUESTS].add((outcome.task, outcome.kind, outcome.status))
        if outcome.cost_usd:
            self._counts[JUDGE_COST].add((outcome.task, outcome.model), outcome.cost_usd)
        if outcome.score is not None:
            self._observations[JUDGE_SCORE].observe(
                (outcome.task, outcome.variant), outcome.score / 10
            )
        if self._files is not None and not self._flush_pending:
            self._schedule_flush()

    def publish_experiment(self, task: str, document: ExperimentsDocument, split: Split) -> None:
        """Replace `task`'s experiment gauges with those of its current document."""
        from tunegate.experiments.adaptive import (
            SPLIT_STATES,  # the experiments need not load with this
        )

        gauges: dict[Family, dict[Labels, float]] = {
            EXPERIMENT_WEIGHT: {(task, v): w for v, w in split.weights.items()},
            EXPERIMENT_STATE: {(task, s): float(s == split.state) for s in SPLIT_STATES},
            EXPERIMENT_SAMPLES: {
                (task, v): float(f.requests) for v, f in document.variants.items()
            },
            EXPERIMENT_DIFFERENCE: {},
            EXPERIMENT_DECISION: {},
        }
        comparison = document.comparison
        if comparison:
            a, b = comparison.a, comparison.b
            for figure, c in comparison.figures.items():
                bounds = {"estimate": c.difference}
                for kind, interval in (("ci", c.ci95), ("cs", c.anytime_ci95)):
                    if interval:
                        bounds[f"{kind}_low"], bounds[f"{kind}_high"] = interval
                for bound, number in bounds.items():
                    if number is not None and math.isfinite(number):
                        gauges[EXPERIMENT_DIFFERENCE][(task, figure, bound)] = number
                named = {"a_better": a, "b_better": b}.get(c.verdict, c.verdict)
                gauges[EXPERIMENT_DECISION][(task, figure, named)] = 1.0
        overall = document.decision.recommendation or "undecided"
        gauges[EXPERIMENT_DECISION][(task, "overall", overall)] = 1.0
        self._experiments[task] = gauges

    def watch_store(self, state: Callable[[], str], states: Sequence[str]) -> None:
        """Export `tunegate_store_state` from `state()`, read at each scrape (the store
        reports no event; this process's view, like the experiment gauges)."""
        self._registry.register(_StoreState(state, tuple(states)))

    def record_capture(self, task: str, result: str) -> None:
        """Count one sampled exchange, `kept` or `skipped` (SPEC §9)."""
        self._counts[CAPTURE].add((task, result))
        if self._files is not None and not self._flush_pending:
            self._schedule_flush()

    def record_feedback(self, task: str, variant: str, score: float) -> None:
        """Record a feedback score (0..1; true/false as 1/0) for the serving variant."""
        self._feedback.observe((task, variant), score)
        if self._files is not None and not self._flush_pending:
            self._schedule_flush()

    def track_in_flight(self) -> AbstractContextManager[None]:
        """A context manager counting the enclosed request in
        `tunegate_in_flight_requests` (reusable, re-entrant: the count is all it holds)."""
        return self._in_flight_tracker

    @property
    def lull(self) -> Lull:
        """When this process serves no task request (for the judge's background work)."""
        return self._lull

    @property
    def in_flight(self) -> int:
        """Task requests this process is serving now (load shedding and the drain read
        it; the gauge shows it)."""
        return self._in_flight

    def render(self) -> tuple[bytes, str]:
        """The exposition and its content type: Prometheus text format 0.0.4, which every
        Prometheus version reads; in multiprocess mode, summed over every worker's files."""
        self.flush()
        return generate_latest(self._registry), CONTENT_TYPE_PLAIN_0_0_4

    def flush(self) -> None:
        """Multiprocess mode: move what was recorded since the last flush into this
        worker's files. Without a directory there is nothing to do."""
        self._flush_pending = False
        if self._files is not None:
            self._files.write(self._counts, self._observations, self._in_flight)

    def close(self) -> None:
        """Flush; call it as the worker shuts down, so its last requests are counted."""
        self.flush()

    def collect(self) -> Iterable[Metric]:
        """The exposition of one process (prometheus-client's collector protocol)."""
        for family, counts in self._counts.items():
            counter = CounterMetricFamily(family.name, family.doc, labels=family.labels)
            for labels, value in list(counts.items()):
                counter.add_metric(labels, value)
            yield counter
        for family, observations in self._observations.items():
            histogram = HistogramMetricFamily(family.name, family.doc, labels=family.labels)
            for labels, cells in list(observations.items()):
                buckets = list(zip(observations.le, accumulate(cells[:-1]), strict=True))
                histogram.add_metric(labels, buckets, cells[-1])
            yield histogram
        yield GaugeMetricFamily(IN_FLIGHT.name, IN_FLIGHT.doc, value=self._in_flight)

    def _schedule_flush(self) -> None:
        self._flush_pending = True
        try:
            asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self.flush)
        except RuntimeError:  # no event loop in this thread: flush at once
            self.flush()

    def _first_sight(self, task: str) -> None:
        # Series that exist at zero make ratios read 0 instead of "no data".
        for result in CACHE_RESULTS:
            self._cache_lookups.add((task, result), 0.0)
        self._cache_saved.add((task,), 0.0)
        self._tasks_seen.add(task)


class _ExperimentGauges:
    """The experiment gauges (`Metrics.publish_experiment`), as a collector."""

    def __init__(self, by_task: dict[str, dict[Family, dict[Labels, float]]]) -> None:
        self._by_task = by_task

    def collect(self) -> Iterable[Metric]:
        for family in EXPERIMENT_FAMILIES:
            gauge = GaugeMetricFamily(family.name, family.doc, labels=family.labels)
            for gauges in list(self._by_task.values()):
                for labels, number in gauges.get(family, {}).items():
                    gauge.add_metric(labels, number)
            yield gauge


class _StoreState:
    """`tunegate_store_state` (`Metrics.watch_store`), as a collector."""

    def __init__(self, state: Callable[[], str], states: tuple[str, ...]) -> None:
        self._state = state
        self._states = states

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(STORE_STATE.name, STORE_STATE.doc, labels=STORE_STATE.labels)
        current = self._state()
        for state in self._states:
            gauge.add_metric((state,), float(state == current))
        yield gauge


class _InFlight(AbstractContextManager[None]):
    """`Metrics.track_in_flight()`: a class, not a generator, as it runs on every request
    (a generator-based context manager costs several times more)."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def __enter__(self) -> None:
        self._metrics._in_flight += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        metrics = self._metrics
        metrics._in_flight -= 1
        if not metrics._in_flight:
            metrics._lull.begin()
        if metrics._files is not None and not metrics._flush_pending:
            metrics._schedule_flush()


# prometheus-client's multiprocess mode (`tunegate serve --workers N`): each worker's
# buffered counts go into its memory-mapped files through the library's own metric
# objects, so the library's collector can read and sum them.
class Files:
    """This worker's memory-mapped files (prometheus-client's multiprocess mode), written
    through the library's own metric objects so its collector can read and sum them."""

    def __init__(self) -> None:
        self._counters = {
            f: Counter(f.name, f.doc, f.labels, registry=None)
            for f in FAMILIES
            if not f.is_histogram
        }
        self._histograms = {
            f: Histogram(f.name, f.doc, f.labels, registry=None, buckets=f.buckets)
            for f in FAMILIES
            if f.is_histogram
        }
        self._in_flight = Gauge(
            IN_FLIGHT.name, IN_FLIGHT.doc, registry=None, multiprocess_mode="livesum"
        )

    def write(
        self,
        counts: dict[Family, Counts],
        observations: dict[Family, Observations],
        in_flight: int,
    ) -> None:
        """Add `counts` and `observations` to the files and empty them; set the gauge."""
        for family, table in counts.items():
            counter = self._counters[family]
            for labels, value in list(table.items()):
                counter.labels(*labels).inc(value)
            table.clear()
        for family, cells_by_labels in observations.items():
            histogram = self._histograms[family]
            for labels, cells in list(cells_by_labels.items()):
                add_cells(histogram.labels(*labels), cells)
            cells_by_labels.clear()
        self._in_flight.set(in_flight)


def mark_process_dead(multiprocess_dir: str, pid: int) -> None:
    """Forget a dead worker's live gauges (its in-flight count); call it from the
    supervisor when worker `pid` exits. Its counters and histograms stay, as they must."""
    multiprocess.mark_process_dead(pid, multiprocess_dir)  # type: ignore[no-untyped-call]


def check_multiprocess(directory: str) -> None:
    # prometheus_client itself reads this variable (at import, and for its file paths);
    # this only checks that it agrees with the settings.
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not getattr(values.ValueClass, "_multiprocess", False) or configured is None:
        raise ConfigError(
            f"metrics: a multiprocess directory ({directory}) was given, but "
            "PROMETHEUS_MULTIPROC_DIR was not set when prometheus_client was imported; "
            "set it in the environment before starting the workers."
        )
    if os.path.realpath(configured) != os.path.realpath(directory):
        raise ConfigError(
            f"metrics: the multiprocess directory {directory} differs from "
            f"PROMETHEUS_MULTIPROC_DIR={configured}; use one directory."
        )
    if not os.path.isdir(directory):
        raise ConfigError(f"metrics: PROMETHEUS_MULTIPROC_DIR={directory} is not a directory.")


def add_cells(child: Histogram, cells: list[float]) -> None:
    """Add buffered cells (a count per bucket, then the sum) to a histogram's child.

    prometheus-client has no public "add these bucket counts", and observing each value
    again would cost what the buffering saves, so this writes the library's own cells,
    `_buckets` and `_sum`: the one place that reaches into it. A library that changes
    them fails here, loudly (tests/test_metrics.py runs it against the pinned version)."""
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if not isinstance(buckets, list) or len(buckets) != len(cells) - 1 or total is None:
        raise RuntimeError(
            "prometheus_client's Histogram no longer keeps `_buckets` and `_sum` as this "
            "gateway expects; pin the version in pyproject.toml or update metrics/__init__.py"
        )
    for cell, count in zip(buckets, cells[:-1], strict=True):
        if count:
            cell.inc(count)
    total.inc(cells[-1])


def le_values(bounds: tuple[float, ...]) -> list[str]:
    """The `le` label values of `bounds` and +Inf, spelled as prometheus-client does."""
    return [floatToGoString(b) for b in (*bounds, float("inf"))]  # type: ignore[no-untyped-call]
