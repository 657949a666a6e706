"""Per-key limits (SPEC §1 `auth.keys`: `rpm`, `daily_budget_usd`; §2 429; §7 budgets reset
at 00:00 UTC), shared by every gateway instance through the store.

Requests per minute: a sliding-window log, one sorted set per key
(`tunegate:limit:{<key sha256>}`) holding the admission times of the last 60 s, so a key
never gets more than `rpm` requests into any 60-second window, across all instances, and a
refused caller is told exactly when the oldest admission leaves the window
(`Retry-After`). Times come from the Redis server (`TIME`), so instances with skewed clocks
share one timeline. Memory is O(rpm) per active key and each entry expires with the
window; GCRA would be O(1) but lets a key take up to twice its `rpm` in one window.

Daily budget: the USD spent today (`tunegate:budget:{<key sha256>}:<YYYY-MM-DD>`, UTC),
added after each request from its `Outcome` (every upstream call it made, re-asks and
failed 502/504 answers included; cache hits cost 0). A request is refused once the spend
has reached the budget; requests already in flight when it is crossed still finish and
are charged, so the spend can pass the budget by what they cost.

One Lua script admits a request: budget first, then the window, and only an admitted
request is written to the window, so a refused request (by either limit) consumes
nothing. Requests refused before the check (401/403/404/400/413) never reach it. Both
keys carry the key's digest as their hash tag (`{sha256}`), so the script touches one slot
of a Redis Cluster.

Keys with neither limit, and open mode, cost no store call at all. When the store is
unreachable the key's limits follow `auth.on_store_error`: `open` lets the request through,
`closed` answers 503 `limits_unavailable`; either is logged at most once per interval.
A slow reply is not an outage (SPEC §12): an admission whose reply timed out is tried
again (the script is idempotent per request) within `retry_budget_s`, so a busy Redis
never admits a request the window refused; the limits fail open or closed only once the
store is `down` (3 failures in a row) or the budget is spent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from tunegate.config.compiled import ApiKey
from tunegate.errors import LimitExceeded, Unavailable
from tunegate.records import Outcome
from tunegate.state.rarely import RareLog
from tunegate.state.store import ScriptHandle, Store, StoreFailure

UNREACHABLE = "store unreachable"
log = logging.getLogger("tunegate.limits")

LIMIT_PREFIX = "tunegate:limit:"
BUDGET_PREFIX = "tunegate:budget:"
WINDOW_MS = 60_000
DAY_S = 86_400
# A day's spend outlives its day by this much, so an instance whose clock lags a little
# behind still finds it.
BUDGET_GRACE_S = 3_600

LimitsState = Literal["off", "ok", "open", "closed"]

# KEYS[1] the key's window, KEYS[2] its spend today.
# ARGV: rpm (0: none), budget in USD (0: none), a unique member, the window in ms, and
# now in ms ("": the server's TIME).
# Returns {0, 0} admitted, {1, ms until a slot frees} rate limited, {2, 0} over budget.
# A request already in the window was admitted by an earlier try whose reply was lost
# (a timeout): admitted again, not counted twice, so a retry keeps the count exact.
_ADMIT = """-- tunegate:limits.admit:v2
if redis.call("ZSCORE", KEYS[1], ARGV[3]) then
    return {0, 0}
end
local budget = tonumber(ARGV[2])
if budget > 0 then
    local spent = tonumber(redis.call("GET", KEYS[2]) or "0")
    if spent >= budget then
        return {2, 0}
    end
end
local rpm = tonumber(ARGV[1])
if rpm > 0 then
    local window = tonumber(ARGV[4])
    local now = tonumber(ARGV[5])
    if not now then
        local time = redis.call("TIME")
        now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    end
    redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - window)
    local count = redis.call("ZCARD", KEYS[1])
    if count >= rpm then
        -- A slot frees when the admission `count - rpm` places from the oldest leaves.
        local edge = redis.call("ZRANGE", KEYS[1], count - rpm, count - rpm, "WITHSCORES")
        return {1, tonumber(edge[2]) + window - now}
    end
    redis.call("ZADD", KEYS[1], now, ARGV[3])
    redis.call("PEXPIRE", KEYS[1], window)
end
return {0, 0}
"""

# KEYS[1] the key's spend today; ARGV: USD to add, TTL in seconds.
_CHARGE = """-- tunegate:limits.charge:v2
local spent = redis.call("INCRBYFLOAT", KEYS[1], ARGV[1])
redis.call("EXPIRE", KEYS[1], ARGV[2])
return spent
"""

ADMITTED, RATE_LIMITED, OVER_BUDGET = 0, 1, 2


def is_limited(key: ApiKey | None) -> bool:
    """Whether requests by `key` are checked at all (None: open mode)."""
    return key is not None and (key.rpm is not None or key.daily_budget_usd is not None)


def seconds_until_reset(now: float) -> float:
    """Seconds from the Unix time `now` to the next 00:00 UTC, when budgets reset. Unix
    time counts no leap seconds, so every UTC day starts at a multiple of 86,400."""
    return DAY_S - now % DAY_S


def budget_day(now: float) -> str:
    """The UTC date of the Unix time `now`, which names that day's spend."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def window_key(key: ApiKey) -> str:
    return f"{LIMIT_PREFIX}{{{key.sha256}}}"


def budget_key(key: ApiKey, now: float) -> str:
    return f"{BUDGET_PREFIX}{{{key.sha256}}}:{budget_day(now)}"


def decision_of(reply: object) -> tuple[int, float] | None:
    """(verdict, seconds to wait) from the admit script's reply; None for anything else
    (a server that answered garbage counts as a failed store)."""
    if not isinstance(reply, list) or len(reply) != 2:
        return None
    verdict, wait_ms = reply
    if not isinstance(verdict, int) or not isinstance(wait_ms, int):
        return None
    if verdict not in (ADMITTED, RATE_LIMITED, OVER_BUDGET):
        return None
    return verdict, max(0, wait_ms) / 1000


