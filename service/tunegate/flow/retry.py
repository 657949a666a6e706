"""When to try an upstream call again (SPEC §3): pure decisions, no sleeping here.

Retry rate limits (429 `rate_limit_exceeded`), 5xx, timeouts and connection errors with
full-jitter exponential backoff; honour `Retry-After` when it fits in the time left, else
give up on this variant so the fallback can run within the deadline. Never retry what
cannot succeed on a second try (400/401/403/404, `insufficient_quota`, invalid output).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass

from tunegate.errors import UpstreamError


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.05
    cap_s: float = 2.0


def backoff_s(retry_number: int, backoff: Backoff, random: Callable[[], float]) -> float:
    """Full jitter: a uniform wait in [0, min(cap, base * 2**n))."""
    return random() * min(backoff.cap_s, backoff.base_s * (1 << retry_number))


def next_wait(
    error: UpstreamError,
    retry_number: int,
    retries: int,
    remaining_s: float,
    backoff: Backoff,
    random: Callable[[], float],
) -> float | None:
    """Seconds to wait before retrying the same variant, or None to move on.

    `retry_number` counts retries already made; `retries` is the task's allowance."""
    if not error.retryable or retry_number >= retries:
        return None
    wait = error.retry_after_s
    if wait is None:
        wait = backoff_s(retry_number, backoff, random)
    # A wait that leaves no time for the attempt itself is no retry at all.
    if wait >= remaining_s:
        return None
    return wait


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from `Retry-After` (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer
