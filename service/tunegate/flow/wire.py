"""The chat call on the request path, over the gateway's own HTTP/1.1 client.

The openai SDK's own per-call work (options, headers, its httpx-shaped transport over
aiohttp) cost about as much CPU as everything else on a cache miss (bench/run's
profile), and aiohttp under it about a quarter of what was left. The gateway needs none
of it for a chat completion: it builds the body itself, reads the answer raw and parses
four fields. So `upstream.py` sends chat completions through this module, over
`http1.Pool` (one request written at once, the answer parsed by httptools), and keeps
the SDK for everything else (tuning jobs, callers' clients). What the SDK did that
matters is kept: the same authorization, the same timeouts (per socket read, as its
aiohttp transport applied them; the gateway bounds the whole attempt on top),
connection pooling up to the upstream's `max_connections`, and its error semantics: a
non-2xx answer is handed back as an `UpstreamStatus` carrying what the SDK's
`APIStatusError` carried (status, `code`, `type`, `param`, headers), which
`upstream.py` maps to the same `errors.py` classes; a timeout is `UpstreamTimeout`, any
other transport failure `UpstreamConnectionError`. Messages from the upstream are never
passed on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson

from tunegate.errors import UpstreamConnectionError, UpstreamServerError, UpstreamTimeout
from tunegate.flow.http1 import Origin, Pool, Response

# How much of an error answer is read for its `error` object.
_ERROR_BODY_BYTES = 64 * 1024
# Redirects followed (307 and 308 to the same origin), as many as aiohttp followed.
_MAX_REDIRECTS = 10


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
    """`POST {base_url}/chat/completions` on one upstream, over one pool of keep-alive
    connections (`http1.Pool`, opened on first use, inside the event loop)."""

    def __init__(self, base_url: str, api_key: str, max_connections: int) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._path = _path_of(self._url)
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "tunegate",
        }
        self._max_connections = max_connections
        self._pool: Pool | None = None
        # Built here, not on the first call: an https origin's TLS context takes tens
        # of milliseconds to load the system's certificates.
        self._origin: Origin | None = None
        with contextlib.suppress(ValueError):
            self._origin = Origin(self._url)

    def _open(self) -> Pool:
        # A URL or header that cannot be sent fails each call, as it did with aiohttp,
        # not the gateway's start.
        if self._origin is None:
            raise ValueError("not an http or https URL")
        self._pool = Pool(self._origin, self._headers, self._max_connections)
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.aclose()

    async def post(self, body: Mapping[str, Any], timeout_s: float, model: str) -> Response:
        """Send `body`; the 2xx response with its body unread (the caller reads it with
        `read_at_most` or `sse_data`). Raises `UpstreamStatus` for any other status,
        `UpstreamTimeout` or `UpstreamConnectionError` when no answer comes.

        A 307 or 308 to the same origin is followed (the body sent again, as aiohttp
        did, at most `_MAX_REDIRECTS` times); any other redirect is an `UpstreamStatus`
        (aiohttp turned a 301-303 into a `GET`, which no chat endpoint answers, and sent
        no key across origins)."""
        data = orjson.dumps(body, default=_plain)
        url, path = self._url, self._path
        try:
            pool = self._pool or self._open()
        except ValueError:
            raise UpstreamConnectionError(f"{model}: connection failed") from None
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                response = await pool.post(path, data, timeout_s)
            except TimeoutError:
                raise UpstreamTimeout(f"{model}: timed out") from None
            except (OSError, ValueError):
                raise UpstreamConnectionError(f"{model}: connection failed") from None
            status = response.status
            if 200 <= status < 300:
                return response
            location = response.headers.get("location") if status in (307, 308) else None
            if location:
                target = urljoin(url, location)
                if self._origin is not None and self._origin.same(target):
                    await _opening(response)
                    url, path = target, _path_of(target)
                    continue
            raise await _status_of(response)
        raise UpstreamConnectionError(f"{model}: connection failed (too many redirects)")


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


async def _opening(response: Response) -> bytes:
    """The first `_ERROR_BODY_BYTES` of a body that is not an answer (an error's, a
    redirect's), then the response ended: released when read whole, else closed. A
    timeout or a cut ends it too: what came is what there is."""
    pieces: list[bytes] = []
    size = 0
    try:
        while size < _ERROR_BODY_BYTES and (piece := await response.read()):
            pieces.append(piece)
            size += len(piece)
    except OSError:
        pass
    finally:
        if response.at_eof():
            response.release()
        else:
            response.close()
    return b"".join(pieces)[:_ERROR_BODY_BYTES]


async def _status_of(response: Response) -> UpstreamStatus:
    """The `UpstreamStatus` of a non-2xx answer: `code`, `type` and `param` from its
    `error` object (or the body itself), as the SDK reads them."""
    headers = response.headers
    raw = await _opening(response)
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
        headers=headers,
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


async def read_at_most(response: Response, limit: int, model: str) -> bytes:
    """The body of `response`, or `UpstreamServerError` as soon as it passes `limit`
    bytes: an oversized answer costs at most `limit` bytes of memory, never its size.
    The connection goes back to the pool after a whole answer and is closed, not
    drained, after a cut or a failure."""
    declared = response.content_length
    if declared is not None and declared > limit:
        response.close()
        raise oversized(model, declared, limit)
    try:
        # Commonly the whole body came with the head: one read, no wait.
        pieces: list[bytes] = []
        size = 0
        while piece := await response.read():
            size += len(piece)
            if size > limit:
                raise oversized(model, size, limit)
            pieces.append(piece)
        response.release()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
    except TimeoutError:
        response.close()
        raise UpstreamTimeout(f"{model}: timed out") from None
    except OSError:
        response.close()
        raise UpstreamConnectionError(f"{model}: connection failed while answering") from None
    except BaseException:
        response.close()
        raise


async def sse_data(response: Response, limit: int, model: str) -> AsyncIterator[bytes]:
    """The `data` of each server-sent event of `response` until `[DONE]`; an event (or a
    line) longer than `limit` bytes is an `UpstreamServerError` as soon as it passes it.
    Transport failures are `UpstreamTimeout` or `UpstreamConnectionError`; the response
    is released (or closed, unless it ended) when the iteration stops."""
    pending = b""
    data: list[bytes] = []
    size = 0
    finished = False
    try:
        while piece := await response.read():
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
    except OSError:
        raise UpstreamConnectionError(f"{model}: connection failed mid-stream") from None
    finally:
        if finished and response.at_eof():
            response.release()
        else:
            response.close()


def oversized(model: str, size: int, limit: int) -> UpstreamServerError:
    return UpstreamServerError(
        f"{model}: answered {size:,} bytes or more, over the {limit:,} its max_tokens allow"
    )
