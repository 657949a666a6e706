"""A fast OpenAI-compatible stand-in for benchmarks, on raw uvloop + httptools.

Every request gets a fixed JSON completion echoing the requested model, answered in tens
of microseconds: the same body as the shared `tools/mock_upstream.py`, plus a streamed
answer (server-sent events, ending with `data: [DONE]`) when the body asks for
`"stream": true`, which a proxy that streams from its upstream needs. A request body over
16 KB (the benchmark's 32 KB few-shot prompt) gets a 2 KB answer (streamed in 16 pieces).
`MOCK_DELAY_MS` adds a fixed delay before each answer.

Run: `python -m bench.mock_upstream PORT`
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any, cast

import httptools
import orjson
import uvloop

DELAY_S = float(os.environ.get("MOCK_DELAY_MS", "0")) / 1000
CONTENT = '{"category": "billing", "priority": "high"}'
LONG_REQUEST_BYTES = 16 * 1024
_SUMMARY = (
    "The customer was charged twice for the same monthly plan; the second charge appeared "
    "two days after the first and the invoice history shows both as paid. "
)
LONG_CONTENT = orjson.dumps(
    {"category": "billing", "priority": "high", "summary": (_SUMMARY * 14)[:1990]}
).decode()
USAGE = {"prompt_tokens": 42, "completion_tokens": 12, "total_tokens": 54}
DEFAULT_MODEL = "gpt-3.5-turbo"


def completion_body(model: str, content: str = CONTENT) -> bytes:
    """A plain `chat.completion`."""
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                }
            ],
            "usage": USAGE,
        }
    )


def stream_body(model: str, with_usage: bool, content: str = CONTENT) -> bytes:
    """The same answer as `chat.completion.chunk` events: role, content (in pieces of at
    most 128 characters), finish, then usage when asked for, then `[DONE]`."""
    head = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    pieces = [content[i : i + 128] for i in range(0, len(content), 128)]
    deltas: list[tuple[dict[str, str], str | None]] = [
        ({"role": "assistant", "content": ""}, None),
        *[({"content": piece}, None) for piece in pieces],
        ({}, "stop"),
    ]
    events = [
        {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        for delta, finish in deltas
    ]
    if with_usage:
        events.append({**head, "choices": [], "usage": USAGE})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def answer_for(raw: bytes) -> tuple[bytes, bytes]:
    """(content type, body) for a request body; anything unparseable gets the plain answer."""
    try:
        request: Any = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        request = {}
    if not isinstance(request, dict):
        request = {}
    model = request.get("model")
    model = model if isinstance(model, str) else DEFAULT_MODEL
    content = LONG_CONTENT if len(raw) > LONG_REQUEST_BYTES else CONTENT
    if request.get("stream") is True:
        options = request.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        return b"text/event-stream", stream_body(model, with_usage, content)
    return b"application/json", completion_body(model, content)


class Connection(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer each in order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_begin(self) -> None:
        self._body = []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        media_type, body = answer_for(b"".join(self._body))
        keep_alive = self._parser.should_keep_alive()
        if DELAY_S:
            asyncio.get_running_loop().call_later(
                DELAY_S, self._reply, media_type, body, keep_alive
            )
        else:
            self._reply(media_type, body, keep_alive)

    def _reply(self, media_type: bytes, body: bytes, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n" % (
            media_type,
            len(body),
            b"" if keep_alive else b"connection: close\r\n",
        )
        transport.write(head + body)
        if not keep_alive:
            transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8090))
