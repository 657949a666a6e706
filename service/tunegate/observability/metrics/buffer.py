"""What one process recorded and has not exposed or written yet: counters and histogram
cells by label values, as plain dicts (recording is on every request's path)."""

from __future__ import annotations

from bisect import bisect_left

from tunegate.observability.metrics.families import Labels


class Counts(dict[Labels, float]):
    """A counter's values by label values."""

    def add(self, labels: Labels, amount: float = 1.0) -> None:
        self[labels] = self.get(labels, 0.0) + amount


class Observations(dict[Labels, list[float]]):
    """A histogram's cells by label values: one count per bucket (not cumulative), the
    +Inf bucket's, then the sum."""

    __slots__ = ("bounds", "le")

    def __init__(self, bounds: tuple[float, ...], le: list[str]) -> None:
        super().__init__()
        self.bounds = bounds
        # The `le` label values of the buckets and +Inf, spelled as prometheus-client does.
        self.le = le

    def observe(self, labels: Labels, value: float) -> None:
        cells = self.get(labels)
        if cells is None:
            cells = self[labels] = [0.0] * (len(self.bounds) + 2)
        # Prometheus buckets are "less than or equal": bisect_left finds that bucket.
        cells[bisect_left(self.bounds, value)] += 1.0
        cells[-1] += value
