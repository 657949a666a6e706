"""The request flow: the one place that orders routing, attempts, retries, the JSON
guard and fallback (ARCHITECTURE.md). It holds no HTTP and talks to the outside only
through the objects it is given.

    choose a variant (router) ─► for each variant in [chosen, *fallbacks]:
        attempt with retries (retry) ─► check JSON (jsonguard) ─► output checks
        (quality.checks) ─► re-ask on invalid or failed (`routing.reasks`)
    ─► an `Answer`, or a `GatewayError` (502 every variant failed, 504 deadline)

Every request ends in one `Outcome`, handed to the recorders after the answer is built.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

from tunegate.config.compiled import Task, Variant
from tunegate.errors import (
    AllAttemptsFailed,
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamInputRefused,
    UpstreamInvalidOutput,
    UpstreamTimeout,
)
from tunegate.flow import router
from tunegate.flow.judge import JudgeCalls, Judged, Judges
from tunegate.flow.retry import Backoff, next_wait
from tunegate.flow.router import Cumulative
from tunegate.flow.shadow import Primary, Shadows
from tunegate.flow.upstream import Completion, Delta
from tunegate.pricing import PriceTable, format_usd
from tunegate.quality import jsonguard
from tunegate.quality.checks import CheckVerdict
from tunegate.quality.checks import corrective_message as checks_corrective
from tunegate.records import (
    Answer,
    CacheState,
    Call,
    Exchange,
    Message,
    Outcome,
    Status,
    UpstreamCall,
)
from tunegate.spans import NO_SPANS, AttemptSpan, Purpose, Spans
from tunegate.state.cache import Cache, Entry, Write, cache_key_for

log = logging.getLogger("tunegate.gateway")

T = TypeVar("T")
DEFAULT_BACKOFF = Backoff()


def _checks_header(task: Task, trail: _Trail) -> str | None:
    """`x-tunegate-checks` of an answer served by an upstream call (SPEC §8, §12)."""
    if task.checks is None:
        return None
    if trail.checks_failed:
        return "failed"
    return "reasked" if trail.reasked else "passed"


def _completed(text: str, last: Delta) -> Completion:
    return Completion(
        text, last.finish_reason or "stop", last.prompt_tokens, last.completion_tokens
    )


async def _replay(answer: Answer) -> AsyncIterator[Delta]:
    """A cached text answer as a stream: the text, then the finish and usage."""
    yield Delta(content=answer.content)
    yield Delta(
        finish_reason=answer.finish_reason,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
    )


def _shortest_wait(failures: list[tuple[str, UpstreamError]], deadline_s: float) -> float | None:
    """The shortest `Retry-After` the upstreams asked for, passed on to the caller when a
    retry that waits it could still finish within the task's deadline."""
    waits = [exc.retry_after_s for _, exc in failures if exc.retry_after_s is not None]
    shortest = min(waits, default=None)
    return shortest if shortest is not None and shortest < deadline_s else None


@dataclass
class _Trail:
    """What one request has done so far (mutable, private to one request)."""

    started: float
    deadline: float
    chosen: str
    calls: list[UpstreamCall] = field(default_factory=list)
    json_results: list[tuple[str, str]] = field(default_factory=list)
    check_results: list[tuple[str, CheckVerdict]] = field(default_factory=list)
    # Any corrective re-ask sent (schema or checks); an answer served failing (observe).
    reasked: bool = False
    checks_failed: bool = False
    failures: list[tuple[str, UpstreamError]] = field(default_factory=list)
    fallbacks: list[tuple[str, str, str]] = field(default_factory=list)
    ttft_seconds: float | None = None
    cache_state: CacheState = "bypass"
    cache_lookup: Literal["hit", "miss", "bypass", "error"] = "bypass"
    store_seconds: float = 0.0
    saved_usd: float = 0.0

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.calls)


Recorder = Callable[[Outcome], None]


class UpstreamCalls(JudgeCalls, Protocol):
    """What the flow asks of the upstreams (`upstream.Upstreams`; a fake in unit tests):
    a judge's calls, and streams."""

    def stream(
        self,
        variant: Variant,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        timeout_s: float,
    ) -> AsyncIterator[Delta]: ...


