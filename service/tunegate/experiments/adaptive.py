"""Experiments read live: the current figures of every compared task, for the metrics, and
the traffic split of tasks with `routing.adaptive` (issue: experiments that stay honest).

`split_for` is pure. While either variant of the compared pair has fewer than
`min_samples`, the configured weights stand (`warming`). Then, for a figure, traffic
follows the probability that a variant is the better one on it (probability matching,
Thompson sampling's large-sample form: Phi(d / se) from the fixed-horizon interval),
clipped to [floor, 1 - floor] so the other keeps being measured (`exploring`). With
`metric: decision` the configured weights stand until the policy's overall decision. When
the decision is reached on the anytime-valid confidence sequence and `stop` is set, the
winner gets all the traffic and the experiment is `stopped`; a stop holds until the config
changes. Sticky units keep their variant unless their point crosses a moved boundary
(router.py), so a shift moves the fewest units it can.

`Watcher` refreshes the figures from the store (every `interval_s`, and when /metrics is
scraped), hands them to the metrics and keeps the splits the gateway routes by. Every
change of a split is logged. A scrape sees every sample this process recorded before it:
it writes the samples still gathering, and reuses a refresh only when that one started
after the scrape arrived (scrapes that arrive together share one read of the store).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from tunegate.config.compiled import GatewayConfig, Task, cumulative_weights
from tunegate.experiments.document import ExperimentsDocument
from tunegate.experiments.recorder import Experiments
from tunegate.flow.router import Cumulative
from tunegate.state.store import StoreFailure

log = logging.getLogger("tunegate.adaptive")

SplitState = Literal["configured", "warming", "exploring", "stopped"]
SPLIT_STATES: tuple[SplitState, ...] = ("configured", "warming", "exploring", "stopped")
LOWER_IS_BETTER = frozenset({"latency_s", "cost_usd_per_request", "cost_usd_per_valid_answer"})
INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Split:
    """A task's traffic shares (summing to 1) and why they are what they are."""

    weights: Mapping[str, float]
    state: SplitState
    reason: str


def configured_split(task: Task, state: SplitState = "configured", reason: str = "") -> Split:
    total = sum(task.routing.weights.values())
    weights = {name: weight / total for name, weight in task.routing.weights.items()}
    return Split(weights, state, reason or "the configured weights")


def split_for(task: Task, document: ExperimentsDocument) -> Split:
    """The split of `task` given its experiments document (`report.build_document`)."""
    adaptive = task.routing.adaptive
    if adaptive is None:
        return configured_split(task)
    comparison = document.comparison
    if not comparison:
        return configured_split(task, "warming", "no comparison yet")
    a, b = comparison.a, comparison.b
    have = min(document.variants[a].requests, document.variants[b].requests)
    if have < adaptive.min_samples:
        return configured_split(
            task, "warming", f"{have} of {adaptive.min_samples} samples for each variant"
        )
    if adaptive.metric == "decision":
        decision = document.decision
        winner = decision.recommendation
        if adaptive.stop and decision.status == "recommend" and winner in (a, b) and winner:
            return _all_to(task, winner, f"the policy recommends {winner}: {decision.reason}")
        return configured_split(task, "exploring", "the policy's decision is not reached")
    figure = comparison.figures.get(adaptive.metric)
    if not figure or figure.difference is None or not figure.ci95:
        return configured_split(task, "exploring", f"no {adaptive.metric} figures yet")
    verdict = figure.verdict
    if adaptive.stop and verdict in ("a_better", "b_better"):
        winner = a if verdict == "a_better" else b
        return _all_to(task, winner, f"{adaptive.metric}: {figure.decision}")
    p_a = probability_a_better(
        figure.difference, figure.ci95, adaptive.metric not in LOWER_IS_BETTER
    )
    share = min(max(p_a, adaptive.floor), 1 - adaptive.floor)
    weights = {name: 0.0 for name in task.routing.weights}
    weights[a], weights[b] = share, 1 - share
    return Split(weights, "exploring", f"P({a} better on {adaptive.metric}) = {p_a:.3f}")


