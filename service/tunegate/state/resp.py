"""The store's own connections to one Redis server: RESP over an `asyncio.Protocol`.

redis-py's asyncio connections read through a `StreamReader`, take and give back each
connection under an `asyncio.Lock` with a liveness check, and run every read as a
coroutine through its decorators. Here a batch costs one `transport.write`, hiredis
parsing whatever arrives in `data_received`, one future resolved when the batch's last
reply is in, and one timer for the whole batch: a `Store.get` alone took 47 µs of this
process's CPU through redis-py's pool and takes 23 µs here (uvloop, measured).

What stays as redis-py has it (the behaviour the store's callers rely on): replies are
hiredis's undecoded values (bytes, ints, lists, `None`, `OK` as bytes); a server error,
a timeout or a lost connection raise the exceptions the store hands in (`Errors`:
redis-py's, `NoScriptError` for NOSCRIPT among them); AUTH and SELECT on connect. The
store reads the URL (`ConnectionOptions`) as redis-py would; this module imports no
client library.

One batch at a time per connection, never two interleaved: a connection that timed out,
was reset, talked garbage or was cancelled mid-batch is closed and never reused, so no
batch can read another's reply. A connection the server closed while idle is dropped as
soon as the loop sees it closed. When every connection is busy a batch fails at once with
`errors.busy` (as redis-py's pool does): nothing queues behind the store.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import hiredis

_MORE = object()  # hiredis: no complete reply buffered yet
# How long past a batch's deadline its replies get for one more read of the socket.
_LAST_LOOK_S = 0.001


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


@dataclass(frozen=True)
class Errors:
    """The exceptions these connections raise, as the store's client library names them:
    the store passes redis-py's, so its callers see what they saw through redis-py's pool
    (and this module needs no client library)."""

    reply: Callable[[str], Exception]  # a server's error reply, by its message
    garbage: type[Exception]  # bytes that are not RESP, or a reply nothing asked for
    connection: type[Exception]  # refused, lost, or a server refusing the connection
    timeout: type[Exception]  # connecting took too long
    busy: type[Exception]  # every connection in use
    auth: type[Exception]  # AUTH refused
    auth_args: type[Exception]  # the reply of AUTH with a user name, from a server before 6


class RespConnection(asyncio.Protocol):
    """One connection: `request` writes a batch and answers a future of its replies."""

    def __init__(self, on_lost: Callable[[RespConnection], None], errors: Errors) -> None:
        self._on_lost = on_lost
        self._errors = errors
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(
            protocolError=errors.garbage, replyError=errors.reply, notEnoughData=_MORE
        )
        self._replies: list[object] = []
        self._expected = 0
        self._waiter: asyncio.Future[list[object]] | None = None
        self.timer: asyncio.TimerHandle | None = None  # the batch's deadline
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(self._errors.connection("Connection closed by server."))
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

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def overdue(self) -> None:
        """The batch's time is up: time out once the loop has read the socket again. The
        event loop runs due timers before it reads sockets, so after a stall of this
        process (not of the server) the replies may be there, unread; one more read
        settles it, a millisecond later at most."""
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(_LAST_LOOK_S, self.time_out)

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
        refused = self._errors.connection
        try:
            while (reply := reader.gets()) is not _MORE:
                if isinstance(reply, refused) or (
                    type(reply) is list and reply and isinstance(reply[0], refused)
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
            self._fail(self._errors.garbage("reply without a command"))
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
        errors: Errors,
        *,
        max_connections: int,
        connect_timeout_s: float,
        socket_timeout_s: float,
    ) -> None:
        self._options = options
        self._errors = errors
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
        replies, an `errors.reply` instance for each command the server refused. Raises
        `TimeoutError` when they do not all arrive within the socket timeout,
        `errors.connection` (or a subclass) when the connection cannot be had or fails,
        `errors.garbage` for bytes that are not replies."""
        connection = self._idle.pop() if self._idle else await self._connect()
        loop = asyncio.get_running_loop()
        connection.timer = loop.call_later(self._socket_timeout_s, connection.overdue)
        try:
            replies = await connection.request(payload, count)
        except BaseException:  # out of step with the server: never reused
            connection.stop_timer()
            self._discard(connection)
            raise
        connection.stop_timer()
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
            raise self._errors.busy("Too many connections")
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
        errors = self._errors
        connection = RespConnection(self._lost, errors)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if options.path is not None:
                    await loop.create_unix_connection(lambda: connection, options.path)
                else:
                    await loop.create_connection(
                        lambda: connection, options.host, options.port, ssl=options.ssl
                    )
        except TimeoutError:
            raise errors.timeout("Timeout connecting to server") from None
        except OSError as exc:  # refused, unreachable, a certificate refused
            where = options.path or f"{options.host}:{options.port}"
            raise errors.connection(f"Error connecting to {where}: {exc}") from exc
        return connection

    async def _set_up(self, connection: RespConnection) -> None:
        """AUTH and SELECT as redis-py's connection sends them (without its CLIENT SETINFO,
        which only names the library in CLIENT LIST)."""
        auth = self._options.auth
        if auth:
            reply = await self._one(connection, "AUTH", *auth)
            if isinstance(reply, self._errors.auth_args):  # a server before 6
                reply = await self._one(connection, "AUTH", auth[-1])
            if isinstance(reply, Exception):
                raise reply
            if reply != b"OK":
                raise self._errors.auth("Invalid Username or Password")
        if self._options.db:
            reply = await self._one(connection, "SELECT", str(self._options.db))
            if isinstance(reply, Exception):
                raise reply
            if reply != b"OK":
                raise self._errors.connection("Invalid Database")

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
