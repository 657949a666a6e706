"""The store's own connections to one Redis server: RESP over an `asyncio.Protocol`.

redis-py's asyncio connections read through a `StreamReader`, take and give back each
connection under an `asyncio.Lock` with a liveness check, and run every read as a
coroutine through its decorators. Here a batch costs one `transport.write`, hiredis
parsing whatever arrives in `data_received`, one future resolved when the batch's last
reply is in, and one timer for the whole batch: a `Store.get` alone took 47 µs of this
process's CPU through redis-py's pool and takes 23 µs here (uvloop, measured).

What stays as redis-py has it (the behaviour the store's callers rely on): replies are
hiredis's undecoded values (bytes, ints, lists, `None`, `OK` as bytes); a server error is
redis-py's own exception for it (`NoScriptError` for NOSCRIPT, found by redis-py's
parser); a URL means what `redis.asyncio.ConnectionPool.from_url` makes of it (its
`parse_url`, its `RedisSSLContext`), AUTH and SELECT on connect. `connection_options`
answers `None` for a URL with any other option, which then stays on redis-py.

One batch at a time per connection, never two interleaved: a connection that timed out,
was reset, talked garbage or was cancelled mid-batch is closed and never reused, so no
batch can read another's reply. A connection the server closed while idle is dropped as
soon as the loop sees it closed. When every connection is busy a batch fails at once with
redis-py's `MaxConnectionsError` (as its pool does): nothing queues behind the store.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import RedisSSLContext, SSLConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    InvalidResponse,
    MaxConnectionsError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

# `parse_url`'s keys this module implements, and the `ssl_*` ones `RedisSSLContext` takes.
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
_MORE = object()  # hiredis: no complete reply buffered yet


@dataclass(frozen=True)
class ConnectionOptions:
    """Where one server listens and what a new connection sends before any command."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host and port
    ssl: ssl.SSLContext | None = None
    # AUTH's arguments: (password,) or (username, password); empty: no AUTH.
    auth: tuple[str, ...] = field(default=(), repr=False)
    db: int = 0


def connection_options(url: str) -> ConnectionOptions | None:
    """What `url` (redis://, rediss://, unix://) names, as redis-py reads it; `None` when it
    sets an option these connections do not implement (redis-py's pool then serves it)."""
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


