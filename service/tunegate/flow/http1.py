"""A minimal HTTP/1.1 client for one origin: `POST`s over a bounded keep-alive pool.

It exists for CPU. aiohttp's per-request machinery (its session, request and response
objects, stream readers and timers) was about a quarter of the gateway's CPU on a cache
miss; a chat call needs none of it: one request written at once, a response parsed by
httptools (the C parser uvicorn already uses), its body handed over piece by piece.

What it keeps of a real client:
- a pool of at most `max_connections` connections per origin, idle ones reused last in,
  first out; a caller finding them all busy waits for one (as long as its timeout).
  A connection goes back to the pool only after a whole answer the server did not end
  with `Connection: close`; one cut, timed out, cancelled or left half-read is closed.
- a pooled connection the server closed while idle is noticed (its transport is lost)
  and never used; if the server closes one just as a request goes out on it, before a
  byte of an answer came back, the request is sent again once on a new connection (the
  server did not process it: it closed an idle connection).
- timeouts per wait: connecting, and each wait for more of the answer, are bounded by
  the caller's timeout (one `call_later` per wait, no task, no `asyncio.timeout`).
- backpressure: past `_HIGH_WATER` bytes received and not yet read, the connection stops
  reading its socket until the reader catches up, so a huge answer never sits in memory.

Failures are `TimeoutError` (connecting or waiting took too long) and other `OSError`s
(`ConnectionError` for a connection lost or an answer that is not HTTP; `ssl` and
resolver errors as raised); the caller maps them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

# Unread answer bytes past which a connection stops reading its socket, and the level
# under which it reads again.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# The most a status line and headers may take.
_MAX_HEAD = 64 * 1024


class Origin:
    """Where requests go: scheme, host and port of a URL, and the `Host` header."""

    __slots__ = ("host", "host_header", "port", "scheme", "ssl")

    def __init__(self, url: str) -> None:
        """Raises `ValueError` for a URL that is not `http(s)://host[:port]...`."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http or https URL")
        default = 443 if parts.scheme == "https" else 80
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or default
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default else f"{host}:{self.port}"
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl.create_default_context()

    def same(self, url: str) -> bool:
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        return (parts.scheme, parts.hostname, port) == (self.scheme, self.host, self.port)


