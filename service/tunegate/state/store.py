"""The store: every Redis command the gateway runs goes through here, and only here.

It fails open. Each method catches every error a Redis server or the network can cause
(refused, reset, timed out, frozen, garbage on the wire, wrong type) and answers with a
neutral value: `None`, `False`. Callers never see a redis exception and never wait much
longer than `socket_timeout_ms` on a connection that is already open; `state` tells the
health endpoint and the metrics whether the last command failed.

Connections come from one bounded `ConnectionPool` with no client-side retries: a command
that finds every connection busy fails at once and counts as an error like any other (no
request queues behind the store); hiredis parses the replies. A command whose task is
cancelled mid-flight (a client hung up) leaves no unread reply behind: redis-py 8 closes
the connection on any `BaseException` raised while sending or reading (its fix for
redis-py #2624), so the next command gets a fresh socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

logger = logging.getLogger("tunegate.store")

StoreState = Literal["ok", "degraded"]
ScriptArg = str | bytes | int | float
T = TypeVar("T")


@dataclass(frozen=True)
class ScriptHandle:
    """A Lua script registered with `Store.register`; pass it to `Store.run`."""

    sha1: str


class Store:
    """One Redis connection pool behind fail-open async methods.

    The constructor does no I/O: connections open on first use and after every failure,
    so a store built while Redis is down starts working when Redis comes back.
    """

    def __init__(
        self,
        url: str,
        *,
        socket_timeout_ms: int = 50,
        connect_timeout_ms: int = 200,
        max_connections: int = 128,
        error_log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        socket_timeout_s = socket_timeout_ms / 1000
        pool = ConnectionPool.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_ms / 1000,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), retries=0),
        )
        self._redis = Redis.from_pool(pool)
        self._scripts: dict[str, str] = {}  # sha1 -> source
        self._state: StoreState = "ok"
        self._error_log_interval_s = error_log_interval_s
        self._clock = clock
        self._last_logged: dict[str, float] = {}

    @property
    def state(self) -> StoreState:
        """`degraded` after a failed command, `ok` again after the next one that succeeds."""
        return self._state

    async def close(self) -> None:
        """Close every pooled connection; the store must not be used afterwards."""
        await self._redis.aclose()

    async def get(self, key: str) -> bytes | None:
        """The value at `key`; `None` when it is absent or the store failed."""
        try:
            value = await _uncancelled(self._redis.get(key))
        except Exception as exc:  # fail open: any failure is a miss (see module docstring)
            self._failed(exc)
            return None
        self._succeeded()
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> bool:
        """Store `value` at `key` for `ttl_s` seconds; `False` when the store failed.
        Raises `ValueError` for a `ttl_s` below 1: nothing is stored without expiry."""
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1, not {ttl_s}")
        try:
            await _uncancelled(self._redis.set(key, value, ex=ttl_s))
        except Exception as exc:  # fail open
            self._failed(exc)
            return False
        self._succeeded()
        return True

    async def ping(self) -> bool:
        """True when the server answered PING."""
        try:
            await _uncancelled(self._redis.ping())
        except Exception as exc:  # fail open
            self._failed(exc)
            return False
        self._succeeded()
        return True

    def register(self, lua: str) -> ScriptHandle:
        """Register a Lua script (no I/O); run it with `run`. The server loads it on first
        use and again after a restart emptied its script cache."""
        sha1 = hashlib.sha1(lua.encode(), usedforsecurity=False).hexdigest()
        self._scripts.setdefault(sha1, lua)
        return ScriptHandle(sha1=sha1)

    async def run(
        self, handle: ScriptHandle, keys: Sequence[str] = (), args: Sequence[ScriptArg] = ()
    ) -> object | None:
        """Run a registered script atomically; its reply (bytes, int, list), or `None` when
        the store failed or the script raised an error."""
        # EVALSHA through `execute_command`: redis-py's script objects cost a fifth more
        # per call here (measured), for the same command.
        try:
            try:
                reply: object = await _uncancelled(
                    self._redis.execute_command(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                        "EVALSHA", handle.sha1, len(keys), *keys, *args
                    )
                )
            except NoScriptError:  # a new or restarted server: EVAL caches it again
                reply = await _uncancelled(
                    self._redis.execute_command(  # type: ignore[no-untyped-call]
                        "EVAL", self._scripts[handle.sha1], len(keys), *keys, *args
                    )
                )
        except Exception as exc:  # fail open
            self._failed(exc)
            return None
        self._succeeded()
        return reply

    def _succeeded(self) -> None:
        if self._state != "ok":
            self._state = "ok"
            self._log_rarely(logging.INFO, "recovered", "store recovered")

    def _failed(self, exc: Exception) -> None:
        self._state = "degraded"
        # Only the class name: messages can quote keys or values.
        kind = type(exc).__name__
        self._log_rarely(logging.WARNING, kind, "store error %s; failing open", kind)

    def _log_rarely(self, level: int, kind: str, message: str, *args: object) -> None:
        """Log at most once per `error_log_interval_s` for each kind: a store that is down
        fails every request, and one line per request would drown the log."""
        now = self._clock()
        last = self._last_logged.get(kind)
        if last is None or now - last >= self._error_log_interval_s:
            self._last_logged[kind] = now
            logger.log(level, message, *args, extra={"store_event": kind})


async def _uncancelled(command: Awaitable[T]) -> T:
    """Await a redis-py command, and re-raise a cancellation it swallowed: one that lands
    while a connection opens can come out as a normal return or a `ConnectionError`,
    and the cancelled task would run on (a lifespan waiting for it, forever)."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    try:
        return await command
    finally:
        if task is not None and task.cancelling() > before:
            raise asyncio.CancelledError  # the cancellation wins, as it should
