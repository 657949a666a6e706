"""Store faults: the Redis-protocol server is killed and restarted empty, frozen, fed
garbage at cache keys, squeezed by `maxmemory`, or slowed down. The gateway must keep
answering right (a store outage makes the cache a miss, never an error)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator

import redis.asyncio as redis

from bench.fault_suite.core import Scenario, Suite, Verdict
from bench.fault_suite.load import Outcome, Tally, chat, run_load, ticket
from bench.fault_suite.stack import Gateway

CONCURRENCY = 30
# Repeated tickets, so the cache serves hits while the store is healthy.
TICKET_POOL = [ticket(i) for i in range(300)]


async def _load(
    suite: Suite,
    seconds: float | None,
    during: asyncio.Future[object] | None = None,
    *,
    gateway: Gateway | None = None,
    unique: bool = False,
) -> Tally:
    client = suite.client(suite.keys.main.key, gateway)

    async def one(index: int) -> Outcome:
        text = ticket(index) if unique else random.choice(TICKET_POOL)
        return await chat(client, "triage", text)

    return await run_load(one, concurrency=CONCURRENCY, duration_s=seconds, during=during)


def _hits(outcomes: list[Outcome]) -> int:
    return sum(1 for o in outcomes if o.headers.get("x-tunegate-cache") == "hit")


async def _readyz(suite: Suite) -> tuple[int, str]:
    response = await suite.http.get(f"{suite.main.url}/readyz")
    return response.status_code, response.text


@contextlib.asynccontextmanager
async def _admin(suite: Suite) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(suite.valkey.url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


async def sigkill_restart(suite: Suite) -> Verdict:
    started = restarted = time.monotonic()
    restart_s = 0.0
    down: tuple[int, str] = (0, "")

    async def timeline() -> None:
        nonlocal down, restarted, restart_s
        await asyncio.sleep(3)
        suite.valkey.kill()
        await asyncio.sleep(1.5)
        down = await _readyz(suite)
        await asyncio.sleep(1.5)
        began = time.monotonic()
        await asyncio.to_thread(suite.valkey.restart)
        restarted = time.monotonic()
        restart_s = restarted - began
        await asyncio.sleep(5)

    tally = await _load(suite, None, asyncio.ensure_future(timeline()))
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    verdict.check("p99 < 1 s", tally.latency(0.99) < 1.0)
    verdict.check(
        "/readyz 200 and store down while down", down[0] == 200 and '"store":"down"' in down[1]
    )
    after = [o for o in tally.outcomes if o.at > restarted]
    verdict.check("cache hits again after the restart", _hits(after) > 0)
    verdict.note(
        f"killed at 3 s, back at {restarted - started:.1f} s (the restart took {restart_s:.1f} s);"
        f" {len(after)} answers, {_hits(after)} hits after it"
    )
    return verdict


async def sigstop(suite: Suite) -> Verdict:
    marks: dict[str, tuple[int, str]] = {}
    thawed = time.monotonic() + 3600

    async def timeline() -> None:
        nonlocal thawed
        await asyncio.sleep(2)
        suite.valkey.freeze()
        try:
            await asyncio.sleep(5)
            marks["frozen"] = await _readyz(suite)
            await asyncio.sleep(5)
        finally:
            suite.valkey.thaw()
            thawed = time.monotonic()
        await asyncio.sleep(4)

    tally = await _load(suite, None, asyncio.ensure_future(timeline()))
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    verdict.check("p99 < 1.5 s", tally.latency(0.99) < 1.5)
    status, body = marks.get("frozen", (0, ""))
    verdict.check(
        "/readyz 200 and store down while frozen", status == 200 and '"store":"down"' in body
    )
    after = [o for o in tally.outcomes if o.at > thawed + 1]
    verdict.check("cache hits again after the thaw", _hits(after) > 0)
    verdict.note(f"{len(after)} answers, {_hits(after)} hits from 1 s after the thaw")
    return verdict


def _garbage(value: bytes) -> bytes:
    kinds = [
        os.urandom(64),
        b"null",
        b'{"unexpected": true}',
        value[: len(value) // 2],
        b"\xff\xfe" + value,
        b"[]",
    ]
    return random.choice(kinds)


async def garbage(suite: Suite) -> Verdict:
    corrupted = 0

    async def timeline() -> None:
        nonlocal corrupted
        async with _admin(suite) as store:
            for _ in range(16):
                await asyncio.sleep(0.5)
                async for key in store.scan_iter(match="tunegate:cache:*", count=500):
                    if await store.type(key) != b"string":
                        continue
                    value = await store.get(key)
                    if not isinstance(value, bytes):
                        continue
                    if random.random() < 0.15:
                        # A key of the wrong type: every GET on it is an error.
                        async with store.pipeline(transaction=True) as replace:
                            replace.delete(key)
                            replace.rpush(key, b"x")
                            replace.expire(key, 60)
                            await replace.execute()
                    else:
                        await store.set(key, _garbage(value), keepttl=True)
                    corrupted += 1

    tally = await _load(suite, 10, asyncio.ensure_future(timeline()))
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    verdict.check("garbage was written", corrupted > 0)
    verdict.note(f"{corrupted} cache values corrupted; {_hits(tally.outcomes)} hits served")
    return verdict


async def maxmemory(suite: Suite) -> Verdict:
    async with _admin(suite) as store:
        before = int((await store.info("stats"))["evicted_keys"])
        await store.config_set("maxmemory", "2mb")
        await store.config_set("maxmemory-policy", "allkeys-lru")
        try:
            lru = await _load(suite, 7, unique=True)
            evicted = int((await store.info("stats"))["evicted_keys"]) - before
            await store.config_set("maxmemory-policy", "noeviction")
            full = await _load(suite, 6, unique=True)
        finally:
            await store.config_set("maxmemory", "0")
            await store.config_set("maxmemory-policy", "noeviction")
    tally = Tally()
    tally.extend(lru)
    tally.extend(full)
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    verdict.check("keys were evicted (allkeys-lru)", evicted > 0)
    verdict.check("p99 < 2 s", tally.latency(0.99) < 2.0)
    verdict.note(
        f"{evicted} keys evicted (p99 {lru.latency(0.99) * 1000:.0f} ms); then {full.sent} "
        f"requests with writes refused by OOM (p99 {full.latency(0.99) * 1000:.0f} ms)"
    )
    return verdict


class DelayProxy:
    """A TCP proxy on loopback that holds every chunk for `delay_s` each way."""

    def __init__(self, target_port: int) -> None:
        self.delay_s = 0.0
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.close()
            return
        for task in (self._pump(reader, up_writer), self._pump(up_reader, writer)):
            handle = asyncio.ensure_future(task)
            self._tasks.add(handle)
            handle.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()


async def slow_store(suite: Suite) -> Verdict:
    proxy = DelayProxy(suite.valkey.port)
    port = await proxy.start()
    try:
        gateway = await asyncio.to_thread(
            suite.start_gateway,
            "gateway-slow-store",
            suite.config(),
            f"redis://127.0.0.1:{port}/0",
        )
        phases = []
        for delay in (0.01, 0.1):
            proxy.delay_s = delay
            phases.append(await _load(suite, 6, gateway=gateway))
        await asyncio.to_thread(gateway.server.stop)
    finally:
        await proxy.aclose()
    tally = Tally()
    for phase in phases:
        tally.extend(phase)
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    verdict.check("p99 < 1.5 s", tally.latency(0.99) < 1.5)
    verdict.note(
        "+20 ms round trip: "
        f"p50 {phases[0].latency(0.5) * 1000:.0f} ms, p99 {phases[0].latency(0.99) * 1000:.0f} ms;"
        " +200 ms round trip: "
        f"p50 {phases[1].latency(0.5) * 1000:.0f} ms, p99 {phases[1].latency(0.99) * 1000:.0f} ms"
    )
    return verdict


GROUP = "store"
SCENARIOS = [
    Scenario("store-sigkill", GROUP, "Valkey SIGKILL, restarted empty 3 s later", sigkill_restart),
    Scenario("store-sigstop", GROUP, "Valkey frozen (SIGSTOP) for 10 s", sigstop),
    Scenario("store-garbage", GROUP, "garbage values and wrong types at cache keys", garbage),
    Scenario("store-maxmemory", GROUP, "maxmemory 2 MB: LRU eviction, then OOM", maxmemory),
    Scenario("store-slow", GROUP, "+20 ms, then +200 ms per store round trip", slow_store),
]
