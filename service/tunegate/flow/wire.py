"""The chat call on the request path, straight over aiohttp: no SDK in between.

The openai SDK's own per-call work (options, headers, its httpx-shaped transport over
aiohttp) cost about as much CPU as everything else on a cache miss (bench/run's
profile). The gateway needs none of it for a chat completion: it builds the body itself,
reads the answer raw and parses four fields. So `upstream.py` sends chat completions
through this module, and keeps the SDK for everything else (tuning jobs, callers'
clients). What the SDK did that matters is kept: the same authorization, the same
timeouts (per socket read, as its aiohttp transport applies them; the gateway bounds the
whole attempt on top), connection pooling up to the upstream's `max_connections`, and
its error semantics: a non-2xx answer is handed back as an `UpstreamStatus` carrying
what the SDK's `APIStatusError` carried (status, `code`, `type`, `param`, headers),
which `upstream.py` maps to the same `errors.py` classes; a timeout is
`UpstreamTimeout`, any other transport failure `UpstreamConnectionError`. Messages
from the upstream are never passed on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from tunegate.errors import UpstreamConnectionError, UpstreamServerError, UpstreamTimeout

# How much of an error answer is read for its `error` object.
_ERROR_BODY_BYTES = 64 * 1024


class UpstreamStatus(Exception):  # a status, not only an error
    """A non-2xx answer, as the SDK's `APIStatusError` would describe it."""

    def __init__(
        self,
        status: int,
        code: str | None,
        type: str | None,
        param: str | None,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(f"answered {status}")
        self.status = status
        self.code = code
        self.type = type
        self.param = param
        self.headers = headers


class ChatEndpoint:
    """`POST {base_url}/chat/completions` on one upstream, over one pooled session
    (opened on first use, inside the event loop)."""

    def __init__(self, base_url: str, api_key: str, max_connections: int) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "tunegate",
        }
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
        # No cookie jar: nothing an upstream sets is sent back on another caller's call
        # (and filtering cookies for every request was measurable).
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            if len(self._timeouts) > 64:  # deadlines shorten timeouts: keep the map small
                self._timeouts.clear()
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
            self._timeouts[seconds] = timeout
        return timeout

    async def post(
        self, body: Mapping[str, Any], timeout_s: float, model: str
    ) -> aiohttp.ClientResponse:
        """Send `body`; the 2xx response with its body unread (the caller reads it with
        `read_at_most` or `sse_data`). Raises `UpstreamStatus` for any other status,
        `UpstreamTimeout` or `UpstreamConnectionError` when no answer comes."""
        session = self._session or self._open()
        data = orjson.dumps(body, default=_plain)
        try:
            response = await session.post(
                self._url, data=data, timeout=self._timeout(timeout_s), allow_redirects=True
            )
        except TimeoutError:
            raise UpstreamTimeout(f"{model}: timed out") from None
        except aiohttp.ClientError:
            raise UpstreamConnectionError(f"{model}: connection failed") from None
        if 200 <= response.status < 300:
            return response
        raise await _status_of(response)


async def _status_of(response: aiohttp.ClientResponse) -> UpstreamStatus:
    """The `UpstreamStatus` of a non-2xx answer: `code`, `type` and `param` from its
    `error` object (or the body itself), as the SDK reads them."""
    raw = b""
    try:
        raw = await response.content.read(_ERROR_BODY_BYTES)
    except (TimeoutError, aiohttp.ClientError):
        pass
    finally:
        response.close()
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        body = error if isinstance(error, dict) else {}
    else:
        body = {}
    return UpstreamStatus(
        status=response.status,
        code=_text(body.get("code")),
        type=_text(body.get("type")),
        param=_text(body.get("param")),
        headers={name.lower(): value for name, value in response.headers.items()},
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _plain(value: Any) -> Any:
    """orjson's fallback: read-only mappings and other sequences as JSON objects and
    arrays."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple, frozenset)):
        return list(value)
    raise TypeError(f"cannot send a {type(value).__name__} upstream")


async def read_at_most(response: aiohttp.ClientResponse, limit: int, model: str) -> bytes:
    """The body of `response`, or `UpstreamServerError` as soon as it passes `limit`
    bytes: an oversized answer costs at most `limit` bytes of memory, never its size.
    The connection goes back to the pool after a whole answer and is closed, not
    drained, after a cut or a failure."""
    declared = response.content_length
    if declared is not None and declared > limit:
        response.close()
        raise oversized(model, declared, limit)
    try:
        if declared is not None:
            # The common case: one read of the declared length.
            content = await response.content.readexactly(declared) if declared else b""
            response.release()
            return content
        pieces: list[bytes] = []
        size = 0
        async for piece in response.content.iter_any():
            size += len(piece)
            if size > limit:
                raise oversized(model, size, limit)
            pieces.append(piece)
        response.release()
        return b"".join(pieces)
    except TimeoutError:
        response.close()
        raise UpstreamTimeout(f"{model}: timed out") from None
    except (aiohttp.ClientError, asyncio.IncompleteReadError):
        response.close()
        raise UpstreamConnectionError(f"{model}: connection failed while answering") from None
    except BaseException:
        response.close()
        raise


async def sse_data(
    response: aiohttp.ClientResponse, limit: int, model: str
) -> AsyncIterator[bytes]:
    """The `data` of each server-sent event of `response` until `[DONE]`; an event (or a
    line) longer than `limit` bytes is an `UpstreamServerError` as soon as it passes it.
    Transport failures are `UpstreamTimeout` or `UpstreamConnectionError`; the response
    is released (or closed, unless it ended) when the iteration stops."""
    pending = b""
    data: list[bytes] = []
    size = 0
    finished = False
    try:
        async for piece in response.content.iter_any():
            pending += piece
            *lines, pending = pending.split(b"\n")
            for line in lines:
                line = line.rstrip(b"\r")
                if not line:  # the end of an event
                    if data:
                        event, data, size = b"\n".join(data), [], 0
                        if event.strip() == b"[DONE]":
                            finished = True
                            return
                        yield event
                elif line.startswith(b"data:"):
                    data.append(line[5:].removeprefix(b" "))
                    size += len(line)
                elif line.startswith(b"event:") and line[6:].strip() == b"error":
                    raise UpstreamServerError(f"{model}: upstream error (error event)")
            if size + len(pending) > limit:
                raise oversized(model, size + len(pending), limit)
    except TimeoutError:
        raise UpstreamTimeout(f"{model}: timed out") from None
    except aiohttp.ClientError:
        raise UpstreamConnectionError(f"{model}: connection failed mid-stream") from None
    finally:
        if finished and response.content.at_eof():
            response.release()
        else:
            response.close()


def oversized(model: str, size: int, limit: int) -> UpstreamServerError:
    return UpstreamServerError(
        f"{model}: answered {size:,} bytes or more, over the {limit:,} its max_tokens allow"
    )
