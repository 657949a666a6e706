"""The HTTP protocol `tunegate serve` runs: uvicorn's httptools protocol (pinned version)
with two changes.

- A deadline for a request's headers: a client that connects and sends nothing, or
  sends headers slowly, is dropped after `header_timeout_s` instead of holding a
  connection forever (slowloris). One timer per connection, not one per request.
- One write per whole response: uvicorn writes a response's head as soon as the app
  starts it, then its body, two sends and two segments for an answer of a few hundred
  bytes (on loopback, each send also wakes the client). The head of a response with a
  `content-length` is held and leaves with the body's first bytes; a streamed
  (chunked) response's head leaves at once, as before.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class GatewayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and one write per response."""

    def __init__(self, *args: Any, header_timeout_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        # Since when the connection has waited for a request's headers (None: it does not).
        self._headers_since: float | None = None
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_since = self.loop.time()
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._check_headers)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._headers_since = None
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a new request (not an upgrade)
            self.cycle.transport = cast(asyncio.Transport, _OneWrite(self.transport, self.cycle))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _check_headers(self) -> None:
        """The connection's one timer, rather than one armed and cancelled per request:
        close the connection if a request's headers are late, else look again when they
        would be (or a whole timeout later, while no request is pending)."""
        wait = self._header_timeout_s
        if self._headers_since is not None:
            wait = self._headers_since + self._header_timeout_s - self.loop.time()
            if wait <= 0:
                self._header_timer = None
                if not self.transport.is_closing():
                    self.transport.close()
                return
        self._header_timer = self.loop.call_later(wait, self._check_headers)


class _OneWrite:
    """The transport as one request's response cycle sees it (the cycle writes, closes
    and asks `is_closing`; nothing else). The cycle's first write once its response has
    started is the head; with a `content-length` it is held until the next write (the
    body) or a close, so a response that then fails still ends as before: its head,
    then the connection closed."""

    __slots__ = ("_cycle", "_head", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._started = False
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.writelines((head, data))
            return
        if not self._started and self._cycle.response_started:
            self._started = True
            # A HEAD's answer has no body write to carry it; a chunked one streams.
            if self._cycle.chunked_encoding is False and self._cycle.scope["method"] != "HEAD":
                self._head = data
                return
        self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


def gateway_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (`http=`), with its header deadline."""
    protocol = functools.partial(GatewayProtocol, header_timeout_s=header_timeout_s)
    return cast(type[asyncio.Protocol], protocol)