class Limits:
    """Admits requests under their key's limits and charges what they cost."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        window_ms: int = WINDOW_MS,
        window_clock: Callable[[], int] | None = None,
        log_interval_s: float = 10.0,
        retry_budget_s: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (Unix time) dates the budgets; `window_ms` is the rate window, one
        minute but for tests; `window_clock` (ms) times the window, by default the
        store server's `TIME` (one timeline for every instance), in tests their own."""
        self._store = store
        self._admit = store.register(_ADMIT)
        self._charge_script: ScriptHandle = store.register(_CHARGE)
        self._clock = clock
        self._window_ms = window_ms
        self._window_clock = window_clock
        self._retry_budget_s = retry_budget_s
        self._monotonic = monotonic
        # One kind for every line about an unreachable store: one line per interval.
        self._log_rarely = RareLog(log, log_interval_s, clock=monotonic)
        # Charges on their way to the store, per key digest: a request by the same key
        # waits for them, so this instance never checks a spend it has not written yet.
        self._charging: dict[str, set[asyncio.Task[None]]] = {}

    async def admit(self, key: ApiKey | None, request_id: str, *, fail_open: bool) -> None:
        """Let one request by `key` through, or raise `LimitExceeded` (429 `rate_limited`
        or `budget_exceeded`, with the wait) or, when the store is unreachable and
        `fail_open` is false, `Unavailable` (503 `limits_unavailable`)."""
        if key is None or not is_limited(key):
            return
        pending = self._charging.get(key.sha256)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        now = self._clock()
        reply = await self._admit_once(key, request_id, now)
        give_up_at = self._monotonic() + self._retry_budget_s
        while isinstance(reply, StoreFailure) and reply.slow and self._monotonic() < give_up_at:
            reply = await self._admit_once(key, request_id, now)
        decision = decision_of(reply)
        if decision is None:
            self._store_failed(fail_open)
            if not fail_open:
                raise Unavailable(
                    "Rate limits cannot be checked right now; retry shortly.",
                    code="limits_unavailable",
                    retry_after_s=1,
                )
        elif decision[0] == RATE_LIMITED:
            wait_s = decision[1]
            raise LimitExceeded(
                f"This key is limited to {key.rpm} requests per minute; retry in {wait_s:.3f} s.",
                retry_after_s=wait_s,
                # The SDKs read the millisecond header first: the wait, exactly.
                headers={"retry-after-ms": str(max(1, round(wait_s * 1000)))},
            )
        elif decision[0] == OVER_BUDGET:
            raise LimitExceeded(
                f"This key has spent its daily budget of {key.daily_budget_usd:g} USD; "
                "budgets reset at 00:00 UTC.",
                code="budget_exceeded",
                should_retry=False,
                retry_after_s=seconds_until_reset(now),
            )

    async def _admit_once(self, key: ApiKey, request_id: str, now: float) -> object:
        return await self._store.run_checked(
            self._admit,
            keys=(window_key(key), budget_key(key, now)),
            args=(
                key.rpm or 0,
                key.daily_budget_usd or 0,
                request_id,
                self._window_ms,
                "" if self._window_clock is None else self._window_clock(),
            ),
        )

    def recorder(self, keys: Mapping[str, ApiKey]) -> Callable[[Outcome], None]:
        """A gateway recorder for the config whose keys (by sha256) are `keys`: it
        charges each request's cost to its key's daily budget, in the background (the
        next request by the same key in this process waits for it)."""

        def record(outcome: Outcome) -> None:
            key = keys.get(outcome.key_digest) if outcome.key_digest is not None else None
            if key is not None and key.daily_budget_usd is not None and outcome.cost_usd > 0:
                self._start_charge(key, outcome.cost_usd)

        return record

    def _start_charge(self, key: ApiKey, cost_usd: float) -> None:
        digest = key.sha256
        task = asyncio.get_running_loop().create_task(self._charge(key, cost_usd))
        pending = self._charging.setdefault(digest, set())
        pending.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            pending.discard(finished)
            if not pending and self._charging.get(digest) is pending:
                del self._charging[digest]

        task.add_done_callback(done)

    async def _charge(self, key: ApiKey, cost_usd: float) -> None:
        now = self._clock()
        ttl_s = int(seconds_until_reset(now)) + BUDGET_GRACE_S
        reply = await self._store.run(
            self._charge_script, keys=(budget_key(key, now),), args=(repr(cost_usd), ttl_s)
        )
        if reply is None:
            self._log_rarely(
                logging.WARNING,
                UNREACHABLE,
                "limits: a spend could not be recorded (store unreachable)",
            )

    async def aclose(self) -> None:
        """Wait for the charges still on their way to the store."""
        tasks = [task for pending in self._charging.values() for task in pending]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def state(self, keys: Sequence[ApiKey], fail_open: bool) -> LimitsState:
        """For `/readyz`: `off` when no key has a limit, `ok` when they are enforced
        (the store `ok` or `slow`), `open` or `closed` while it is `down`."""
        if not any(is_limited(key) for key in keys):
            return "off"
        if self._store.state != "down":
            return "ok"
        return "open" if fail_open else "closed"

    def _store_failed(self, fail_open: bool) -> None:
        if fail_open:
            self._log_rarely(
                logging.WARNING,
                UNREACHABLE,
                "limits: store unreachable; letting requests through (open)",
            )
        else:
            self._log_rarely(
                logging.WARNING,
                UNREACHABLE,
                "limits: store unreachable; refusing limited keys (closed)",
            )
