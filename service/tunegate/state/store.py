"""The store: every Redis command the gateway runs goes through here, and only here.

It fails open. Each method catches every error a Redis server or the network can cause
(refused, reset, timed out, frozen, garbage on the wire, wrong type) and answers with a
value: `get_checked` and `run_checked` return a `StoreFailure` of their own call (no flag
that another coroutine's call could flip before the caller reads it); `get`, `run` and
`set` answer the neutral `None` or `False`. Callers never see a redis exception and never
wait much longer than `socket_timeout_ms` on a connection that is already open.

A slow reply is not an outage (SPEC §12 "Store under load"): `state` is `slow` after a
command timed out, `down` after 3 consecutive failures (timeouts that expire within
half a socket timeout of each other count as one: they are one stall), and `ok` again
after the next success. While `down`, calls fail at once without touching Redis (limits then follow
`auth.on_store_error`), except one probe per `probe_interval_s` (and every `ping`, which
`/readyz` sends) that closes the breaker when it succeeds. Every transition is logged.

On one server (`redis://`, `rediss://`, `unix://`) the connections are the store's own
(`resp.Connections`: an asyncio protocol that hiredis parses for; a `get` costs this
process half the CPU it did through redis-py's pool, measured); on a Sentinel's primary
they come from redis-py's pool. Both are bounded by `max_connections`, with no
client-side retries: a command that finds every connection busy fails at once and counts
as an error like any other (no request queues behind the store).

On one server or a Sentinel's primary, the commands issued in one turn of the event loop
go out together, as one pipeline on one connection (`coalesce.Coalescer`): at
concurrency 32 a round trip's fixed cost (the pooled connection, the socket write, the
read, the wake-up) is shared by every request of the turn. Each command keeps its own
reply or failure; the batch's send and reads are bounded by `socket_timeout_ms` together
(the pool's connections get no per-operation timeout, which in redis-py costs a task per
write), its connection by `connect_timeout_ms` plus that. A caller cancelled mid-flight
(a client hung up) stops waiting for its own reply only: the batch reads every reply, so
the connection stays in step. A Cluster's commands go through redis-py's cluster client
one by one (it routes each by slot), where redis-py 8 closes the connection on any
`BaseException` raised while sending or reading (its fix for redis-py #2624), so a
cancelled command leaves no unread reply behind either.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeVar

from redis._parsers.base import BaseParser
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import RedisSSLContext, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    InvalidResponse,
    MaxConnectionsError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from tunegate.state.coalesce import Coalescer
from tunegate.state.rarely import RareLog
from tunegate.state.resp import ConnectionOptions, Connections, Errors
from tunegate.state.store_url import StoreUrl, parse_store_url

logger = logging.getLogger("tunegate.store")

StoreState = Literal["ok", "slow", "down"]
STORE_STATES: tuple[StoreState, ...] = ("ok", "slow", "down")
# Consecutive failed calls that make the store `down`.
DOWN_AFTER = 3
ScriptArg = str | bytes | int | float
Command = tuple[ScriptArg, ...]
T = TypeVar("T")


# The exceptions the store's own connections raise: redis-py's, as its pool raised them.
_REDIS_ERRORS = Errors(
    reply=BaseParser.parse_error,
    garbage=InvalidResponse,
    connection=RedisConnectionError,
    timeout=RedisTimeout,
    busy=MaxConnectionsError,
    auth=AuthenticationError,
    auth_args=AuthenticationWrongNumberOfArgsError,
)
# `parse_url`'s keys the store's own connections implement, and the `ssl_*` ones
# `RedisSSLContext` takes.
_PLAIN = frozenset({"host", "port", "path", "db", "username", "password", "connection_class"})
_SSL = {
    "ssl_keyfile": "keyfile",
    "ssl_certfile": "certfile",
    "ssl_cert_reqs": "cert_reqs",
    "ssl_include_verify_flags": "include_verify_flags",
    "ssl_exclude_verify_flags": "exclude_verify_flags",
    "ssl_ca_certs": "ca_certs",
    "ssl_ca_data": "ca_data",
    "ssl_ca_path": "ca_path",
    "ssl_check_hostname": "check_hostname",
    "ssl_min_version": "min_version",
    "ssl_ciphers": "ciphers",
    "ssl_password": "password",
}
# `SSLConnection`'s defaults, where they differ from `RedisSSLContext`'s.
_SSL_DEFAULTS = {"cert_reqs": "required", "check_hostname": True}


@dataclass(frozen=True, slots=True)
class StoreFailure:
    """What a checked call answers when it failed: `timeout` (the server may only be
    slow: a retry can succeed), `error` (refused, reset, garbage, a script error) or
    `down` (not tried: the breaker is open)."""

    kind: Literal["timeout", "error", "down"]

    @property
    def slow(self) -> bool:
        return self.kind == "timeout"


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
        probe_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        target = parse_store_url(url)
        self._socket_timeout_s = socket_timeout_ms / 1000
        self._connect_timeout_s = connect_timeout_ms / 1000
        self._redis: Redis | RedisCluster
        self._redis, self._sentinels = _client(
            target,
            socket_timeout_s=self._socket_timeout_s,
            connect_timeout_s=self._connect_timeout_s,
            max_connections=max_connections,
        )
        self._pipe: Coalescer[Command] | None = None
        self._connections: Connections | None = None
        options = _own_connection_options(target.url) if target.kind == "single" else None
        if options is not None:
            self._connections = Connections(
                options,
                _REDIS_ERRORS,
                max_connections=max_connections,
                connect_timeout_s=self._connect_timeout_s,
                socket_timeout_s=self._socket_timeout_s,
            )
            self._pipe = Coalescer(partial(_send_over, self._connections))
        elif isinstance(self._redis, Redis):
            self._pipe = Coalescer(partial(self._send_batch, self._redis.connection_pool))
        self._scripts: dict[str, str] = {}  # sha1 -> source
        self._later: set[asyncio.Task[object]] = set()  # `send`s through the cluster client
        self._state: StoreState = "ok"
        self._failures = 0  # consecutive
        # The last failure counted: every command of a failed batch raises the same
        # exception, and one batch is one failure (one slow reply is not an outage).
        self._counted: Exception | None = None
        # When the last counted timeout happened: timeouts that expire together (within
        # half a socket timeout) are one failure, a stall of this process's event loop
        # (which times out every batch in flight at once) more often than of the server.
        self._timed_out_at = -math.inf
        self._probe_at = 0.0
        self._probe_interval_s = probe_interval_s
        self._clock = clock
        # A store that is down fails every request: one line per request would drown the log.
        self._log_rarely = RareLog(
            logger, error_log_interval_s, clock=clock, event_field="store_event"
        )

    @property
    def state(self) -> StoreState:
        """`ok`, `slow` after a command timed out, `down` after `DOWN_AFTER` consecutive
        failures; `ok` again after the next success."""
        return self._state

    async def settle(self) -> None:
        """Wait until every command sent so far is answered (or failed): the batches under
        way, and what `run_later` and `set_later` sent."""
        while self._later:
            await asyncio.gather(*self._later, return_exceptions=True)
        if self._pipe is not None:
            await self._pipe.aclose()

    async def close(self) -> None:
        """Close every pooled connection, once the commands under way are answered; the
        store must not be used afterwards."""
        await self.settle()
        if self._connections is not None:
            await self._connections.aclose()
        await self._redis.aclose()
        for sentinel in self._sentinels:
            await sentinel.aclose()

    async def get(self, key: str) -> bytes | None:
        """The value at `key`; `None` when it is absent or the store failed."""
        value = await self.get_checked(key)
        return None if isinstance(value, StoreFailure) else value

    async def get_checked(self, key: str) -> bytes | StoreFailure | None:
        """The value at `key`, `None` when it is absent, or this call's failure."""
        value = await self._call(lambda: self._command("GET", key))
        return value if isinstance(value, bytes | StoreFailure) else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> bool:
        """Store `value` at `key` for `ttl_s` seconds; `False` when the store failed.
        Raises `ValueError` for a `ttl_s` below 1: nothing is stored without expiry."""
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1, not {ttl_s}")
        done = await self._call(lambda: self._command("SET", key, value, "EX", ttl_s))
        return not isinstance(done, StoreFailure)

    async def set_many(self, items: Mapping[str, bytes], ttl_s: int) -> bool:
        """Store every value of `items` at its key for `ttl_s` seconds, in one round trip
        (per node of a cluster): a pipeline, not a transaction, so the keys may live in
        different slots. `False` when the store failed (some may be stored: a `SET` is
        safe to repeat)."""
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1, not {ttl_s}")

        async def write() -> object:
            if self._pipe is not None:  # in this turn's batch, one round trip with it
                sets = [self._pipe.submit(("SET", k, v, "EX", ttl_s)) for k, v in items.items()]
                return await _all_of(sets)
            pipe = self._redis.pipeline(transaction=False)
            for key, value in items.items():
                pipe.set(key, value, ex=ttl_s)
            return await pipe.execute()

        return not isinstance(await self._call(write), StoreFailure)

    async def ping(self) -> bool:
        """True when the server answered PING; tried even while `down` (a probe)."""
        pinged = await self._call(lambda: self._command("PING"), probe=True)
        return not isinstance(pinged, StoreFailure)

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
        reply = await self.run_checked(handle, keys, args)
        return None if isinstance(reply, StoreFailure) else reply

    async def run_checked(
        self, handle: ScriptHandle, keys: Sequence[str] = (), args: Sequence[ScriptArg] = ()
    ) -> object:
        """Run a registered script atomically: its reply, or this call's `StoreFailure`
        (a script error is a failure of kind `error`)."""
        return await self._call(partial(self._sent, *self._script(handle, keys, args)))

    def _script(
        self, handle: ScriptHandle, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> tuple[Command, Command]:
        """A script's `EVALSHA` (through `execute_command`: redis-py's script objects cost
        a fifth more per call here, measured), and the `EVAL` for a server without it."""
        evalsha: Command = ("EVALSHA", handle.sha1, len(keys), *keys, *args)
        return evalsha, ("EVAL", self._scripts[handle.sha1], len(keys), *keys, *args)

    async def _sent(self, command: Command, unknown_script: Command | None = None) -> object:
        """`command`'s reply; `unknown_script`'s when the server answers NOSCRIPT (a new
        or restarted server: EVAL caches the script again)."""
        try:
            return await self._command(*command)
        except NoScriptError:
            if unknown_script is None:
                raise
            self._load_scripts()
            return await self._command(*unknown_script)

    def _load_scripts(self) -> None:
        """After a NOSCRIPT (a new or restarted server): load every registered script,
        ahead of the retry, so the next `EVALSHA` of each finds it: a save sent without
        waiting is then stored in the order it was sent, not one round trip later."""
        if self._pipe is None:  # a cluster's nodes each have their own script cache
            return
        for source in self._scripts.values():
            self._send(("SCRIPT", "LOAD", source))

    def run_later(
        self, handle: ScriptHandle, keys: Sequence[str] = (), args: Sequence[ScriptArg] = ()
    ) -> None:
        """Run a registered script without waiting for its reply: it goes out with this
        turn's batch while the caller carries on (answers its own caller), and its
        outcome counts for `state` like any command's. `settle` waits for it."""
        self._send(*self._script(handle, keys, args))

    def set_later(self, key: str, value: bytes, ttl_s: int) -> None:
        """`set` without waiting for the reply (as `run_later`)."""
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1, not {ttl_s}")
        self._send(("SET", key, value, "EX", ttl_s))

    def _send(self, command: Command, unknown_script: Command | None = None) -> None:
        """Send `command` and count its outcome when it comes; `unknown_script` is sent
        instead when the server answers NOSCRIPT (a new or restarted server)."""
        if self._closed_to_calls(probe=False):
            return
        if self._pipe is None:  # the cluster client: a coroutine per command
            sent = self._call(partial(self._sent, command, unknown_script))
            task = asyncio.get_running_loop().create_task(sent)
            self._later.add(task)
            task.add_done_callback(self._later.discard)
            return

        def counted(reply: asyncio.Future[object]) -> None:
            if reply.cancelled():
                return
            error = reply.exception()
            if error is None:
                self._succeeded()
            elif isinstance(error, NoScriptError) and unknown_script is not None:
                self._load_scripts()
                self._send(unknown_script)
            elif isinstance(error, Exception):
                self._failed(error)

        self._pipe.submit(command).add_done_callback(counted)

    def _command(self, *command: ScriptArg) -> Awaitable[object]:
        """One command: in this turn's batch, or through the cluster client. Its reply is
        the server's, unconverted (`OK` and `PONG` as bytes)."""
        if self._pipe is not None:
            return self._pipe.submit(command)
        return self._redis.execute_command(*command)  # typed by RedisCluster, not Redis

    async def _send_batch(self, pool: ConnectionPool, commands: list[Command]) -> list[object]:
        """Send `commands` as one pipeline on one pooled connection; one reply per
        command, a `ResponseError` instance for a command the server refused. Raises
        when the connection fails or the replies do not arrive in time (redis-py then
        closes it: a cancellation or error while reading disconnects)."""
        async with asyncio.timeout(self._connect_timeout_s + self._socket_timeout_s):
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        try:
            async with asyncio.timeout(self._socket_timeout_s):
                await connection.send_packed_command(packed(commands), check_health=False)
                replies: list[object] = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as refused:  # this command's own failure
                        replies.append(refused)
                return replies
        finally:
            await pool.release(connection)

    async def _call(
        self, command: Callable[[], Awaitable[T]], *, probe: bool = False
    ) -> T | StoreFailure:
        """Run one command through the breaker; its result or its own failure."""
        if self._closed_to_calls(probe):
            return StoreFailure("down")
        try:
            # A batched command is a plain future, which cancellation always reaches.
            result = await (command() if self._pipe else _uncancelled(command()))
        except Exception as exc:  # fail open (see module docstring)
            return self._failed(exc)
        self._succeeded()
        return result

    def _closed_to_calls(self, probe: bool) -> bool:
        """Whether the breaker stops a call: `down`, and not the time for a probe (then
        this call is the probe)."""
        if self._state != "down" or probe:
            return False
        now = self._clock()
        if now < self._probe_at:
            return True
        self._probe_at = now + self._probe_interval_s
        return False

    def _succeeded(self) -> None:
        self._failures, self._counted = 0, None
        if self._state != "ok":
            was, self._state = self._state, "ok"
            self._log_rarely(logging.INFO, f"{was}->ok", "store ok again (was %s)", was)

    def _failed(self, exc: Exception) -> StoreFailure:
        timeout = isinstance(exc, RedisTimeout | TimeoutError)
        failure = StoreFailure("timeout" if timeout else "error")
        if exc is self._counted:
            return failure
        self._counted = exc
        if timeout:
            now = self._clock()
            if now - self._timed_out_at < self._socket_timeout_s / 2:
                return failure
            self._timed_out_at = now
        self._failures += 1
        # Only the class name: messages can quote keys or values.
        kind = type(exc).__name__
        if self._failures >= DOWN_AFTER and self._state != "down":
            was, self._state = self._state, "down"
            self._probe_at = self._clock() + self._probe_interval_s
            self._log_rarely(
                logging.WARNING,
                f"{was}->down",
                "store down (was %s): %d failures in a row, the last %s; limits follow "
                "auth.on_store_error until a probe succeeds",
                was,
                self._failures,
                kind,
            )
        elif timeout and self._state == "ok":
            self._state = "slow"
            self._log_rarely(logging.INFO, "ok->slow", "store slow: a reply took too long")
        self._log_rarely(logging.WARNING, kind, "store error %s; failing open", kind)
        return failure


def _own_connection_options(url: str) -> ConnectionOptions | None:
    """What `url` (redis://, rediss://, unix://) names, as redis-py reads it (its
    `parse_url`, its `RedisSSLContext`), for the store's own connections; `None` when it
    sets an option they do not implement (redis-py's pool then serves it)."""
    options: dict[str, Any] = dict(parse_url(url))
    if set(options) - _PLAIN - set(_SSL):
        return None
    tls = options.pop("connection_class", None) is SSLConnection
    ssl_options = {_SSL[name]: options.pop(name) for name in list(options) if name in _SSL}
    if ssl_options and not tls:
        return None  # redis-py would refuse them: keep its error
    username, password = options.pop("username", ""), options.pop("password", "")
    auth = () if not (username or password) else (username, password) if username else (password,)
    context = RedisSSLContext(**{**_SSL_DEFAULTS, **ssl_options}).get() if tls else None
    return ConnectionOptions(ssl=context, auth=auth, **options)


def _send_over(connections: Connections, commands: list[Command]) -> Awaitable[list[object]]:
    """Send `commands` as one pipeline on one of our own connections (`resp`): one reply
    per command, a `ResponseError` instance for a command the server refused. A plain
    function, not a coroutine: the batch awaits `Connections.send` directly."""
    return connections.send(packed(commands), len(commands))


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


def packed(commands: Sequence[Command]) -> bytes:
    """`commands` in the Redis protocol (RESP), as redis-py's `pack_commands` writes
    them (a float as its `repr`), in one buffer: its general packer costs more than twice
    as much per command here (it splits names, chunks large values)."""
    out = bytearray()
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            else:
                data = repr(arg).encode()
            out += b"$%d\r\n" % len(data)
            out += data
            out += b"\r\n"
    return bytes(out)


async def _all_of(futures: Sequence[Awaitable[object]]) -> list[object]:
    """Every reply, or the first failure once every future is done (none left unread)."""
    replies: list[object] = []
    failure: Exception | None = None
    for future in futures:
        try:
            replies.append(await future)
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return replies


def _client(
    target: StoreUrl, *, socket_timeout_s: float, connect_timeout_s: float, max_connections: int
) -> tuple[Redis, list[Redis]] | tuple[RedisCluster, list[Redis]]:
    """redis-py's own client for `target` (SPEC §10), and the sentinels' clients to close.

    No client-side retries anywhere: a failed command fails at once (module docstring).
    One server and a Sentinel's primary: connections without a per-operation timeout (the
    store bounds each batch); one server's client carries batches only for a URL with an
    option the store's own connections do not implement (`_own_connection_options`); the
    sentinels' own keep theirs, so a frozen one is passed over for the next. Sentinel:
    every new connection asks the sentinels for the current primary, so after a failover
    the next connection reaches the promoted one. Cluster: commands go to the node owning
    their keys' slot; one retry follows a MOVED/ASK redirection or a topology change."""
    timeouts = {"socket_timeout": socket_timeout_s, "socket_connect_timeout": connect_timeout_s}
    if target.kind == "single":
        pool = ConnectionPool.from_url(
            target.url,
            max_connections=max_connections,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), retries=0),
            socket_timeout=None,
            socket_connect_timeout=connect_timeout_s,
        )
        return Redis.from_pool(pool), []
    credentials = {"username": target.username, "password": target.password}
    if target.kind == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            list(target.hosts),
            sentinel_kwargs={
                "password": target.sentinel_password,
                "retry": Retry(NoBackoff(), retries=0),
                **timeouts,
            },
            **credentials,
        )
        primary = sentinel.master_for(
            target.service,
            db=target.db,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), retries=0),
            socket_timeout=None,
            socket_connect_timeout=connect_timeout_s,
        )
        return primary, list(sentinel.sentinels)
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
        max_connections=max_connections,
        retry=Retry(NoBackoff(), retries=1),
        username=target.username,
        password=target.password,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
    )
    return cluster, []
