"""Streamed requests timed one at a time: for `bench/run`'s streamed rows.

wrk times a whole response; a stream's point is its first byte. This client sends
streamed chat completions with unique prompts over one kept-alive connection, one after
another (c=1), and times each from the request's first byte sent to the response's first
byte, to its first `data:` event and to its last byte (the end of the chunked body, or
the declared length). Blocking sockets and `time.perf_counter`: the client's own cost is
the same for every target, so the overhead over the direct call is the target's.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.wrk import PROMPT


@dataclass(frozen=True, slots=True)
class Timed:
    first_byte_s: float
    first_event_s: float
    last_byte_s: float


@dataclass(frozen=True, slots=True)
class Timings:
    requests: int
    errors: int
    first_byte_ms: float  # medians
    first_event_ms: float
    last_byte_ms: float


class _Connection:
    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def exchange(self, request: bytes) -> tuple[int, Timed]:
        """Send one request, read its whole response: (status, timings)."""
        started = time.perf_counter()
        self.sock.sendall(request)
        first_byte = first_event = 0.0
        data = self.buffer
        self.buffer = b""
        while b"\r\n\r\n" not in data:
            piece = self.sock.recv(65536)
            if not piece:
                raise ConnectionError("closed before the response head")
            if not first_byte:
                first_byte = time.perf_counter()
            data += piece
        if not first_byte:
            first_byte = time.perf_counter()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        chunked = headers.get(b"transfer-encoding") == b"chunked"
        length = int(headers.get(b"content-length", b"-1"))
        if b"data:" in body:
            first_event = time.perf_counter()
        while True:
            if chunked and _chunked_end(body) >= 0:
                end = _chunked_end(body)
                self.buffer = body[end:]
                break
            if not chunked and length >= 0 and len(body) >= length:
                self.buffer = body[length:]
                break
            piece = self.sock.recv(65536)
            if not piece:
                if chunked or length >= 0:
                    raise ConnectionError("closed mid-response")
                break
            body += piece
            if not first_event and b"data:" in body:
                first_event = time.perf_counter()
        last_byte = time.perf_counter()
        if not first_event:
            first_event = last_byte
        return status, Timed(first_byte - started, first_event - started, last_byte - started)


def _chunked_end(body: bytes) -> int:
    """Where the chunked body `body` ends (after its last, empty chunk), or -1."""
    position = 0
    while True:
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            return -1
        size = int(body[position:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            trailer_end = body.find(b"\r\n", line_end + 2)
            return -1 if trailer_end < 0 else trailer_end + 2
        position = line_end + 2 + size + 2
        if position > len(body):
            return -1


def time_streams(
    url: str,
    template: str,
    nonce: str,
    *,
    duration_s: float,
    max_requests: int = 5000,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> Timings:
    """Streamed requests of `template` (unique prompts) to `url`, one at a time, for
    `duration_s` or `max_requests`; the medians of their timings. Non-200 answers count
    as errors and are not timed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    connection = _Connection(host, port, timeout_s)
    timed: list[Timed] = []
    errors = 0
    deadline = time.monotonic() + duration_s
    try:
        n = 0
        while time.monotonic() < deadline and n < max_requests:
            n += 1
            body = template.replace(PROMPT, f"Streamed ticket {nonce}-{n}.").encode()
            request = (
                f"POST {parts.path or '/'} HTTP/1.1\r\nhost: {host}:{port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body
            try:
                status, one = connection.exchange(request)
            except (OSError, ValueError, IndexError):
                errors += 1
                connection.close()
                connection = _Connection(host, port, timeout_s)
                continue
            if status == 200:
                timed.append(one)
            else:
                errors += 1
    finally:
        connection.close()
    if not timed:
        raise RuntimeError(f"no streamed request to {url} answered 200 ({errors} errors)")
    return Timings(
        requests=len(timed),
        errors=errors,
        first_byte_ms=1000 * statistics.median(t.first_byte_s for t in timed),
        first_event_ms=1000 * statistics.median(t.first_event_s for t in timed),
        last_byte_ms=1000 * statistics.median(t.last_byte_s for t in timed),
    )
