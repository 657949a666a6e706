"""What one request was and how it ended: the records every recorder reads (metrics,
experiments, limits) without importing the request flow that produces them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tunegate.config.compiled import CapturePolicy, Task, Variant
from tunegate.quality.checks import CheckVerdict

Message = Mapping[str, Any]
CacheState = Literal["hit", "miss", "bypass"]
Status = Literal["ok", "fallback", "error", "invalid_output", "deadline", "rejected"]
ShadowStatus = Literal["ok", "invalid", "error", "skipped"]
JudgeKind = Literal["point", "pair"]
JudgeStatus = Literal["ok", "invalid", "error", "skipped"]


@dataclass(frozen=True, slots=True)
class Call:
    """One caller request, validated and resolved to a task (built by the API layer)."""

    request_id: str
    task: Task
    messages: tuple[Message, ...]
    params: Mapping[str, Any]
    unit: str | None = None
    forced: str | None = None
    tenant: str = "default"
    cache_read: bool = True
    cache_write: bool = True
    key_digest: str | None = None  # the caller's API key (sha256); None in open mode
    # Asked as a stream; `capture` False for keys with `capture: false` (SPEC §9).
    stream: bool = False
    capture: bool = True


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One upstream attempt, successful or not, for cost and metrics."""

    variant: str
    model: str
    seconds: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Exchange:
    """What capture (SPEC §9) may keep of an answered request of a task that captures:
    the caller's messages, the validated answer the caller got, and what bars keeping it
    (a stream, a key that opted out). Only on answers made by an upstream call for this
    request (never cache hits) that no one forced."""

    messages: tuple[Message, ...]
    answer: str
    policy: CapturePolicy
    stream: bool
    opted_out: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended; what metrics and experiments record.

    `chosen` is the variant the router picked (the experiment sample when `sample`);
    `served` the one that answered (None when none did). `task` is `_unknown` for
    requests naming no known task. Labels derived from it come from the config only."""

    request_id: str
    task: str
    tenant: str | None
    chosen: str | None
    served: str | None
    served_model: str | None
    sample: bool
    status: Status
    cache: CacheState
    # hit | miss | bypass | error (the store failed and the lookup counted as a miss);
    # None when the request never reached a lookup (rejected).
    cache_lookup: Literal["hit", "miss", "bypass", "error"] | None
    seconds: float
    calls: tuple[UpstreamCall, ...] = ()
    # (variant, valid | repaired | invalid) for each answer the JSON guard checked.
    json_results: tuple[tuple[str, str], ...] = ()
    # (variant, verdict) for each answer the output checks evaluated, in order.
    check_results: tuple[tuple[str, CheckVerdict], ...] = ()
    fallbacks: tuple[tuple[str, str, str], ...] = ()
    store_seconds: float = 0.0
    ttft_seconds: float | None = None
    saved_usd: float = 0.0
    key_digest: str | None = None  # the `Call`'s: whose budget the cost counts against
    exchange: Exchange | None = None

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.calls)

    @property
    def upstream_seconds(self) -> float:
        return sum(c.seconds for c in self.calls)

    @property
    def overhead_seconds(self) -> float:
        """Time spent in the gateway itself: not waiting on the upstream or the store."""
        return max(0.0, self.seconds - self.upstream_seconds - self.store_seconds)


def rejected(request_id: str, task: str | None, seconds: float) -> Outcome:
    """The outcome of a request refused before any upstream call (4xx)."""
    return Outcome(
        request_id=request_id,
        task=task or "_unknown",
        tenant=None,
        chosen=None,
        served=None,
        served_model=None,
        sample=False,
        status="rejected",
        cache="bypass",
        cache_lookup=None,
        seconds=seconds,
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful answer, ready for the API layer to shape."""

    request_id: str
    task: Task
    variant: Variant
    content: str
    parsed: Any
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cache: CacheState
    json_status: str | None
    fallback_from: str | None
    created: int
    # `x-tunegate-checks`: passed | reasked | failed; None for tasks without checks.
    checks: str | None = None
    # The upstream's, on a miss; None (omitted from the body) otherwise (SPEC §12).
    system_fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class ShadowOutcome:
    """One shadow call: `agree` None unless the shadow answered (`ok`)."""

    request_id: str
    task: str
    primary: str
    shadow: str
    model: str
    status: ShadowStatus
    agree: bool | None
    seconds: float
    primary_seconds: float
    cost_usd: float
    primary_cost_usd: float


@dataclass(frozen=True, slots=True)
class JudgeOutcome:
    """One judgement (SPEC §8). `point`: `variant` is the judged sample's variant and
    `score` its score in [0, 10]. `pair`: `variant` is the primary, `shadow` the shadow
    variant and `winner` the better one's name or "tie". Both None unless `ok`."""

    request_id: str
    task: str
    kind: JudgeKind
    model: str
    status: JudgeStatus
    variant: str
    shadow: str | None = None
    score: float | None = None
    winner: str | None = None
    cost_usd: float = 0.0