class Pool:
    """At most `max_connections` keep-alive connections to one origin."""

    def __init__(self, origin: Origin, headers: Mapping[str, str], max_connections: int) -> None:
        """Raises `ValueError` for a header that would break the request's head."""
        if any("\r" in h or "\n" in h for pair in headers.items() for h in pair):
            raise ValueError("a header holds a line break")
        fixed = [f"Host: {origin.host_header}"] + [f"{k}: {v}" for k, v in headers.items()]
        self._fixed = ("\r\n".join(fixed) + "\r\nContent-Length: ").encode("latin-1")
        self._heads: dict[str, bytes] = {}
        self._origin = origin
        self._max = max(1, max_connections)
        self._idle: list[_Connection] = []  # LIFO: the most recently used is reused first
        self._count = 0  # connections open or being opened
        self._queue: deque[asyncio.Future[_Connection | None]] = deque()
        self._every: set[_Connection] = set()

    async def post(self, path: str, body: bytes, timeout_s: float) -> Response:
        """Send `POST path` with `body`; the response once its head arrived, its body
        to be read with `Response.read`. Raises `TimeoutError` or another `OSError`."""
        head = self._heads.get(path)
        if head is None:
            if "\r" in path or "\n" in path or " " in path:
                raise ValueError("a path holds a space or a line break")
            if len(self._heads) > 16:
                self._heads.clear()
            head = self._heads[path] = f"POST {path} HTTP/1.1\r\n".encode() + self._fixed
        request = b"".join((head, b"%d\r\n\r\n" % len(body), body))
        connection = await self._acquire(timeout_s)
        try:
            try:
                await connection.exchange(request, timeout_s)
            except ConnectionError:
                if not connection.reused or connection.received:
                    raise
                # Closed by the server as the request went out, before any answer: it
                # was not processed. Once more, on a new connection.
                self._drop(connection)
                connection = await self._acquire(timeout_s, fresh=True)
                await connection.exchange(request, timeout_s)
        except BaseException:
            self._drop(connection)
            raise
        return Response(self, connection, timeout_s)

    async def aclose(self) -> None:
        """Close every connection, idle or in use (a request under way fails)."""
        for connection in list(self._every):
            connection.idle = False
            connection.close()
        self._every.clear()
        self._idle.clear()
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("the pool was closed"))
        await asyncio.sleep(0)  # let the transports finish closing

    async def _acquire(self, timeout_s: float, fresh: bool = False) -> _Connection:
        idle = self._idle
        while idle and not fresh:
            connection = idle.pop()
            connection.idle = False
            if not connection.closed:
                return connection
            self._drop(connection)
        if self._count < self._max:
            self._count += 1
        else:
            handed = await self._wait_turn(timeout_s)
            if handed is not None:
                return handed
            # None: a slot freed for this caller, already counted
        try:
            return await self._connect(timeout_s)
        except BaseException:
            self._free_slot()
            raise

    async def _wait_turn(self, timeout_s: float) -> _Connection | None:
        """Wait for a connection handed back or a slot freed (None)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self._queue.append(waiter)
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()  # handed over, then cancelled: pass it on
                if handed is None:
                    self._free_slot()
                else:
                    self._put_back(handed)
            elif not waiter.done() or waiter in self._queue:
                self._queue.remove(waiter)
            raise
        finally:
            timer.cancel()

    async def _connect(self, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        origin = self._origin
        async with asyncio.timeout(timeout_s):  # connecting only: rare once pooled
            _, protocol = await loop.create_connection(
                lambda: _Connection(self),
                origin.host,
                origin.port,
                ssl=origin.ssl,
                server_hostname=origin.host if origin.ssl is not None else None,
            )
        self._every.add(protocol)
        return protocol

    def _release(self, connection: _Connection) -> None:
        """A connection whose answer was read whole: reused if it may be, else closed."""
        if connection.reusable():
            connection.reused = True
            if connection in self._every:
                self._put_back(connection)
                return
        self._drop(connection)

    def _put_back(self, connection: _Connection) -> None:
        if connection.closed:
            self._drop(connection)
            return
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle = True
        self._idle.append(connection)

    def _drop(self, connection: _Connection) -> None:
        """Close `connection` and free its slot."""
        connection.close()
        if connection in self._every:
            self._every.discard(connection)
            self._free_slot()

    def _free_slot(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to this waiter
                return
        self._count -= 1

    def _lost(self, connection: _Connection) -> None:
        """An idle connection the server closed: out of the pool at once."""
        if connection.idle:
            connection.idle = False
            if connection in self._idle:
                self._idle.remove(connection)
            self._drop(connection)


class Response:
    """A response whose head arrived: `status`, `headers` (names lower-cased),
    `content_length` (None unless declared), the body by `read`. End it with `release`
    (after reading it whole; the connection is reused) or `close`."""

    __slots__ = ("_connection", "_pool", "_timeout_s", "content_length", "status")

    def __init__(self, pool: Pool, connection: _Connection, timeout_s: float) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._timeout_s = timeout_s
        self.status = connection.status
        self.content_length = connection.content_length

    @property
    def headers(self) -> dict[str, str]:
        connection = self._connection
        if connection is None:
            return {}
        return {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in connection.header_list
        }

    async def read(self) -> bytes:
        """The body received since the last read, waiting (up to the timeout) when
        there is none yet; b"" at the end. Raises `TimeoutError` or `ConnectionError`."""
        connection = self._connection
        if connection is None:
            raise ConnectionResetError("the response was closed")
        return await connection.read(self._timeout_s)

    def at_eof(self) -> bool:
        connection = self._connection
        return connection is not None and connection.finished()

    def release(self) -> None:
        """Give the connection back: reused after a whole answer, else closed."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._release(connection)

    def close(self) -> None:
        """Close the connection, whatever is left of the answer."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._drop(connection)


class _Connection(asyncio.Protocol):
    """One connection and the exchange under way on it."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.idle = False
        self.reused = False  # it answered a request before the one under way
        self._reset()

    def _reset(self) -> None:
        self._busy = False  # a request is under way
        self.received = False  # a byte of its answer came
        self._head_bytes = 0
        self._head_done = False
        self._complete = False
        self._keep_alive = False
        self._error: OSError | None = None
        self.status = 0
        self.content_length: int | None = None
        self.header_list: list[tuple[bytes, bytes]] = []
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False

    # -- the caller's side --

    async def exchange(self, request: bytes, timeout_s: float) -> None:
        """Send `request` and wait for the head of its answer."""
        self._reset()
        self._busy = True
        transport = self._transport
        if transport is None or self.closed:
            raise ConnectionResetError("connection closed")
        transport.write(request)
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait(timeout_s)

    async def read(self, timeout_s: float) -> bytes:
        pieces = self._pieces
        while not pieces:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(timeout_s)
        if len(pieces) == 1:
            piece = pieces.popleft()
        else:
            piece = b"".join(pieces)
            pieces.clear()
        self._buffered -= len(piece)
        if self._paused and self._buffered <= _LOW_WATER and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return piece

    def finished(self) -> bool:
        return self._complete and not self._pieces

    def reusable(self) -> bool:
        return (
            self._complete
            and not self._pieces
            and self._keep_alive
            and not self.closed
            and self._error is None
        )

    def close(self) -> None:
        self.closed = True
        self._busy = False
        if self._transport is not None:
            self._transport.close()

    async def _wait(self, timeout_s: float) -> None:
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the transport's side --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy:  # nothing was asked: a server talking out of turn
            self._fail(ConnectionResetError("data with no request"))
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(ConnectionResetError("not an HTTP response"))
            return
        if not self._head_done:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD:
                self._fail(ConnectionResetError("response head too large"))
                return
        self._wake()

    def eof_received(self) -> bool | None:
        self.closed = True
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._busy and not self._complete and self._error is None:
            if self._head_done and exc is None and self._until_close():
                self._complete = True  # a body delimited by the end of the connection
            else:
                self._error = ConnectionResetError("connection lost")
        self._wake()
        self._pool._lost(self)

    def _fail(self, error: OSError) -> None:
        if self._error is None:
            self._error = error
        self.close()
        self._wake()

    def _until_close(self) -> bool:
        """True when the answer has neither a length nor chunks: it ends with the
        connection."""
        if self.content_length is not None or self.status in (204, 304):
            return False
        return not any(name.lower() == b"transfer-encoding" for name, _ in self.header_list)

    # -- httptools' callbacks --

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request
            self._keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name, value))
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                self.content_length = int(value)
            except ValueError:
                self.content_length = None

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue): the real one follows
            self.header_list = []
            self.content_length = None
            return
        self.status = status
        self._head_done = True
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._pieces.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._head_done:
            self._complete = True
            self._busy = False  # more data on this connection is out of turn


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
