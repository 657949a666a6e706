"""The store against a real server: round trips, locks, scripts, and failing open when the
server is killed, frozen, talks garbage, or the caller gives up mid-command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import pytest
from anyio.abc import SocketStream
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from tests.testkit.redis_server import RedisServer, redis_server
from tunegate.state.embedded import EmbeddedServer, EmbeddedServerError, answers_ping, free_port
from tunegate.state.store import Command, ScriptHandle, Store, packed

pytestmark = pytest.mark.anyio

INCR_WITH_EXPIRY = """
local n = redis.call("INCRBY", KEYS[1], ARGV[1])
redis.call("PEXPIRE", KEYS[1], ARGV[2])
return n
"""


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[Store]:
    opened = Store(server.url)
    yield opened
    await opened.close()


def state_of(store: Store) -> str:
    """`store.state`, read afresh (mypy would keep the value narrowed by an earlier assert)."""
    return store.state


@contextlib.asynccontextmanager
async def one_connection_store(server: RedisServer) -> AsyncIterator[Store]:
    """A store holding `a` and `b` on one connection, so a stale reply left on it would be
    read by the next command, with a long socket timeout, so a cancellation (not a
    timeout) ends a command."""
    store = Store(server.url, socket_timeout_ms=2_000, max_connections=1)
    try:
        assert await store.set("a", b"A", ttl_s=60)
        assert await store.set("b", b"B", ttl_s=60)
        yield store
    finally:
        await store.close()


async def remaining_ttl_ms(url: str, key: str) -> int:
    raw = Redis.from_url(url)
    try:
        ttl: int = await raw.pttl(key)
    finally:
        await raw.aclose()
    return ttl


async def test_set_then_get_round_trips_bytes_with_a_ttl(server: RedisServer, store: Store) -> None:
    value = b"\x00\xff{}binary"
    assert await store.set("cache:one", value, ttl_s=30)
    assert await store.get("cache:one") == value
    assert 0 < await remaining_ttl_ms(server.url, "cache:one") <= 30_000
    assert await store.get("cache:absent") is None
    assert await store.ping()
    assert state_of(store) == "ok"


async def test_set_refuses_to_store_without_expiry(store: Store) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await store.set("cache:forever", b"x", ttl_s=0)


async def test_registered_script_runs_atomically_with_keys_and_args(
    server: RedisServer, store: Store
) -> None:
    handle = store.register(INCR_WITH_EXPIRY)
    assert store.register(INCR_WITH_EXPIRY) == handle
    assert await store.run(handle, keys=["counter:a"], args=[2, 60_000]) == 2
    assert await store.run(handle, keys=["counter:a"], args=[3, 60_000]) == 5
    assert 0 < await remaining_ttl_ms(server.url, "counter:a") <= 60_000
    listing = store.register("return {KEYS[1], ARGV[1]}")
    assert await store.run(listing, keys=["k"], args=["v"]) == [b"k", b"v"]


async def test_a_script_error_answers_none(store: Store) -> None:
    failing = store.register("return redis.error_reply('no')")
    assert await store.run(failing) is None


async def test_killed_server_fails_open_fast_and_recovers_after_restart(
    server: RedisServer, store: Store
) -> None:
    counter = store.register(INCR_WITH_EXPIRY)
    assert await store.run(counter, keys=["n"], args=[1, 60_000]) == 1
    assert await store.set("k", b"before", ttl_s=60)

    server.kill()
    started = time.monotonic()
    assert await store.get("k") is None
    assert not await store.set("k", b"during", ttl_s=60)
    assert await store.run(counter, keys=["n"], args=[1, 60_000]) is None
    assert not await store.ping()
    assert time.monotonic() - started < 0.5
    assert state_of(store) == "down"

    server.restart()
    assert await store.ping()  # the probe that closes the breaker
    assert state_of(store) == "ok"
    assert await store.get("k") is None  # a fresh server: nothing persisted
    assert await store.set("k", b"after", ttl_s=60)
    assert await store.get("k") == b"after"
    # The restart emptied the script cache; the script is loaded again on first use.
    assert await store.run(counter, keys=["n"], args=[1, 60_000]) == 1


async def test_frozen_server_times_out_within_the_socket_timeout_then_recovers(
    server: RedisServer, store: Store
) -> None:
    assert await store.set("k", b"v", ttl_s=60)
    server.freeze()
    try:
        started = time.monotonic()
        assert await store.get("k") is None
        assert time.monotonic() - started < 0.5
        assert state_of(store) == "slow"  # one timeout: slow, not down
    finally:
        server.thaw()
    assert await store.get("k") == b"v"
    assert state_of(store) == "ok"


async def test_a_batch_that_times_out_is_one_failure_not_an_outage(
    server: RedisServer, store: Store
) -> None:
    """Eight callers' commands share one batch; its one slow reply makes the store
    `slow`, not `down` (eight failures in a row would)."""
    assert await store.set("k", b"v", ttl_s=60)
    server.freeze()
    try:
        assert await asyncio.gather(*(store.get("k") for _ in range(8))) == [None] * 8
        assert state_of(store) == "slow"
    finally:
        server.thaw()
    assert await store.get("k") == b"v"
    assert state_of(store) == "ok"


async def cancel_with_anyio_scope(store: Store) -> None:
    with anyio.move_on_after(0.05) as scope:
        await store.get("a")
    assert scope.cancelled_caught


async def cancel_with_task_cancel(store: Store) -> None:
    task = asyncio.create_task(store.get("a"))
    await asyncio.sleep(0.05)
    assert task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("cancel", [cancel_with_anyio_scope, cancel_with_task_cancel])
async def test_a_get_cancelled_mid_flight_leaves_no_reply_behind(
    server: RedisServer, cancel: Callable[[Store], Awaitable[None]]
) -> None:
    async with one_connection_store(server) as store:
        server.freeze()
        try:
            await cancel(store)
        finally:
            server.thaw()
        await anyio.sleep(0.05)  # the server now answers the cancelled GET a
        assert await store.get("b") == b"B"
        assert await store.get("a") == b"A"
        assert state_of(store) == "ok"


@pytest.mark.parametrize(
    "commands",
    [
        [("PING",)],
        [("GET", "tunegate:cache:{ab}"), ("SET", "k", b"\x00\r\n\xff", "EX", 30)],
        [
            ("EVALSHA", "f" * 40, 2, "a", "b", "caf\u00e9", -7, 0.25, 1e-7),
            ("SET", "v", b"x" * 9000),
        ],
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(commands: list[Command]) -> None:
    assert packed(commands) == b"".join(Connection().pack_commands(commands))


async def test_the_commands_of_one_turn_share_one_connection(server: RedisServer) -> None:
    """Concurrent callers' commands go out as one pipeline: with a single connection
    allowed, 32 of them all succeed (one connection each would fail 31 at once)."""
    store = Store(server.url, max_connections=1)
    counter = store.register(INCR_WITH_EXPIRY)
    try:
        assert await store.set("shared", b"v", ttl_s=60)
        gets = [store.get("shared") for _ in range(16)]
        runs = [store.run(counter, keys=["n"], args=[1, 60_000]) for _ in range(16)]
        replies = await asyncio.gather(*gets, *runs)
        assert replies[:16] == [b"v"] * 16
        assert sorted(replies[16:]) == list(range(1, 17))  # type: ignore[type-var]  # ints
        assert await store.set_many({"m1": b"1", "m2": b"2"}, ttl_s=60)
        assert [await store.get("m1"), await store.get("m2")] == [b"1", b"2"]
        assert state_of(store) == "ok"
    finally:
        await store.close()


async def test_a_refused_script_fails_alone_in_its_batch(store: Store) -> None:
    failing = store.register("return redis.error_reply('no')")
    echo = store.register("return ARGV[1]")
    assert await store.set("k", b"v", ttl_s=60)
    replies = await asyncio.gather(store.run(failing), store.get("k"), store.run(echo, args=["x"]))
    assert list(replies) == [None, b"v", b"x"]


async def test_a_caller_cancelled_in_a_batch_leaves_the_others_their_replies(
    server: RedisServer,
) -> None:
    async with one_connection_store(server) as store:
        server.freeze()
        try:
            leaving = asyncio.create_task(store.get("a"))
            staying = asyncio.create_task(store.get("b"))
            await asyncio.sleep(0.05)  # both sent, in one batch, unanswered
            leaving.cancel()
        finally:
            server.thaw()
        assert await staying == b"B"
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert await store.get("a") == b"A"  # the connection is in step
        assert state_of(store) == "ok"


async def test_a_server_talking_garbage_fails_open() -> None:
    async def answer_garbage(stream: SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while await stream.receive():
                    await stream.send(b"?not resp at all\r\n")

    port = free_port()
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port) as listener,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(listener.serve, answer_garbage)
        store = Store(f"redis://127.0.0.1:{port}/0")
        try:
            assert await store.get("k") is None
            assert not await store.set("k", b"v", ttl_s=1)
            assert state_of(store) == "ok"  # two errors are no outage yet
            assert await store.get("k") is None
            assert state_of(store) == "down"
        finally:
            await store.close()
            tasks.cancel_scope.cancel()


async def test_errors_are_logged_once_per_interval_by_class_name_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        with caplog.at_level(logging.WARNING, logger="tunegate.store"):
            for _ in range(3):
                assert await store.get("tenant-secret-key") is None
    finally:
        await store.close()
    assert [r.getMessage() for r in caplog.records] == [
        "store error ConnectionError; failing open",
        "store down (was ok): 3 failures in a row, the last ConnectionError; limits follow "
        "auth.on_store_error until a probe succeeds",
    ]
    assert "tenant-secret-key" not in caplog.text
    assert state_of(store) == "down"


def test_embedded_server_answers_ping_and_stop_removes_its_directory() -> None:
    with EmbeddedServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert answers_ping(server.port)
        workdir = server.workdir
        assert workdir is not None
        assert workdir.is_dir()
    assert not workdir.exists()
    assert not answers_ping(server.port)


def test_two_embedded_servers_listen_on_two_ports() -> None:
    with EmbeddedServer() as first, EmbeddedServer() as second:
        assert first.port != second.port
        assert answers_ping(first.port)
        assert answers_ping(second.port)


def test_embedded_server_that_cannot_start_says_so() -> None:
    with pytest.raises(EmbeddedServerError, match="did not start"):
        EmbeddedServer(binary="/bin/false", start_timeout_s=1).start()


async def test_a_cancelled_caller_is_never_kept_running_by_the_store(server: RedisServer) -> None:
    """redis-py can swallow a cancellation that lands while a connection opens; the task
    then ran on (a lifespan that cancels its background loop waited forever)."""
    script_source = "return redis.call('GET', KEYS[1])"
    delays = [i * 0.0001 for i in range(40)]
    kept_running = 0
    for delay in delays:
        store = Store(server.url)
        handle = store.register(script_source)

        async def loop(store: Store = store, handle: ScriptHandle = handle) -> None:
            await store.run(handle, ["k"])
            await asyncio.Event().wait()  # only a cancellation ends this

        task = asyncio.get_running_loop().create_task(loop())
        await asyncio.sleep(delay)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        if not done:
            kept_running += 1
            task.cancel()
            await asyncio.wait([task], timeout=5)
        await store.close()
    assert kept_running == 0