class Gateway:
    """Serves `Call`s; owns no connections (they are opened and closed by the app)."""

    def __init__(
        self,
        upstreams: UpstreamCalls,
        prices: PriceTable,
        *,
        cache: Cache | None = None,
        recorders: Sequence[Recorder] = (),
        shadows: Shadows | None = None,
        judges: Judges | None = None,
        weights: Callable[[str], Cumulative | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        spans: Spans = NO_SPANS,
    ) -> None:
        self._upstreams = upstreams
        self._prices = prices
        self._cache = cache
        self._recorders = tuple(recorders)
        self._shadows = shadows
        self._judges = judges
        self._weights = weights
        self._clock = clock
        self._random = (rng or random.Random()).random
        self._backoff = backoff
        self._sleep = sleep
        self._spans = spans

    # -- entry points -------------------------------------------------------------------

    async def answer(self, call: Call) -> Answer:
        """Serve `call` to completion, from the cache when it can; raise a `GatewayError`
        when no variant could."""
        trail, order = self._start(call)
        key = self._cache_key(call, trail.chosen)
        if key is None or not call.cache_read or self._cache is None:
            return await self._serve_and_save(call, trail, order)
        produced: list[Answer] = []
        lookup = self._spans.cache_lookup()

        async def compute() -> Write | None:
            lookup.found("miss")  # the lookup is over once the computation starts
            answer = await self._serve(call, trail, order)
            produced.append(answer)
            return self._write_of(call, answer)

        local_ttl_s = call.task.cache.local_ttl_s
        read = await self._cache.read_through(key, call.task.deadline_s, compute, local_ttl_s)
        trail.store_seconds += read.waited
        trail.cache_lookup = read.lookup
        if produced:  # `compute` ran and told the span
            return self._served(call, trail, produced[0])
        lookup.found(read.lookup)
        if read.entry is None or read.entry.variant not in call.task.variants:
            # Stored under a config whose variants differed: serve it here.
            return await self._serve_and_save(call, trail, order)
        return self._hit(call, trail, read.entry)

    async def stream(self, call: Call) -> tuple[Answer, AsyncIterator[Delta]]:
        """Open a text stream: retries and fallbacks happen until the first delta; after
        it, the variant is fixed. Returns the answer's head (variant, model, headers) and
        the deltas, the first included, ending with one carrying usage. A cache hit is
        replayed as one delta."""
        trail, order = self._start(call)
        key = self._cache_key(call, trail.chosen)
        if key is not None and call.cache_read:
            entry = await self._lookup(call, trail, key)
            if entry is not None:
                head = self._hit(call, trail, entry)
                return head, _replay(head)
        for name in order:
            variant = call.task.variants[name]
            try:
                deltas, first, span = await self._with_retries(
                    call, variant, trail, partial(self._open, call, variant)
                )
            except UpstreamError as exc:
                self._failed(call, trail, name, exc, order)
                continue
            trail.ttft_seconds = self._clock() - trail.started
            opened = Completion("", "stop", 0, 0, first.system_fingerprint)
            head = self._answer(call, variant, opened, None, trail)
            return head, self._rest_of_stream(call, variant, trail, first, deltas, span)
        raise self._give_up(call, trail)

    async def aclose(self) -> None:
        """Let background shadow calls and judgements finish (bounded), at shutdown."""
        if self._shadows is not None:
            await self._shadows.aclose()
        if self._judges is not None:
            await self._judges.aclose()

    def record(self, outcome: Outcome) -> None:
        for recorder in self._recorders:
            try:
                recorder(outcome)
            except Exception:  # a broken recorder must never fail a request
                log.exception(
                    "recorder failed",
                    extra={"request_id": outcome.request_id, "task": outcome.task},
                )

    async def _serve(self, call: Call, trail: _Trail, order: tuple[str, ...]) -> Answer:
        """Try each variant in `order` until one answers."""
        for name in order:
            variant = call.task.variants[name]
            try:
                completion, verdict = await self._serve_with(call, variant, trail)
            except UpstreamError as exc:
                self._failed(call, trail, name, exc, order)
                continue
            return self._answer(call, variant, completion, verdict, trail)
        raise self._give_up(call, trail)

    async def _serve_and_save(self, call: Call, trail: _Trail, order: tuple[str, ...]) -> Answer:
        answer = await self._serve(call, trail, order)
        self._save(call, answer)
        return self._served(call, trail, answer)

    def _served(self, call: Call, trail: _Trail, answer: Answer) -> Answer:
        """Record an answer served by an upstream call, start its shadow if sampled, and
        its judgement if it is a sample the judge samples."""
        self.record(self._outcome(call, trail, answer.variant.name, "ok", answer.content))
        if self._judges is not None and call.forced is None and not answer.fallback_from:
            self._judges.point(
                Judged(
                    call.request_id, call.task, answer.variant.name, call.messages, answer.content
                )
            )
        shadows = self._shadows if call.task.routing.shadow is not None else None
        if shadows is not None and call.forced is None and not answer.fallback_from:
            shadow = shadows.wanted(call.task, answer.variant.name, self._random())
            if shadow is not None:
                own = [c for c in trail.calls if c.variant == answer.variant.name]
                primary = Primary(
                    request_id=call.request_id,
                    task=call.task,
                    variant=answer.variant.name,
                    messages=call.messages,
                    params=dict(call.params),
                    parsed=answer.parsed,
                    text=answer.content,
                    seconds=sum(c.seconds for c in own),
                    cost_usd=trail.cost_usd,
                )
                shadows.send(shadow, primary)
        return answer

    # -- the cache ----------------------------------------------------------------------

    def _cache_key(self, call: Call, variant_name: str) -> str | None:
        task = call.task
        if self._cache is None or not task.cache.enabled:
            return None
        if not (call.cache_read or call.cache_write):
            return None
        return cache_key_for(
            tenant=call.tenant if task.cache.scope == "tenant" else None,
            task=task.name,
            fingerprint=task.variants[variant_name].fingerprint,
            messages=call.messages,
            params=call.params,
        )

    async def _lookup(self, call: Call, trail: _Trail, key: str) -> Entry | None:
        assert self._cache is not None
        span = self._spans.cache_lookup()
        entry, result, waited = await self._cache.lookup(key, call.task.cache.local_ttl_s)
        span.found(result)
        trail.store_seconds += waited
        trail.cache_lookup = result
        if entry is not None and entry.variant not in call.task.variants:
            return None  # stored under a config whose variants differed
        return entry

    def _save(self, call: Call, answer: Answer) -> None:
        write = self._write_of(call, answer)
        if write is not None and self._cache is not None:
            self._cache.save(write, call.task.cache.local_ttl_s)

    def _write_of(self, call: Call, answer: Answer) -> Write | None:
        """What to store for a valid answer: under its serving variant's key (so a
        fallback's answer never poses as the chosen variant's)."""
        if not call.cache_write or answer.checks == "failed":
            return None
        key = self._cache_key(call, answer.variant.name)
        if key is None:
            return None
        return Write(key, self._entry_of(answer), call.task.cache.ttl_s)

    @staticmethod
    def _entry_of(answer: Answer) -> Entry:
        return Entry(
            variant=answer.variant.name,
            content=answer.content,
            parsed=answer.parsed,
            finish_reason=answer.finish_reason,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            cost_usd=answer.cost_usd,
            json_status=answer.json_status,
        )

    def _hit(self, call: Call, trail: _Trail, entry: Entry) -> Answer:
        """An answer from the cache (or a single-flight leader): cost 0, fresh id."""
        variant = call.task.variants[entry.variant]
        trail.cache_state = "hit"
        trail.saved_usd = entry.cost_usd
        self.record(self._outcome(call, trail, variant.name, "ok"))
        return Answer(
            request_id=call.request_id,
            task=call.task,
            variant=variant,
            content=entry.content,
            parsed=entry.parsed,
            finish_reason=entry.finish_reason,
            prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.completion_tokens,
            cost_usd=0.0,
            cache="hit",
            json_status=entry.json_status,
            fallback_from=None,
            created=int(time.time()),
            checks="passed" if call.task.checks is not None else None,
        )

    # -- the steps ----------------------------------------------------------------------

    def _start(self, call: Call) -> tuple[_Trail, tuple[str, ...]]:
        now = self._clock()
        split = self._weights(call.task.name) if self._weights is not None else None
        chosen = call.forced or router.choose_variant(call.task, call.unit, self._random, split)
        trail = _Trail(started=now, deadline=now + call.task.deadline_s, chosen=chosen)
        if call.cache_read and self._cache is not None and call.task.cache.enabled:
            trail.cache_state = "miss"
        return trail, router.attempt_order(call.task, chosen)

    async def _serve_with(
        self, call: Call, variant: Variant, trail: _Trail
    ) -> tuple[Completion, jsonguard.Verdict | None]:
        """One variant: attempts with retries, then for JSON tasks the guard, then the
        output checks, with up to `reasks` corrective re-asks. Raises `UpstreamError`
        when it cannot serve."""
        task = call.task
        messages: list[Message] = [*variant.prefix, *call.messages]
        for reask in range(task.routing.reasks + 1):
            if reask:
                trail.reasked = True
            completion = await self._with_retries(
                call,
                variant,
                trail,
                partial(self._complete, variant, messages, call.params),
                "reask" if reask else None,
            )
            verdict, correction = self._inspect(task, variant, completion, trail)
            if correction is None:
                return completion, verdict
            error, message = correction
            messages = [
                *messages,
                {"role": "assistant", "content": completion.content},
                {"role": "user", "content": message},
            ]
        if completion.finish_reason == "length":
            limit = call.params.get("max_tokens") or variant.max_tokens
            error += (
                f" (the answer stopped at its token limit, max_tokens {limit}: "
                "too few for the task's output)"
            )
        # The caller's message names the variant once, from the list of failures.
        raise UpstreamInvalidOutput(error)

    @staticmethod
    def _inspect(
        task: Task, variant: Variant, completion: Completion, trail: _Trail
    ) -> tuple[jsonguard.Verdict | None, tuple[str, str] | None]:
        """The JSON guard, then the checks, on one answer: its verdict and, when it must
        be asked again, (the error, the corrective message)."""
        verdict = None
        text = completion.content
        if task.is_json:
            verdict = jsonguard.check(text, task.schema)
            trail.json_results.append((variant.name, verdict.status))
            if verdict.status == "invalid":
                return verdict, (verdict.error or "invalid", jsonguard.corrective_message(verdict))
            text = verdict.text
        if task.checks is not None:
            checked = task.checks.run(text)
            trail.check_results.append((variant.name, checked))
            if not checked.passed:
                if not task.checks.reask:
                    trail.checks_failed = True
                    return verdict, None
                return verdict, (checked.first_failure or "", checks_corrective(checked))
        return verdict, None

    async def _with_retries(
        self,
        call: Call,
        variant: Variant,
        trail: _Trail,
        attempt: Callable[[float, AttemptSpan], Awaitable[T]],
        purpose: Purpose | None = None,
    ) -> T:
        """Run `attempt(timeout_s, span)` under the task's retry policy and deadline; an
        attempt that answers ends its span, one that fails has it ended here."""
        retries = call.task.routing.retries
        retry_number = 0
        first = purpose or ("first" if variant.name == trail.chosen else "fallback")
        while True:
            remaining = trail.deadline - self._clock()
            if remaining <= 0:
                raise UpstreamTimeout(f"{variant.model}: no time left before the deadline")
            timeout = min(self._upstreams.timeout_for(variant), remaining)
            started = self._clock()
            span = self._spans.attempt(
                call.task, variant, call.messages, "retry" if retry_number else first
            )
            try:
                # A hard bound on top of the client's own timeouts, which `wire.py` applies
                # per socket read: an answer dripping slowly must still end in time.
                async with asyncio.timeout(timeout):
                    result = await attempt(timeout, span)
            except (UpstreamError, TimeoutError) as caught:
                exc = (
                    caught
                    if isinstance(caught, UpstreamError)
                    else UpstreamTimeout(f"{variant.model}: no answer within {timeout:.3g} s")
                )
                span.failed(exc.kind)
                elapsed = self._clock() - started
                trail.calls.append(
                    UpstreamCall(variant.name, variant.model, elapsed, error=exc.kind)
                )
                left = trail.deadline - self._clock()
                wait = next_wait(exc, retry_number, retries, left, self._backoff, self._random)
                if wait is None:
                    raise exc from None
                await self._sleep(wait)
                retry_number += 1
                continue
            except BaseException as exc:  # cancelled (the caller left), or a defect
                span.failed(type(exc).__name__)
                raise
            if isinstance(result, Completion):
                self._charge(
                    trail, variant, started, result.prompt_tokens, result.completion_tokens
                )
            return result

    async def _complete(
        self,
        variant: Variant,
        messages: list[Message],
        params: Mapping[str, Any],
        timeout_s: float,
        span: AttemptSpan,
    ) -> Completion:
        done = await self._upstreams.complete(variant, messages, params, timeout_s)
        model = done.model or variant.model
        span.answered(
            model, done.finish_reason, done.prompt_tokens, done.completion_tokens, done.content
        )
        return done

    async def _open(
        self, call: Call, variant: Variant, timeout_s: float, span: AttemptSpan
    ) -> tuple[AsyncIterator[Delta], Delta, AttemptSpan]:
        messages = [*variant.prefix, *call.messages]
        deltas = self._upstreams.stream(variant, messages, call.params, timeout_s)
        try:
            first = await anext(deltas)
        except BaseException:
            await deltas.aclose()  # type: ignore[attr-defined]  # an async generator
            raise
        span.first_token()
        return deltas, first, span

    async def _rest_of_stream(
        self,
        call: Call,
        variant: Variant,
        trail: _Trail,
        first: Delta,
        deltas: AsyncIterator[Delta],
        span: AttemptSpan,
    ) -> AsyncIterator[Delta]:
        """Pass the deltas on within the deadline; the last one carries the request's
        whole cost. A failure now can no longer fall back (SPEC §7 Streams). The
        attempt's span ends with the stream."""
        started = self._clock()
        status: Status = "error"
        error_type = "cancelled"
        text: list[str] = []
        last = first
        try:
            async with asyncio.timeout(trail.deadline - self._clock()):
                delta: Delta | None = first
                while delta is not None:
                    last = delta
                    if delta.finish_reason is not None:
                        self._charge(
                            trail, variant, started, delta.prompt_tokens, delta.completion_tokens
                        )
                        delta = replace(delta, cost_usd=trail.cost_usd)
                    text.append(delta.content)
                    yield delta
                    delta = await anext(deltas, None)
            status = "ok"
            done = _completed("".join(text), last)
            span.answered(
                last.model or variant.model,
                done.finish_reason,
                done.prompt_tokens,
                done.completion_tokens,
                done.content,
            )
            head = self._answer(call, variant, done, None, trail)
            self._save(call, head)
        except TimeoutError:
            status, error_type = "deadline", "timeout"
            raise DeadlineExceeded("The task's deadline passed during the stream.") from None
        except UpstreamError as exc:
            error_type = exc.kind
            raise AllAttemptsFailed(f"The stream broke off: {exc}") from None
        finally:
            if status != "ok":
                span.failed(error_type)
            await deltas.aclose()  # type: ignore[attr-defined]  # an async generator
            answered = "".join(text) if status == "ok" else None
            self.record(self._outcome(call, trail, variant.name, status, answered))

    # -- bookkeeping --------------------------------------------------------------------

    def _charge(
        self, trail: _Trail, variant: Variant, started: float, prompt: int, completion: int
    ) -> None:
        cost = self._prices.cost_usd(variant.model, prompt, completion) or 0.0
        trail.calls.append(
            UpstreamCall(
                variant.name, variant.model, self._clock() - started, prompt, completion, cost
            )
        )

    def _failed(
        self, call: Call, trail: _Trail, name: str, exc: UpstreamError, order: tuple[str, ...]
    ) -> None:
        """Note a variant's failure before the next is tried; raise at once when the
        caller's input is at fault, which no other variant would take either."""
        log.info(
            "variant failed",
            extra={
                "request_id": call.request_id,
                "task": call.task.name,
                "variant": name,
                "kind": exc.kind,
                "detail": str(exc),
            },
        )
        if isinstance(exc, UpstreamInputRefused):
            # A 400 like any refused request: no fallback, no sample (SPEC §12); the
            # endpoint records it as rejected.
            raise InvalidRequest(
                f"The model of the task {call.task.name!r} refused the input ({exc.code}); "
                "shorten or correct the messages.",
                code=exc.code,
                param="messages",
                headers={"x-tunegate-cost-usd": format_usd(trail.cost_usd)},
            ) from None
        trail.failures.append((name, exc))
        position = order.index(name)
        if position + 1 < len(order):
            trail.fallbacks.append((name, order[position + 1], exc.kind))

    def _give_up(self, call: Call, trail: _Trail) -> GatewayError:
        cost = {"x-tunegate-cost-usd": format_usd(trail.cost_usd)}
        if self._clock() >= trail.deadline:
            self.record(self._outcome(call, trail, None, "deadline"))
            return DeadlineExceeded(
                f"Task {call.task.name!r} did not finish within its deadline of "
                f"{call.task.deadline_s:g} s.",
                headers=cost,
            )
        reasons = "; ".join(f"{name}: {exc}" for name, exc in trail.failures)
        if all(isinstance(exc, UpstreamInvalidOutput) for _, exc in trail.failures):
            self.record(self._outcome(call, trail, None, "invalid_output"))
            wanted = "schema" if call.task.checks is None else "schema and checks"
            if not call.task.is_json:
                wanted = "checks"
            return AllAttemptsFailed(
                f"No variant produced output that satisfies the task's {wanted}. {reasons}",
                code="invalid_output",
                should_retry=False,
                headers=cost,
            )
        self.record(self._outcome(call, trail, None, "error"))
        retry = any(exc.retryable for _, exc in trail.failures)
        return AllAttemptsFailed(
            f"Every variant failed. {reasons}",
            should_retry=retry,
            retry_after_s=_shortest_wait(trail.failures, call.task.deadline_s),
            headers=cost,
        )

    def _answer(
        self,
        call: Call,
        variant: Variant,
        completion: Completion,
        verdict: jsonguard.Verdict | None,
        trail: _Trail,
    ) -> Answer:
        return Answer(
            request_id=call.request_id,
            task=call.task,
            variant=variant,
            content=verdict.text if verdict else completion.content,
            parsed=verdict.value if verdict else completion.content,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=trail.cost_usd,
            cache=trail.cache_state,
            json_status=verdict.status if verdict else None,
            fallback_from=trail.failures[0][0] if trail.failures else None,
            created=int(time.time()),
            checks=_checks_header(call.task, trail),
            system_fingerprint=completion.system_fingerprint,
        )

    def _outcome(
        self,
        call: Call,
        trail: _Trail,
        served: str | None,
        status: Status,
        answered: str | None = None,
    ) -> Outcome:
        """How the request ended; `answered` is the text an upstream call produced for it
        (kept on the outcome as an `Exchange` when the task captures)."""
        if status == "ok" and trail.failures:
            status = "fallback"
        exchange = None
        policy = call.task.capture
        if policy is not None and answered is not None and call.forced is None:
            exchange = Exchange(call.messages, answered, policy, call.stream, not call.capture)
        return Outcome(
            request_id=call.request_id,
            task=call.task.name,
            tenant=call.tenant,
            chosen=trail.chosen,
            served=served,
            served_model=call.task.variants[served].model if served else None,
            # Forced variants and answers nobody chose for this request are no samples.
            sample=call.forced is None and trail.cache_state != "hit",
            status=status,
            cache=trail.cache_state,
            cache_lookup=trail.cache_lookup,
            seconds=self._clock() - trail.started,
            calls=tuple(trail.calls),
            json_results=tuple(trail.json_results),
            check_results=tuple(trail.check_results),
            fallbacks=tuple(trail.fallbacks),
            store_seconds=trail.store_seconds,
            ttft_seconds=trail.ttft_seconds,
            saved_usd=trail.saved_usd,
            key_digest=call.key_digest,
            exchange=exchange,
        )