def probability_a_better(
    difference: float, ci95: tuple[float, float] | list[float], higher_is_better: bool
) -> float:
    """P(a better than b) under the normal approximation of the difference a - b, its
    standard error read off the 95% interval."""
    se = (ci95[1] - ci95[0]) / (2 * 1.959963984540054)
    if se <= 0:
        return 0.5 if difference == 0 else float((difference > 0) == higher_is_better)
    z = difference / se if higher_is_better else -difference / se
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _all_to(task: Task, winner: str, reason: str) -> Split:
    weights = {name: float(name == winner) for name in task.routing.weights}
    return Split(weights, "stopped", reason)


Publish = Callable[[str, ExperimentsDocument, Split], None]


class Watcher:
    """Keeps every compared task's figures and split current (see the module docstring)."""

    def __init__(
        self,
        experiments: Experiments,
        publish: Publish,
        *,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._experiments = experiments
        self._publish = publish
        self._interval_s = interval_s
        self._config: GatewayConfig | None = None
        self._cumulative: dict[str, Cumulative] = {}
        self._splits: dict[str, Split] = {}
        self._started = 0  # refreshes begun, and the number of the last one finished
        self._finished = 0
        self._lock = asyncio.Lock()
        self._loop: asyncio.Task[None] | None = None

    def cumulative(self, task: str) -> Cumulative | None:
        """The adaptive split of `task` as the router takes it; None: the configured one."""
        return self._cumulative.get(task)

    def start(self, current: Callable[[], GatewayConfig]) -> None:
        """Refresh every `interval_s` in the background, for the config `current` gives."""

        async def loop() -> None:
            while True:
                try:
                    await self.refresh(current())
                except Exception:  # the loop must outlive any one bad read
                    log.exception("experiments refresh failed")
                await asyncio.sleep(self._interval_s)

        self._loop = asyncio.get_running_loop().create_task(loop())

    async def aclose(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)

    async def refresh(self, config: GatewayConfig) -> None:
        """Read every compared task's figures, publish them and update the splits. A store
        that fails leaves the last splits in place."""
        async with self._lock:
            await self._refresh(config)

    async def refresh_for_scrape(self, config: GatewayConfig) -> None:
        """Refresh for a scrape: the figures include every sample this process recorded
        before the call. A refresh that began after the call arrived serves it too."""
        arrived = self._started
        async with self._lock:
            if self._finished > arrived and config is self._config:
                return
            await self._refresh(config)

    async def _refresh(self, config: GatewayConfig) -> None:
        self._started += 1
        number = self._started
        if config is not self._config:  # a reload: stops and splits start over
            self._config, self._cumulative, self._splits = config, {}, {}
        for task in config.tasks.values():
            if len(task.variants) < 2:
                continue
            document = await self._experiments.document(task)
            if isinstance(document, StoreFailure):  # the last split stands
                continue
            self._update(task, document)
            self._publish(task.name, document, self._splits[task.name])
        self._finished = number

    def _update(self, task: Task, document: ExperimentsDocument) -> None:
        before = self._splits.get(task.name)
        split = before if before and before.state == "stopped" else split_for(task, document)
        self._splits[task.name] = split
        if task.routing.adaptive is not None and split.state in ("exploring", "stopped"):
            self._cumulative[task.name] = cumulative_weights(list(task.variants), split.weights)
        else:
            self._cumulative.pop(task.name, None)
        adaptive = task.routing.adaptive is not None
        if adaptive and (before is None or _rounded(before) != _rounded(split)):
            log.info(
                "traffic split",
                extra={
                    "task": task.name,
                    "weights": {n: round(w, 3) for n, w in split.weights.items()},
                    "state": split.state,
                    "reason": split.reason,
                },
            )


def _rounded(split: Split) -> tuple[str, tuple[tuple[str, float], ...]]:
    return split.state, tuple((n, round(w, 2)) for n, w in sorted(split.weights.items()))
