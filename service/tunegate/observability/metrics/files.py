"""prometheus-client's multiprocess mode (`tunegate serve --workers N`): each worker's
buffered counts go into its memory-mapped files through the library's own metric objects,
so the library's collector can read and sum them."""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, multiprocess, values

from tunegate.errors import ConfigError
from tunegate.observability.metrics.buffer import Counts, Observations
from tunegate.observability.metrics.families import FAMILIES, IN_FLIGHT, Family


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
            "gateway expects; pin the version in pyproject.toml or update metrics/files.py"
        )
    for cell, count in zip(buckets, cells[:-1], strict=True):
        if count:
            cell.inc(count)
    total.inc(cells[-1])
