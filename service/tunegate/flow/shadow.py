"""Shadow traffic (SPEC §4): after the caller has its answer, ask the task's shadow variant
the same question, and compare.

For a sampled request (`routing.shadow.rate`) answered by its chosen variant on an upstream
call (not a cache hit, not a fallback, not a forced variant), one background call goes to
the shadow variant with the same messages and parameters: one attempt, no retries, no
re-ask, no cache. Its answer is checked by the JSON guard like any other (valid and
repaired count as answered), compared with what the caller got (parsed values for JSON
tasks, text for others), and handed to the recorders as a `ShadowOutcome`: the paired
figures (agreement, latency and cost differences) and the shadow's own cost, which is
counted apart and never in the caller's `x-tunegate-cost-usd`.

Never in the caller's way: the call starts after the answer is built, runs as its own task
(a caller that hangs up does not cancel it), and at most `max_in_flight` run at once per
process; past that a shadow is skipped (counted), not queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunegate.config.compiled import Task, Variant
from tunegate.errors import UpstreamError
from tunegate.flow.background import Background
from tunegate.flow.judge import Judged, Judges
from tunegate.flow.upstream import Message, Upstreams
from tunegate.pricing import PriceTable
from tunegate.quality import jsonguard
from tunegate.records import ShadowOutcome, ShadowStatus
from tunegate.spans import NO_SPANS, Spans

log = logging.getLogger("tunegate.shadow")

MAX_IN_FLIGHT = 16


@dataclass(frozen=True, slots=True)
class Primary:
    """What the caller got, for the comparison: the serving variant, its answer, and the
    upstream seconds and cost it took."""

    request_id: str
    task: Task
    variant: str
    messages: tuple[Message, ...]
    params: dict[str, Any]
    parsed: Any
    seconds: float
    cost_usd: float
    # The answer's text as served, for a pairwise judge.
    text: str = ""


ShadowRecorder = Callable[[ShadowOutcome], None]


class Shadows:
    """Schedules shadow calls and hands their outcomes to the recorders."""

    def __init__(
        self,
        upstreams: Upstreams,
        prices: PriceTable,
        recorders: Sequence[ShadowRecorder] = (),
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
        judges: Judges | None = None,
        spans: Spans = NO_SPANS,
    ) -> None:
        self._upstreams = upstreams
        self._prices = prices
        self._recorders = tuple(recorders)
        self._clock = clock
        self._judges = judges
        self._spans = spans
        self._background = Background(max_in_flight)

    def wanted(self, task: Task, served: str, draw: float) -> Variant | None:
        """The shadow variant to ask after `served` answered, when `draw` (uniform in
        [0, 1)) falls in the sampled share; None otherwise."""
        shadow = task.routing.shadow
        if shadow is None or shadow.variant == served or draw >= shadow.rate:
            return None
        return task.variants[shadow.variant]

    def send(self, variant: Variant, primary: Primary) -> None:
        """Start the shadow call in the background, or count it skipped when full."""
        if not self._background.start(self._run(variant, primary)):
            self._record(self._outcome(variant, primary, "skipped", None, 0.0, 0.0))

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let running shadow calls finish (at most `timeout_s`), then cancel the rest."""
        await self._background.aclose(timeout_s)

    async def _run(self, variant: Variant, primary: Primary) -> None:
        name = f"shadow {variant.name}"
        with self._spans.background(name, primary.task, variant, primary.request_id):
            await self._ask(variant, primary)

    async def _ask(self, variant: Variant, primary: Primary) -> None:
        task = primary.task
        started = self._clock()
        span = self._spans.attempt(task, variant, primary.messages, "shadow")
        try:
            completion = await self._upstreams.complete(
                variant,
                [*variant.prefix, *primary.messages],
                primary.params,
                self._upstreams.timeout_for(variant),
            )
        except UpstreamError as exc:
            span.failed(exc.kind)
            seconds = self._clock() - started
            log.info(
                "shadow call failed",
                extra={
                    "request_id": primary.request_id,
                    "task": task.name,
                    "variant": variant.name,
                    "kind": exc.kind,
                },
            )
            self._record(self._outcome(variant, primary, "error", None, seconds, 0.0))
            return
        span.answered(
            completion.model or variant.model,
            completion.finish_reason,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.content,
        )
        seconds = self._clock() - started
        cost = self._prices.cost_usd(
            variant.model, completion.prompt_tokens, completion.completion_tokens
        )
        if task.is_json:
            verdict = jsonguard.check(completion.content, task.schema)
            if verdict.status == "invalid":
                self._record(self._outcome(variant, primary, "invalid", None, seconds, cost or 0.0))
                return
            agree = verdict.value == primary.parsed
            text = verdict.text
        else:
            agree = completion.content.strip() == str(primary.parsed).strip()
            text = completion.content
        self._record(self._outcome(variant, primary, "ok", agree, seconds, cost or 0.0))
        if self._judges is not None:
            self._judges.pair(
                Judged(primary.request_id, task, primary.variant, primary.messages, primary.text),
                Judged(primary.request_id, task, variant.name, primary.messages, text),
            )

    def _outcome(
        self,
        variant: Variant,
        primary: Primary,
        status: ShadowStatus,
        agree: bool | None,
        seconds: float,
        cost_usd: float,
    ) -> ShadowOutcome:
        return ShadowOutcome(
            request_id=primary.request_id,
            task=primary.task.name,
            primary=primary.variant,
            shadow=variant.name,
            model=variant.model,
            status=status,
            agree=agree,
            seconds=seconds,
            primary_seconds=primary.seconds,
            cost_usd=cost_usd,
            primary_cost_usd=primary.cost_usd,
        )

    def _record(self, outcome: ShadowOutcome) -> None:
        for recorder in self._recorders:
            try:
                recorder(outcome)
            except Exception:  # a broken recorder must never fail anything
                log.exception(
                    "shadow recorder failed",
                    extra={"request_id": outcome.request_id, "task": outcome.task},
                )