class RespConnection(asyncio.Protocol):
    """One connection: `request` writes a batch and answers a future of its replies."""

    def __init__(self, on_lost: Callable[[RespConnection], None]) -> None:
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse,
            replyError=BaseParser.parse_error,
            notEnoughData=_MORE,
        )
        self._replies: list[object] = []
        self._expected = 0
        self._waiter: asyncio.Future[list[object]] | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(RedisConnectionError("Connection closed by server."))
        self._on_lost(self)

    def request(self, payload: bytes, count: int) -> asyncio.Future[list[object]]:
        """Write `payload` (`count` commands); the future answers their `count` replies,
        or raises the exception that ends the connection (the caller then closes it)."""
        assert self._transport is not None  # set on connect, before any request
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self._replies, self._expected = [], count
        self._transport.write(payload)
        return waiter

    def time_out(self) -> None:
        """The batch's timer: its replies did not all arrive in time."""
        self._fail(TimeoutError("no reply within the socket timeout"))

    def idle(self) -> None:
        """The batch is answered: the next `request` may follow. Any byte the server
        sends before it is out of step, and closes the connection."""
        self._waiter, self._replies, self._expected = None, [], 0

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()  # unread replies and unsent commands are worthless
        self.open = False

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        replies = self._replies
        try:
            while (reply := reader.gets()) is not _MORE:
                if isinstance(reply, RedisConnectionError) or (
                    type(reply) is list and reply and isinstance(reply[0], RedisConnectionError)
                ):
                    raise reply if isinstance(reply, Exception) else reply[0]  # as redis-py
                replies.append(reply)
        except Exception as exc:  # garbage on the wire, or a server refusing the connection
            self._fail(exc)
            self.close()
            return
        if len(replies) < self._expected:
            return
        waiter = self._waiter
        if len(replies) > self._expected or waiter is None:  # nothing asked for these
            self._fail(InvalidResponse("reply without a command"))
            self.close()
        elif not waiter.done():
            waiter.set_result(replies)

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class Connections:
    """Up to `max_connections` connections to one server, opened on first use and after
    every failure; `send` runs one batch on an idle one."""

    def __init__(
        self,
        options: ConnectionOptions,
        *,
        max_connections: int,
        connect_timeout_s: float,
        socket_timeout_s: float,
    ) -> None:
        self._options = options
        self._max = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._idle: list[RespConnection] = []
        self._open: set[RespConnection] = set()
        self._opening = 0
        self._closed = False

    @property
    def count(self) -> int:
        """Connections open or opening, idle or busy."""
        return len(self._open) + self._opening

    async def send(self, payload: bytes, count: int) -> list[object]:
        """Write `payload` (`count` commands) on one connection and answer its `count`
        replies, a `ResponseError` instance for each command the server refused. Raises
        `TimeoutError` when they do not all arrive within the socket timeout, redis-py's
        `ConnectionError` (or a subclass) when the connection cannot be had or fails, its
        `InvalidResponse` for garbage."""
        connection = self._idle.pop() if self._idle else await self._connect()
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._socket_timeout_s, connection.time_out)
        try:
            replies = await connection.request(payload, count)
        except BaseException:  # out of step with the server: never reused
            timer.cancel()
            self._discard(connection)
            raise
        timer.cancel()
        connection.idle()
        if self._closed or not connection.open:
            self._discard(connection)
        else:
            self._idle.append(connection)
        return replies

    async def aclose(self) -> None:
        """Close every connection; batches still under way fail."""
        self._closed = True
        for connection in list(self._open):
            self._discard(connection)

    async def _connect(self) -> RespConnection:
        """A new connection, authenticated and on its database, within the connect
        timeout plus a socket timeout (as redis-py's pool bounds one today)."""
        if self.count >= self._max:
            raise MaxConnectionsError("Too many connections")
        self._opening += 1
        connection: RespConnection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s + self._socket_timeout_s):
                connection = await self._dial()
                await self._set_up(connection)
        except BaseException:
            if connection is not None:
                connection.close()
            raise
        finally:
            self._opening -= 1
        self._open.add(connection)
        return connection

    async def _dial(self) -> RespConnection:
        options, loop = self._options, asyncio.get_running_loop()
        connection = RespConnection(self._lost)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if options.path is not None:
                    await loop.create_unix_connection(lambda: connection, options.path)
                else:
                    await loop.create_connection(
                        lambda: connection, options.host, options.port, ssl=options.ssl
                    )
        except TimeoutError:
            raise RedisTimeout("Timeout connecting to server") from None
        except OSError as exc:  # refused, unreachable, a certificate refused
            where = options.path or f"{options.host}:{options.port}"
            raise RedisConnectionError(f"Error connecting to {where}: {exc}") from exc
        return connection

    async def _set_up(self, connection: RespConnection) -> None:
        """AUTH and SELECT as redis-py's connection sends them (without its CLIENT SETINFO,
        which only names the library in CLIENT LIST)."""
        auth = self._options.auth
        if auth:
            reply = await self._one(connection, "AUTH", *auth)
            if isinstance(reply, AuthenticationWrongNumberOfArgsError):  # a server before 6
                reply = await self._one(connection, "AUTH", auth[-1])
            if isinstance(reply, Exception):
                raise reply
            if reply != b"OK":
                raise AuthenticationError("Invalid Username or Password")
        if self._options.db:
            reply = await self._one(connection, "SELECT", str(self._options.db))
            if isinstance(reply, Exception):
                raise reply
            if reply != b"OK":
                raise RedisConnectionError("Invalid Database")

    @staticmethod
    async def _one(connection: RespConnection, *command: str) -> object:
        payload = b"*%d\r\n" % len(command) + b"".join(
            b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in command
        )
        try:
            (reply,) = await connection.request(payload, 1)
        finally:
            connection.idle()
        return reply

    def _lost(self, connection: RespConnection) -> None:
        """The server or the network closed `connection` (or we did)."""
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def _discard(self, connection: RespConnection) -> None:
        connection.close()
        self._lost(connection)
