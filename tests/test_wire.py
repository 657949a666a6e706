"""The upstream chat call's HTTP/1.1 client (`wire.py` over `http1.py`) against real
sockets: a tiny raw HTTP server in each test answers, stalls, cuts or closes exactly
where the case needs it, and counts the connections and requests it saw."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from tests.test_tls import certificates
from tunegate.errors import UpstreamConnectionError, UpstreamServerError, UpstreamTimeout
from tunegate.flow.wire import ChatEndpoint, UpstreamStatus, read_at_most, sse_data
from tunegate.state.embedded import free_port

pytestmark = pytest.mark.anyio

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
ANSWER = b'{"choices": [{"message": {"content": "hi"}}]}'
LIMIT = 1 << 20


@dataclass
class Request:
    head: bytes
    body: bytes
    connection: int  # the index of the connection it came on, in order of arrival


# What the server does with a request: write an answer (or not); False closes the
# connection afterwards.
Answer = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class RawUpstream:
    answer: Answer
    url: str = ""
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[Request] = field(default_factory=list)
    hung_up: list[int] = field(default_factory=list)  # connections the client closed
    hang_up: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.hung_up.append(index)
                    self.hang_up.set()
                    return
                found = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                body = await reader.readexactly(int(found[1]) if found else 0)
                request = Request(head, body, index)
                self.requests.append(request)
                async with self.arrived:
                    self.arrived.notify_all()
                if not await self.answer(request, writer):
                    return
        finally:
            self.open_now -= 1
            writer.close()

    async def until_requests(self, count: int) -> None:
        with anyio.fail_after(5):
            async with self.arrived:
                await self.arrived.wait_for(lambda: len(self.requests) >= count)


@pytest.fixture
async def make_upstream() -> AsyncIterator[Callable[..., Awaitable[RawUpstream]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer, tls: ssl.SSLContext | None = None) -> RawUpstream:
        upstream = RawUpstream(answer)
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0, ssl=tls)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        upstream.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1"
        return upstream

    yield start
    for server in servers:
        server.close()


def ok(body: bytes = ANSWER) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


async def answer_ok(request: Request, writer: asyncio.StreamWriter) -> bool:
    writer.write(ok())
    return True


async def ask(endpoint: ChatEndpoint, timeout_s: float = 5.0) -> bytes:
    return await read_at_most(await endpoint.post(BODY, timeout_s, "m"), LIMIT, "m")


@pytest.fixture
async def endpoints() -> AsyncIterator[Callable[..., ChatEndpoint]]:
    opened: list[ChatEndpoint] = []

    def make(url: str, max_connections: int = 4) -> ChatEndpoint:
        endpoint = ChatEndpoint(url, "sk-test", max_connections)
        opened.append(endpoint)
        return endpoint

    yield make
    for endpoint in opened:
        await endpoint.aclose()


async def test_sequential_calls_share_one_kept_alive_connection(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    upstream = await make_upstream(answer_ok)
    endpoint = endpoints(upstream.url)
    for _ in range(3):
        assert await ask(endpoint) == ANSWER
    assert upstream.connections == 1
    assert len(upstream.requests) == 3
    first = upstream.requests[0]
    assert first.head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    head = first.head.lower()
    assert b"\r\nauthorization: bearer sk-test\r\n" in head
    assert b"\r\nhost: 127.0.0.1:" in head
    assert b"\r\ncontent-type: application/json\r\n" in head
    assert b"accept-encoding" not in head  # answers come identity-encoded
    assert first.body == b'{"model":"m","messages":[{"role":"user","content":"hello"}]}'


@pytest.mark.parametrize("settle", [True, False], ids=["closed-while-idle", "closed-at-once"])
async def test_a_pooled_connection_the_server_closed_does_not_fail_the_next_call(
    settle: bool,
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    async def answer_then_close(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok())
        return False  # closed while the client keeps it idle

    upstream = await make_upstream(answer_then_close)
    endpoint = endpoints(upstream.url)
    for _ in range(3):
        assert await ask(endpoint) == ANSWER
        if settle:  # the client sees the close before it reuses the connection
            for _ in range(20):
                await asyncio.sleep(0)
    assert len(upstream.requests) == 3
    assert upstream.connections == 3


async def test_a_request_lost_on_a_reused_connection_is_sent_once_more(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    # The server closes its first connection on the second request, without a byte of
    # an answer, as a server closing an idle connection while a request goes out.
    async def second_lost(request: Request, writer: asyncio.StreamWriter) -> bool:
        if len(upstream.requests) == 2:
            return False
        writer.write(ok())
        return True

    upstream = await make_upstream(second_lost)
    endpoint = endpoints(upstream.url)
    assert await ask(endpoint) == ANSWER
    assert await ask(endpoint) == ANSWER
    assert [r.connection for r in upstream.requests] == [0, 0, 1]


async def test_a_new_connection_closed_without_an_answer_is_not_retried(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    async def close(request: Request, writer: asyncio.StreamWriter) -> bool:
        return False

    upstream = await make_upstream(close)
    with pytest.raises(UpstreamConnectionError, match=r"^m: connection failed$"):
        await ask(endpoints(upstream.url))
    assert len(upstream.requests) == 1


async def test_a_chunked_body_is_decoded(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    async def chunked(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (ANSWER[:10], ANSWER[10:30], ANSWER[30:]):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    upstream = await make_upstream(chunked)
    endpoint = endpoints(upstream.url)
    assert await ask(endpoint) == ANSWER
    assert await ask(endpoint) == ANSWER
    assert upstream.connections == 1  # the end of the chunks ends the answer


async def test_a_stream_passes_each_event_on_as_it_arrives(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    more = asyncio.Event()

    async def stream(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        for event in (b'data: {"n": 1}\n\n', None, b'data: {"n": 2}\n\ndata: [DONE]\n\n'):
            if event is None:
                await more.wait()  # the second event only once the first was passed on
                continue
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        writer.write(b"0\r\n\r\n")
        return True

    upstream = await make_upstream(stream)
    endpoint = endpoints(upstream.url)
    events = []
    with anyio.fail_after(5):
        async for event in sse_data(await endpoint.post(BODY, 5.0, "m"), LIMIT, "m"):
            events.append(event)
            more.set()
    assert events == [b'{"n": 1}', b'{"n": 2}']


async def test_a_silent_upstream_times_out_per_wait(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.Event().wait()
        return False

    upstream = await make_upstream(silent)
    with pytest.raises(UpstreamTimeout, match=r"^m: timed out$"):
        await ask(endpoints(upstream.url), timeout_s=0.2)


async def test_a_timed_out_answer_never_leaves_its_tail_for_the_next_call(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    rest = asyncio.Event()

    async def stalls_first(request: Request, writer: asyncio.StreamWriter) -> bool:
        answer = ok(b'{"first": "answer, late"}')
        if len(upstream.requests) == 1:
            writer.write(answer[:-10])
            await rest.wait()
            writer.write(answer[-10:])
            return True
        writer.write(ok())
        return True

    upstream = await make_upstream(stalls_first)
    endpoint = endpoints(upstream.url)
    with pytest.raises(UpstreamTimeout):
        await ask(endpoint, timeout_s=0.2)
    rest.set()
    assert await ask(endpoint) == ANSWER
    assert [r.connection for r in upstream.requests] == [0, 1]


async def test_a_refused_connection_is_a_connection_error(
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    endpoint = endpoints(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(UpstreamConnectionError, match=r"^m: connection failed$"):
        await ask(endpoint)


async def test_an_answer_cut_mid_body_is_a_connection_error(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    async def cut_first(request: Request, writer: asyncio.StreamWriter) -> bool:
        if len(upstream.requests) == 1:
            writer.write(ok()[:-10])
            return False
        writer.write(ok())
        return True

    upstream = await make_upstream(cut_first)
    endpoint = endpoints(upstream.url)
    with pytest.raises(UpstreamConnectionError, match=r"^m: connection failed while answering$"):
        await ask(endpoint)
    assert await ask(endpoint) == ANSWER
    assert upstream.connections == 2


async def test_an_oversized_answer_closes_its_connection(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    async def endless_chunks(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        piece = b"x" * 65536
        try:
            while True:  # until the client hangs up
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
        except ConnectionError:
            upstream.hung_up.append(request.connection)
            upstream.hang_up.set()
            return False

    upstream = await make_upstream(endless_chunks)
    endpoint = endpoints(upstream.url)
    response = await endpoint.post(BODY, 5.0, "m")
    with pytest.raises(UpstreamServerError, match="over the 1,048,576"):
        await read_at_most(response, LIMIT, "m")
    with anyio.fail_after(5):
        await upstream.hang_up.wait()
    assert upstream.hung_up == [0]


async def test_a_cancelled_call_closes_its_connection(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    late = asyncio.Event()

    async def hold_first(request: Request, writer: asyncio.StreamWriter) -> bool:
        if len(upstream.requests) == 1:
            await late.wait()  # answers only after the caller gave up
            writer.write(ok(b'{"late": true}'))
        else:
            writer.write(ok())
        return True

    upstream = await make_upstream(hold_first)
    endpoint = endpoints(upstream.url, max_connections=1)
    call = asyncio.ensure_future(ask(endpoint))
    await upstream.until_requests(1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The held connection is not the pool's any more: the next call opens another
    # (within the bound of 1) while the first is still unanswered.
    assert await ask(endpoint) == ANSWER
    assert [r.connection for r in upstream.requests] == [0, 1]
    late.set()
    with anyio.fail_after(5):
        await upstream.hang_up.wait()  # the client had closed it
    assert upstream.hung_up == [0]


async def test_callers_beyond_max_connections_wait_for_a_free_one(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    release = asyncio.Event()

    async def held(request: Request, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(ok())
        return True

    upstream = await make_upstream(held)
    endpoint = endpoints(upstream.url, max_connections=2)
    calls = [asyncio.ensure_future(ask(endpoint)) for _ in range(5)]
    await upstream.until_requests(2)
    for _ in range(50):  # turns of the loop for any further connection to arrive
        await asyncio.sleep(0)
    assert upstream.connections == 2
    release.set()
    with anyio.fail_after(5):
        assert await asyncio.gather(*calls) == [ANSWER] * 5
    assert upstream.connections == 2
    assert upstream.most_open == 2


async def test_a_307_to_the_same_origin_is_followed_with_the_body(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    async def moved(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.head.startswith(b"POST /v1/"):
            writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /v2/chat/completions\r\n")
            writer.write(b"content-length: 0\r\n\r\n")
        else:
            writer.write(ok())
        return True

    upstream = await make_upstream(moved)
    assert await ask(endpoints(upstream.url)) == ANSWER
    assert [r.head.split(b" ")[1] for r in upstream.requests] == [
        b"/v1/chat/completions",
        b"/v2/chat/completions",
    ]
    assert upstream.requests[0].body == upstream.requests[1].body


async def test_a_redirect_elsewhere_is_a_status(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    async def moved(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 308 Permanent Redirect\r\n")
        writer.write(b"location: https://elsewhere.invalid/v1/chat/completions\r\n")
        writer.write(b"content-length: 0\r\n\r\n")
        return True

    upstream = await make_upstream(moved)
    with pytest.raises(UpstreamStatus) as raised:
        await ask(endpoints(upstream.url))
    assert raised.value.status == 308
    assert len(upstream.requests) == 1


async def test_an_error_answer_is_a_status_with_its_error_fields(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    error = b'{"error": {"message": "sk-test is wrong", "type": "requests", "code": "rate_limit_exceeded", "param": null}}'

    async def limited(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n")
        writer.write(b"content-length: %d\r\n\r\n%s" % (len(error), error))
        return True

    upstream = await make_upstream(limited)
    endpoint = endpoints(upstream.url)
    with pytest.raises(UpstreamStatus) as raised:
        await ask(endpoint)
    status = raised.value
    assert (status.status, status.code, status.type, status.param) == (
        429,
        "rate_limit_exceeded",
        "requests",
        None,
    )
    assert status.headers["retry-after"] == "3"
    assert "sk-test" not in str(status)


async def test_an_answer_left_unread_stops_the_socket_being_read(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    flood = 64 << 20  # far past the socket buffers of both ends
    sent = 0

    async def endless(request: Request, writer: asyncio.StreamWriter) -> bool:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        piece = b"x" * 65536
        try:
            while sent < flood:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                await writer.drain()
            all_sent.set()
        except ConnectionError:
            pass
        return False

    all_sent = asyncio.Event()
    upstream = await make_upstream(endless)
    response = await endpoints(upstream.url).post(BODY, 5.0, "m")
    with anyio.move_on_after(2):  # a client reading on would take it all in far less
        await all_sent.wait()
    assert sent < flood  # the client stopped reading once its buffer was full
    first = await response.read()  # what was buffered is still there to read
    assert first.startswith(b"x")
    response.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl for the certificates")
async def test_an_https_upstream_is_called_over_tls_and_its_certificate_checked(
    make_upstream: Callable[..., Awaitable[RawUpstream]],
    endpoints: Callable[..., ChatEndpoint],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    certificates(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    upstream = await make_upstream(answer_ok, tls)
    with pytest.raises(UpstreamConnectionError):  # the system's CAs do not know it
        await ask(endpoints(upstream.url))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    endpoint = endpoints(upstream.url)
    assert await ask(endpoint) == ANSWER
    assert await ask(endpoint) == ANSWER
    assert upstream.connections == 1  # kept alive (the refused handshake never got here)


async def test_a_base_url_that_is_not_http_fails_each_call_not_the_start(
    endpoints: Callable[..., ChatEndpoint],
) -> None:
    endpoint = endpoints("localhost:8080/v1")  # no scheme
    with pytest.raises(UpstreamConnectionError, match=r"^m: connection failed$"):
        await ask(endpoint)
