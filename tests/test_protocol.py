"""The HTTP protocol `tunegate serve` runs (`commands/protocol.py`), through real uvicorn
and raw sockets: a whole response leaves in one write, a streamed response's head
leaves at once, a response that fails after its head still ends as before, and every
request's headers have a deadline (idle keep-alive connections have none)."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from tests.harness import free_port
from tunegate.commands.protocol import gateway_protocol

HELD_S = 0.5  # how long the app holds its body back, for the client to see what came first


HEADER_TIMEOUT_S = 0.3  # for the deadline's tests


class App:
    """Starts a response (`/length`: with a content-length, `/chunked`: without, `/fail`:
    with one, then raises), then waits until the test releases its body (`/now`: does
    not wait)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b"the body"
        headers = [(b"content-type", b"text/plain")]
        if scope["path"] != "/chunked":
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["path"] != "/now":
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.release.wait, 10)
        if scope["path"] == "/fail":
            raise RuntimeError("the app failed after starting its response")
        await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def serving(header_timeout_s: float) -> Iterator[tuple[App, int]]:
    app = App()
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=gateway_protocol(header_timeout_s),
        lifespan="off",
        log_level="critical",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield app, port
    finally:
        app.release.set()
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def served() -> Iterator[tuple[App, int]]:
    with serving(header_timeout_s=10.0) as running:
        yield running


def _ask(port: int, method: str, path: str) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return client


def _arrives_within(client: socket.socket, seconds: float) -> bool:
    readable, _, _ = select.select([client], [], [], seconds)
    return bool(readable)


def _read_all(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_response_with_a_length_leaves_whole_with_its_body(served: tuple[App, int]) -> None:
    app, port = served
    with _ask(port, "GET", "/length") as client:
        # Its head was started; with the old protocol it would be here by now.
        assert not _arrives_within(client, HELD_S)
        app.release.set()
        assert _arrives_within(client, 10)
        answer = client.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"the body"


def test_a_streamed_responses_head_leaves_before_its_body(served: tuple[App, int]) -> None:
    app, port = served
    with _ask(port, "GET", "/chunked") as client:
        assert _arrives_within(client, 10)
        head = client.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
        assert head.endswith(b"\r\n\r\n")  # the head only: the body is still held
        app.release.set()
        assert _arrives_within(client, 10)
        assert b"the body" in client.recv(65536)


def test_a_head_requests_answer_leaves_at_once(served: tuple[App, int]) -> None:
    app, port = served
    with _ask(port, "HEAD", "/length") as client:
        assert _arrives_within(client, 10)  # no body write would carry a held head
        head = client.recv(65536)
        app.release.set()
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
    assert b"content-length: 8" in head


def test_a_response_that_fails_after_its_head_sends_the_head_then_closes(
    served: tuple[App, int],
) -> None:
    app, port = served
    with _ask(port, "GET", "/fail") as client:
        app.release.set()
        answer = _read_all(client)  # until the server closes the connection
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\n")


def _answered(client: socket.socket) -> bytes:
    client.sendall(b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"the body")
    return answer


def test_every_requests_headers_have_a_deadline_idle_connections_none() -> None:
    with serving(HEADER_TIMEOUT_S) as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            assert silent.recv(1024) == b""  # connected and silent: closed
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            _answered(client)
            # Idle between requests for longer than the deadline: still open.
            assert not _arrives_within(client, 3 * HEADER_TIMEOUT_S)
            _answered(client)
            client.sendall(b"GET /now HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert client.recv(1024) == b""  # closed, no answer
