"""Failover under load (SPEC §10): 20 callers send requests through a gateway on a Redis
Sentinel group; the primary is SIGKILLed; the sentinels promote the replica. Every request
is answered (while the store is away, as in any outage: cache misses, the callers' rpm
limit open per `auth.on_store_error`), and the gateway writes to the new primary within
5 s of its promotion, measured and printed."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from tests.harness import Simulator, gateway_config, running_gateway, task_config
from tests.redis_topologies import SentinelGroup, redis_sentinel
from tunegate.auth import hash_key

CALLERS = 20
KEY = "tg-failover-caller"
BACK_WITHIN_S = 5.0


def poll(done: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `done` every 10 ms; the monotonic time it first held."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)
    return time.monotonic()


def cache_entries(port: int) -> int:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return len(list(client.scan_iter(match="tunegate:cache:*", count=1000)))
    except redis.RedisError:
        return -1


def test_sigkill_of_the_primary_under_load(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with redis_sentinel(tmp_path / "redis") as group:
        # A key with an rpm limit: its checks follow `auth.on_store_error` (open) meanwhile.
        key = {"name": "caller", "sha256": hash_key(KEY), "tenant": "t", "rpm": 1_000_000}
        config = gateway_config(sim.url, {"triage": task_config()}, auth={"keys": [key]})
        with running_gateway(tmp_path, config, redis_url=group.url) as gw:
            figures = _load_through_failover(gw.url, group)
    statuses, promoted_after_s, back_after_s = figures
    with capsys.disabled():
        print(
            f"\nfailover: promotion {promoted_after_s:.2f} s after SIGKILL; gateway on the new "
            f"primary {back_after_s:.2f} s after the promotion; answers {dict(statuses)}"
        )
    assert statuses == {200: sum(statuses.values())}  # nothing lost, nothing failed
    assert back_after_s <= BACK_WITHIN_S


def _load_through_failover(url: str, group: SentinelGroup) -> tuple[Counter[int], float, float]:
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def caller(n: int) -> None:
        with httpx.Client(timeout=30, headers={"authorization": f"Bearer {KEY}"}) as client:
            i = 0
            while not stop.is_set():
                i += 1
                body = {"model": "triage", "messages": [{"role": "user", "content": f"{n} {i}"}]}
                try:
                    status = client.post(f"{url}/v1/chat/completions", json=body).status_code
                except httpx.HTTPError:
                    status = 0  # a lost request
                with lock:
                    statuses[status] += 1

    old, new = group.primary.port, group.replica.port
    with ThreadPoolExecutor(CALLERS) as pool:
        for n in range(CALLERS):
            pool.submit(caller, n)
        try:
            poll(lambda: cache_entries(old) >= 50, 30, "no cache entry reached the primary")
            killed = time.monotonic()
            group.kill_primary()
            promoted = poll(lambda: group.primary_port() == new, 30, "no promotion")
            baseline = cache_entries(new)
            back = poll(lambda: cache_entries(new) > baseline, 30, "never on the new primary")
            time.sleep(0.5)  # and on for a while on the new primary
        finally:
            stop.set()
    return statuses, promoted - killed, back - promoted
