"""A slow store is not a down one (SPEC §12 "Store under load"), against a real Redis
behind a proxy that loses replies: a lost reply is `slow` and the limit call is tried
again, so rpm stays exact; 3 failures in a row are `down` (limits follow
`on_store_error`, calls fail at once) until a probe succeeds; `/readyz` and
`tunegate_store_state` show it; the breaker logs its transitions."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Gateway, Simulator, gateway_config, running_gateway, task_config
from tests.slow_proxy import LossyProxy, lossy_proxy
from tests.testkit.redis_server import RedisServer, redis_server
from tunegate.config.compiled import ApiKey
from tunegate.errors import LimitExceeded
from tunegate.state.limits import Limits
from tunegate.state.store import Store, StoreFailure

SOCKET_TIMEOUT_S = 0.05  # the store's default `socket_timeout_ms`


def key(rpm: int) -> ApiKey:
    """A key of its own (its own window), with a limit of `rpm`."""
    return ApiKey("k", uuid.uuid4().hex * 2, "acme", frozenset({"*"}), rpm, None, False)


def state_of(store: Store) -> str:
    """`store.state`, read afresh (mypy would keep it narrowed by an earlier assert)."""
    return store.state


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[LossyProxy]:
    with lossy_proxy(server.port) as running:
        yield running


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(proxy: LossyProxy, clock: Clock) -> AsyncIterator[Store]:
    opened = Store(proxy.url, clock=clock)
    yield opened
    await opened.close()


@pytest.mark.anyio
async def test_a_refusal_whose_reply_came_late_is_still_a_refusal(
    store: Store, proxy: LossyProxy
) -> None:
    limits = Limits(store)
    limited = key(rpm=2)
    await limits.admit(limited, "r1", fail_open=True)
    await limits.admit(limited, "r2", fail_open=True)
    proxy.drop_next_replies(1)  # the refusal of r3 arrives after the socket timeout
    with pytest.raises(LimitExceeded):
        await limits.admit(limited, "r3", fail_open=True)
    assert state_of(store) == "ok"  # slow once, then answered


@pytest.mark.anyio
async def test_an_admission_whose_reply_was_lost_is_counted_once(
    store: Store, proxy: LossyProxy
) -> None:
    limits = Limits(store)
    limited = key(rpm=1)
    # An open connection and the script loaded, so the next reply lost is the script's.
    await limits.admit(key(rpm=1), "warm", fail_open=False)
    proxy.drop_next_replies(1)  # r1 ran on the server; its reply is lost
    await limits.admit(limited, "r1", fail_open=False)  # tried again: admitted, not refused
    with pytest.raises(LimitExceeded):
        await limits.admit(limited, "r2", fail_open=False)


@pytest.mark.anyio
async def test_three_failures_in_a_row_are_down_until_a_probe_succeeds(
    store: Store, proxy: LossyProxy, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    assert await store.set("k", b"v", ttl_s=60)
    caplog.set_level(logging.INFO, logger="tunegate.store")
    proxy.drop_all = True
    assert await store.get_checked("k") == StoreFailure("timeout")
    assert state_of(store) == "slow"
    clock.now += SOCKET_TIMEOUT_S  # one after the other: each a socket timeout later
    assert await store.get_checked("k") == StoreFailure("timeout")
    assert state_of(store) == "slow"
    clock.now += SOCKET_TIMEOUT_S
    assert await store.get_checked("k") == StoreFailure("timeout")
    assert state_of(store) == "down"
    proxy.drop_all = False
    asked = proxy.commands
    assert await store.get_checked("k") == StoreFailure("down")  # not even tried
    assert proxy.commands == asked
    limits = Limits(store)
    await limits.admit(key(rpm=1), "open-1", fail_open=True)  # limits follow on_store_error
    await limits.admit(key(rpm=1), "open-2", fail_open=True)
    assert limits.state([key(rpm=1)], fail_open=True) == "open"
    clock.now += 1.0  # the probe interval: the next call is the probe, and succeeds
    assert await store.get_checked("k") == b"v"
    assert state_of(store) == "ok"
    transitions = [r.getMessage() for r in caplog.records if "->" in getattr(r, "store_event", "")]
    assert transitions == [
        "store slow: a reply took too long",
        "store down (was slow): 3 failures in a row, the last TimeoutError; limits follow "
        "auth.on_store_error until a probe succeeds",
        "store ok again (was down)",
    ]


@pytest.mark.anyio
async def test_timeouts_that_expire_together_are_one_stall_not_an_outage(
    store: Store, proxy: LossyProxy
) -> None:
    """Three batches in flight time out at the same moment (as when the event loop
    stalls): one failure, `slow`, not `down` (where limits would follow on_store_error)."""
    assert await store.set("k", b"v", ttl_s=60)
    proxy.drop_all = True
    in_flight = []
    for _ in range(3):  # one batch per turn of the event loop
        in_flight.append(asyncio.create_task(store.get_checked("k")))
        await asyncio.sleep(0)
    assert await asyncio.gather(*in_flight) == [StoreFailure("timeout")] * 3
    assert state_of(store) == "slow"


@pytest.fixture
def gateway(proxy: LossyProxy, sim: Simulator, tmp_path: Path) -> Iterator[Gateway]:
    config = gateway_config(sim.url, {"triage": task_config()})
    with running_gateway(tmp_path, config, redis_url=proxy.url) as running:
        yield running


def store_state_metric(gw: Gateway) -> dict[str, float]:
    text = httpx.get(f"{gw.url}/metrics").text
    return {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tunegate_store_state{")
    }


def test_readyz_and_the_metric_show_ok_slow_and_down(
    gateway: Gateway, proxy: LossyProxy, server: RedisServer
) -> None:
    assert httpx.get(f"{gateway.url}/readyz").json()["store"] == "ok"
    assert store_state_metric(gateway) == {"ok": 1.0, "slow": 0.0, "down": 0.0}
    proxy.drop_next_replies(1)  # the readiness probe's own PING comes too late
    assert httpx.get(f"{gateway.url}/readyz").json()["store"] == "slow"
    # (A scrape reads the store first, which answers: the metric would say ok again.)
    proxy.drop_all = True
    for _ in range(3):
        ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200 and ready.json()["store"] == "down"
    assert store_state_metric(gateway) == {"ok": 0.0, "slow": 0.0, "down": 1.0}
    proxy.drop_all = False
    assert httpx.get(f"{gateway.url}/readyz").json()["store"] == "ok"
    assert store_state_metric(gateway)["ok"] == 1.0
