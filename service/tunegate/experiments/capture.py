"""Capture for fine-tuning (SPEC §9, §12): a sample of each capturing task's validated
exchanges, kept in the store for `tunegate dataset export`.

What is kept. An outcome carries an `Exchange` only for answers an upstream call made for
that request, not forced (the gateway sees to that). Of those, a request is *sampled* when
a hash of its id falls under `capture.rate` and its chosen variant served it (`ok`, no
fallback) and is one of `capture.variants`. A sampled exchange is `kept` unless its key
opted out (`capture: false`), it was streamed, or (with `only_valid`) its answer failed
the schema or a check, in which case it is `skipped`; both are counted
(`tunegate_capture_total{task, result}`). Nothing else is counted, and no captured content
is ever logged.

Where. One stream per task, `tunegate:capture:{TASK}` (the hash tag keeps a task's keys
in one slot), entries `d` = JSON `{id, at, variant, model, tenant, messages, answer}`,
trimmed to `max_examples` and to `ttl_days` on every write, the key expiring `ttl_days`
after the latest; feedback scores of sampled requests go to the hash
`tunegate:capture:{TASK}:scores` (request id → score, at most `max_examples` fields, same
TTL), so `--min-score` works for as long as the capture lives.

When. `record` never waits: exchanges gather for `flush_s` and go in one script per task,
in the background, like experiment samples (`recorder.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from tunegate.config.compiled import CapturePolicy
from tunegate.records import Exchange, Outcome
from tunegate.state.store import ScriptArg, Store

log = logging.getLogger("tunegate.capture")

MAX_PENDING = 10_000
FLUSH_S = 0.05
READ_PAGE = 500
Result = Literal["kept", "skipped"]

# KEYS: [stream]. ARGV: [max entries, oldest id kept (ms), ttl s, entry...].
_WRITE = """-- tunegate:capture.write:v1
local maxlen, minid, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV do
    redis.call("XADD", KEYS[1], "MAXLEN", maxlen, "*", "d", ARGV[i])
end
redis.call("XTRIM", KEYS[1], "MINID", minid)
redis.call("EXPIRE", KEYS[1], ttl)
return 1
"""
# KEYS: [scores hash]. ARGV: [request id, score, max fields, ttl s].
_SCORE = """-- tunegate:capture.score:v1
local room = redis.call("HLEN", KEYS[1]) < tonumber(ARGV[3])
if room or redis.call("HEXISTS", KEYS[1], ARGV[1]) == 1 then
    redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
end
redis.call("EXPIRE", KEYS[1], tonumber(ARGV[4]))
return 1
"""
# KEYS: [stream]. ARGV: [start id (exclusive prefix "("), count].
_PAGE = """-- tunegate:capture.page:v1
return redis.call("XRANGE", KEYS[1], ARGV[1], "+", "COUNT", tonumber(ARGV[2]))
"""
_SCORES = """-- tunegate:capture.scores:v1
return redis.call("HGETALL", KEYS[1])
"""


def stream_key(task: str) -> str:
    return f"tunegate:capture:{{{task}}}"


def scores_key(task: str) -> str:
    return f"tunegate:capture:{{{task}}}:scores"


def dataset_key(task: str) -> str:
    """What the latest `dataset export` of `task` estimated (JSON), for the break-even."""
    return f"tunegate:capture:{{{task}}}:dataset"


def dataset_cost(raw: bytes | None) -> float | None:
    """The estimated training cost in a `dataset_key` value, or None."""
    try:
        cost = orjson.loads(raw)["estimated_cost_usd"] if raw else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return float(cost) if isinstance(cost, int | float) else None


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request falls in the capture sample: a hash of its id under `rate`, so
    every instance (and feedback, later) agrees without stored state."""
    if rate >= 1:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8, person=b"capture").digest()
    return int.from_bytes(digest) / 2**64 < rate


def decide(outcome: Outcome) -> tuple[Result, Exchange] | None:
    """`kept` or `skipped` for a sampled exchange; None for one that is no candidate."""
    exchange = outcome.exchange
    served = outcome.served
    if exchange is None or served is None or outcome.status != "ok":
        return None
    policy = exchange.policy
    if served != outcome.chosen or served not in policy.variants:
        return None
    if not sampled(outcome.request_id, policy.rate):
        return None
    if exchange.opted_out or exchange.stream:
        return "skipped", exchange
    if policy.only_valid and not _passed(outcome, served):
        return "skipped", exchange
    return "kept", exchange


def _passed(outcome: Outcome, served: str) -> bool:
    """The served answer passed the schema and every check (the last verdicts on it)."""
    schema = [status for variant, status in outcome.json_results if variant == served]
    if schema and schema[-1] == "invalid":
        return False
    checks = [verdict for variant, verdict in outcome.check_results if variant == served]
    return not checks or checks[-1].passed


@dataclass(frozen=True, slots=True)
class Captured:
    """One kept exchange as read back, with its feedback score when one was given."""

    request_id: str
    at: float
    variant: str
    model: str
    tenant: str
    messages: list[dict[str, Any]]
    answer: str
    score: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "at": self.at,
            "variant": self.variant,
            "model": self.model,
            "tenant": self.tenant,
            "messages": self.messages,
            "answer": self.answer,
            "score": self.score,
        }


