"""The judge (SPEC §8, §12 Judge): an LLM that scores answers in the background, after
the caller has its answer.

    sample served ─► Judges.point (rate) ─► judge prompt: rubric, caller's messages, answer
    shadow answered ─► Judges.pair (rate, `pairwise`) ─► the two answers in random order
                       under `Answer A:` / `Answer B:`
    judge's answer ─► JSON guard (one corrective re-ask at most) ─► JudgeOutcome

One attempt per judgement (no retries, no fallback, no cache); at most `max_in_flight`
judgements run at once per process, past that one is skipped and counted, never queued.
A judgement never delays or changes an answer: it starts after the answer is built, runs as
its own task, and what it costs is counted apart (`JudgeOutcome.cost_usd`).

It stays off the request path by waiting for a lull (`background.Lull`: no caller request
being served) before each of its CPU steps: building the prompt and sending the call, and
once the judge has answered, checking it and recording the outcome. At concurrency 1 that
is the gap between one answer and the next request; under steady load, where no lull may
come, a step waits at most `patience_s` (its judgement holds its place among the
`max_in_flight` meanwhile, so the waiting is bounded too).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tunegate.config.compiled import Judge, Task, Variant
from tunegate.errors import UpstreamError
from tunegate.flow.background import NEVER_BUSY, Background, Lull
from tunegate.flow.upstream import Completion, Message
from tunegate.pricing import PriceTable
from tunegate.quality import jsonguard
from tunegate.records import JudgeOutcome, JudgeStatus
from tunegate.spans import NO_SPANS, Spans

log = logging.getLogger("tunegate.judge")

MAX_IN_FLIGHT = 16
# The longest a judgement's step waits for a lull: longer only holds its place among the
# `max_in_flight` under steady load, where the lull may never come.
PATIENCE_S = 0.1
SYSTEM = (
    "You judge a customer-facing answer against a rubric. Be strict and fair; the order "
    "in which answers are shown says nothing about their quality. Reply with one JSON "
    "object and nothing else."
)
POINT_TASK = (
    "Score how well the answer meets the rubric, from 0 (not at all) to 10 (fully). "
    'Reply with JSON only: {"score": <number from 0 to 10>, "reason": "<one sentence>"}'
)
PAIR_TASK = (
    "Which answer meets the rubric better? "
    'Reply with JSON only: {"better": "A" | "B" | "tie", "reason": "<one sentence>"}'
)
POINT_SCHEMA = {
    "type": "object",
    "required": ["score"],
    "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 10},
        "reason": {"type": "string"},
    },
}
PAIR_SCHEMA = {
    "type": "object",
    "required": ["better"],
    "properties": {"better": {"enum": ["A", "B", "tie"]}, "reason": {"type": "string"}},
}


class JudgeCalls(Protocol):
    """What the judge asks of the upstreams (`upstream.Upstreams`)."""

    def timeout_for(self, variant: Variant) -> float: ...

    async def complete(
        self,
        variant: Variant,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        timeout_s: float,
    ) -> Completion: ...


@dataclass(frozen=True, slots=True)
class Judged:
    """One answer to judge: the request, the variant that made it, and its text."""

    request_id: str
    task: Task
    variant: str
    messages: tuple[Message, ...]
    text: str


JudgeRecorder = Callable[[JudgeOutcome], None]


class Judges:
    """Schedules judgements and hands their outcomes to the recorders."""

    def __init__(
        self,
        upstreams: JudgeCalls,
        prices: PriceTable,
        recorders: Sequence[JudgeRecorder] = (),
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        rng: random.Random | None = None,
        spans: Spans = NO_SPANS,
        lull: Lull = NEVER_BUSY,
        patience_s: float = PATIENCE_S,
    ) -> None:
        self._upstreams = upstreams
        self._lull = lull
        self._patience_s = patience_s
        self._prices = prices
        self._recorders = tuple(recorders)
        self._random = (rng or random.Random()).random
        self._spans = spans
        self._point_schema = jsonguard.compile_schema(POINT_SCHEMA)
        self._pair_schema = jsonguard.compile_schema(PAIR_SCHEMA)
        self._background = Background(max_in_flight)

    def point(self, judged: Judged) -> None:
        """Judge a served sample, for the share `judge.rate` of them."""
        judge = judged.task.judge
        if judge is None or self._random() >= judge.rate:
            return
        skipped = JudgeOutcome(
            judged.request_id, judged.task.name, "point", judge.variant.model, "skipped",
            judged.variant,
        )  # fmt: skip
        self._start(self._point(judge, judged), skipped)

    def pair(self, primary: Judged, shadow: Judged) -> None:
        """Compare a shadow pair's two answers, for the share `judge.rate` of pairs."""
        judge = primary.task.judge
        if judge is None or not judge.pairwise or self._random() >= judge.rate:
            return
        skipped = JudgeOutcome(
            primary.request_id, primary.task.name, "pair", judge.variant.model, "skipped",
            primary.variant, shadow.variant,
        )  # fmt: skip
        self._start(self._pair(judge, primary, shadow), skipped)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let running judgements finish (at most `timeout_s`), then cancel the rest."""
        await self._background.aclose(timeout_s)

    def _start(self, work: Coroutine[Any, Any, JudgeOutcome], skipped: JudgeOutcome) -> None:
        if not self._background.start(self._run(work)):
            work.close()  # `_run` never started: it never awaits `work`
            self._record(skipped)

    async def _run(self, work: Coroutine[Any, Any, JudgeOutcome]) -> None:
        # Scheduled while the caller's answer is still on its way out: building the judge's
        # request takes CPU, so it starts in a lull, once that answer has been written.
        await self._lull.wait(self._patience_s)
        self._record(await work)

    async def _point(self, judge: Judge, judged: Judged) -> JudgeOutcome:
        prompt = point_prompt(judge.rubric, judged.messages, judged.text)
        with self._spans.background("judge point", judged.task, judge.variant, judged.request_id):
            status, value, cost = await self._ask(
                judge, judged.task, prompt, self._point_schema, judged.request_id
            )
        score = float(value["score"]) if status == "ok" else None
        return JudgeOutcome(
            judged.request_id, judged.task.name, "point", judge.variant.model, status,
            judged.variant, score=score, cost_usd=cost,
        )  # fmt: skip

    async def _pair(self, judge: Judge, primary: Judged, shadow: Judged) -> JudgeOutcome:
        # Random order: a judge that favours a position favours neither variant.
        first, second = (shadow, primary) if self._random() < 0.5 else (primary, shadow)
        prompt = pair_prompt(judge.rubric, primary.messages, first.text, second.text)
        task = primary.task
        with self._spans.background("judge pair", task, judge.variant, primary.request_id):
            status, value, cost = await self._ask(
                judge, task, prompt, self._pair_schema, primary.request_id
            )
        winner = None
        if status == "ok":
            better = value["better"]
            winner = "tie" if better == "tie" else (first if better == "A" else second).variant
        return JudgeOutcome(
            primary.request_id, primary.task.name, "pair", judge.variant.model, status,
            primary.variant, shadow.variant, winner=winner, cost_usd=cost,
        )  # fmt: skip

    async def _ask(
        self,
        judge: Judge,
        task: Task,
        prompt: str,
        schema: jsonguard.CompiledSchema,
        request_id: str,
    ) -> tuple[JudgeStatus, Any, float]:
        """The judge's parsed answer: one call, and one corrective re-ask when it is not
        the JSON asked for. Returns (status, value, cost)."""
        messages: list[Message] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": prompt},
        ]
        cost = 0.0
        for reask in range(2):
            completion = await self._call(task, judge.variant, messages, request_id)
            # The answer is read; checking it, a re-ask and recording wait for a lull.
            await self._lull.wait(self._patience_s)
            if completion is None:
                return "error", None, cost
            price = self._prices.cost_usd(
                judge.variant.model, completion.prompt_tokens, completion.completion_tokens
            )
            cost += price or 0.0
            verdict = jsonguard.check(completion.content, schema)
            if verdict.status != "invalid":
                return "ok", verdict.value, cost
            if reask == 0:
                messages += [
                    {"role": "assistant", "content": completion.content},
                    {"role": "user", "content": jsonguard.corrective_message(verdict)},
                ]
        return "invalid", None, cost

    async def _call(
        self, task: Task, variant: Variant, messages: Sequence[Message], request_id: str
    ) -> Completion | None:
        """One attempt within the judge upstream's timeout; None when it failed."""
        timeout = self._upstreams.timeout_for(variant)
        span = self._spans.attempt(task, variant, messages, "judge")
        try:
            async with asyncio.timeout(timeout):
                done = await self._upstreams.complete(variant, messages, variant.params, timeout)
        except (UpstreamError, TimeoutError) as exc:
            kind = exc.kind if isinstance(exc, UpstreamError) else "timeout"
            span.failed(kind)
            log.info(
                "judge call failed",
                extra={
                    "request_id": request_id,
                    "task": task.name,
                    "model": variant.model,
                    "kind": kind,
                },
            )
            return None
        model = done.model or variant.model
        span.answered(
            model, done.finish_reason, done.prompt_tokens, done.completion_tokens, done.content
        )
        return done

    def _record(self, outcome: JudgeOutcome) -> None:
        for recorder in self._recorders:
            try:
                recorder(outcome)
            except Exception:  # a broken recorder must never fail anything
                log.exception(
                    "judge recorder failed",
                    extra={"request_id": outcome.request_id, "task": outcome.task},
                )


def point_prompt(rubric: str, messages: Sequence[Message], answer: str) -> str:
    return (
        f"Rubric:\n{rubric.strip()}\n\nConversation:\n{_conversation(messages)}\n\n"
        f"Answer:\n{answer.strip()}\n\nTask:\n{POINT_TASK}"
    )


def pair_prompt(rubric: str, messages: Sequence[Message], a: str, b: str) -> str:
    return (
        f"Rubric:\n{rubric.strip()}\n\nConversation:\n{_conversation(messages)}\n\n"
        f"Answer A:\n{a.strip()}\n\nAnswer B:\n{b.strip()}\n\nTask:\n{PAIR_TASK}"
    )


def _conversation(messages: Sequence[Message]) -> str:
    return "\n".join(f"{m.get('role', 'user')}: {_text(m.get('content'))}" for m in messages)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""