class _Pending:
    __slots__ = ("entries", "policy")

    def __init__(self, policy: CapturePolicy) -> None:
        self.policy = policy
        self.entries: list[bytes] = []


class Capture:
    """The capture recorder and the reads of captured exchanges (through `Store`)."""

    def __init__(
        self,
        store: Store,
        *,
        counted: Callable[[str, Result], None] = lambda task, result: None,
        clock: Callable[[], float] = time.time,
        flush_s: float = FLUSH_S,
    ) -> None:
        self._store = store
        self._counted = counted
        self._clock = clock
        self._flush_s = flush_s
        self._write = store.register(_WRITE)
        self._score = store.register(_SCORE)
        self._page = store.register(_PAGE)
        self._scores = store.register(_SCORES)
        self._batch: dict[str, _Pending] = {}
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[object]] = set()

    def record(self, outcome: Outcome) -> None:
        """The recorder: decides, counts and gathers; never waits."""
        decision = decide(outcome)
        if decision is None:
            return
        result, exchange = decision
        self._counted(outcome.task, result)
        if result != "kept":
            return
        if self._size >= MAX_PENDING:
            log.warning(
                "capture: the store is not keeping up; dropping an exchange",
                extra={"request_id": outcome.request_id, "task": outcome.task},
            )
            return
        entry = {
            "id": outcome.request_id,
            "at": self._clock(),
            "variant": outcome.served,
            "model": outcome.served_model,
            "tenant": outcome.tenant or "open",
            "messages": exchange.messages,
            "answer": exchange.answer,
        }
        pending = self._batch.setdefault(outcome.task, _Pending(exchange.policy))
        pending.entries.append(orjson.dumps(entry))
        self._size += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch, self._size = self._batch, {}, 0
        now_ms = int(self._clock() * 1000)
        for task, pending in batch.items():
            policy = pending.policy
            oldest = max(0, now_ms - policy.ttl_s * 1000)
            args: list[ScriptArg] = [policy.max_examples, oldest, policy.ttl_s]
            args.extend(pending.entries)
            write = asyncio.get_running_loop().create_task(
                self._store.run(self._write, [stream_key(task)], args)
            )
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)

    async def settle(self, timeout_s: float = 1.0) -> None:
        """Write what is gathered and wait (at most `timeout_s`) for this process's writes."""
        self._flush()
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=timeout_s)

    async def drain(self) -> None:
        await self.settle(timeout_s=5.0)

    async def add_score(
        self, task: str, policy: CapturePolicy, request_id: str, score: float
    ) -> None:
        """Write a feedback score beside the capture, for requests in its sample."""
        if not sampled(request_id, policy.rate):
            return
        args: list[ScriptArg] = [request_id, repr(score), policy.max_examples, policy.ttl_s]
        await self._store.run(self._score, [scores_key(task)], args)

    async def note_dataset(self, task: str, summary: dict[str, Any], ttl_s: int) -> bool:
        """Keep what an export estimated (its `estimated_cost_usd`, ...) for the report's
        break-even; False when the store failed."""
        return await self._store.set(dataset_key(task), orjson.dumps(summary), ttl_s)

    async def read(self, task: str, ttl_s: int | None = None) -> AsyncIterator[Captured]:
        """Every kept exchange of `task`, oldest first (entries older than `ttl_s` are
        left out even before a write trims them). Raises `RuntimeError` when the store
        fails."""
        await self.settle()
        raw_scores = await self._store.run(self._scores, [scores_key(task)])
        if raw_scores is None:
            raise RuntimeError("the store did not answer")
        scores = _scores_of(raw_scores)
        oldest = self._clock() - ttl_s if ttl_s else 0.0
        start = "-"
        while True:
            page = await self._store.run(self._page, [stream_key(task)], [start, READ_PAGE])
            if not isinstance(page, list):
                raise RuntimeError("the store did not answer")
            for _, fields in page:
                captured = _captured(fields, scores)
                if captured is not None and captured.at >= oldest:
                    yield captured
            if len(page) < READ_PAGE:
                return
            start = "(" + page[-1][0].decode()


def _scores_of(flat: object) -> dict[str, float]:
    scores: dict[str, float] = {}
    if isinstance(flat, list):
        for name, value in zip(flat[::2], flat[1::2], strict=False):
            try:
                scores[name.decode()] = float(value)
            except (AttributeError, ValueError):
                continue
    return scores


def _captured(fields: list[bytes], scores: dict[str, float]) -> Captured | None:
    values = dict(zip(fields[::2], fields[1::2], strict=False))
    try:
        data = orjson.loads(values[b"d"])
        return Captured(
            request_id=str(data["id"]),
            at=float(data["at"]),
            variant=str(data["variant"]),
            model=str(data["model"]),
            tenant=str(data["tenant"]),
            messages=list(data["messages"]),
            answer=str(data["answer"]),
            score=scores.get(str(data["id"])),
        )
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return None
