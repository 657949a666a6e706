"""Every feature on a Redis Cluster (three primaries) and on Redis Sentinel (one primary,
one replica, three sentinels), started by the tests from the embedded store's binary
(SPEC §10): the cache and single-flight, rpm limits, budgets, experiments, feedback,
capture and shadow pairs. The store fails open, so a command the topology refused (a
CROSSSLOT script) would pass unnoticed: every test also asserts the store logged no error."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis

from tests.harness import (
    BASE,
    TUNED,
    Gateway,
    Simulator,
    gateway_config,
    running_gateway,
    task_config,
)
from tests.redis_topologies import command, redis_cluster, redis_sentinel
from tunegate.auth import hash_key

PRICING = {TUNED: {"input": 3.0, "output": 6.0}, BASE: {"input": 0.5, "output": 1.5}}
KEYS = {"app": "tg-topo-app", "rpm": "tg-topo-rpm", "budget": "tg-topo-budget", "admin": "tg-a"}
RPM = 5
BUDGET_USD = 0.0004


def entry(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "sha256": hash_key(KEYS[name]), "tenant": name, **fields}


def config(sim: Simulator) -> dict[str, Any]:
    split = {"tuned": 50, "few_shot": 50}
    tasks = {
        "triage": task_config(),
        "exp": task_config(weights=split, capture={"rate": 1.0}),
        "shadowed": task_config(routing={"shadow": {"variant": "few_shot", "rate": 1.0}}),
    }
    keys = [
        entry("app"),
        entry("rpm", rpm=RPM),
        entry("budget", daily_budget_usd=BUDGET_USD),
        entry("admin", admin=True),
    ]
    store = {"socket_timeout_ms": 2000}  # this machine's cores are shared by every process
    return gateway_config(sim.url, tasks, pricing=PRICING, auth={"keys": keys}, store=store)


@pytest.fixture(scope="module", params=["cluster", "sentinel"])
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    directory = tmp_path_factory.mktemp(request.param)
    topology = redis_cluster if request.param == "cluster" else redis_sentinel
    with topology(directory) as running:
        yield running.url


@pytest.fixture(scope="module")
def gw(
    sim: Simulator, store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with running_gateway(
        tmp_path_factory.mktemp("gw"), config(sim), redis_url=store_url
    ) as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def no_store_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING, logger="tunegate.store")
    yield
    errors = [r.getMessage() for r in caplog.records if r.name == "tunegate.store"]
    assert errors == [], errors


def ask(gw: Gateway, key: str, text: str, task: str = "triage", **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {KEYS[key]}"},
        json={"model": task, "messages": [{"role": "user", "content": text}], **extra},
        timeout=30,
    )


def test_the_cache_and_single_flight(gw: Gateway, sim: Simulator, store_url: str) -> None:
    sim.reset()
    start = threading.Barrier(10)
    text = f"one ticket for {store_url}"

    def send(_: int) -> httpx.Response:
        start.wait()
        return ask(gw, "app", text)

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(send, range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert Counter(a.headers["x-tunegate-cache"] for a in answers) == {"miss": 1, "hit": 9}
    assert len(sim.requests()) == 1
    time.sleep(1.1)  # past the process's local cache (cache.local_ttl_s): from the store
    again = ask(gw, "app", text)
    assert again.headers["x-tunegate-cache"] == "hit" and len(sim.requests()) == 1


def test_rpm_limit(gw: Gateway) -> None:
    answers = [ask(gw, "rpm", f"rpm {i}") for i in range(RPM + 2)]
    assert [a.status_code for a in answers] == [200] * RPM + [429, 429]
    assert answers[-1].json()["error"]["code"] == "rate_limited"


def test_budget(gw: Gateway) -> None:
    spent = Decimal(0)
    while spent < Decimal(str(BUDGET_USD)):
        answer = ask(gw, "budget", f"budget {spent}")
        assert answer.status_code == 200, answer.text
        spent += Decimal(answer.headers["x-tunegate-cost-usd"])
    deadline = time.monotonic() + 5
    while (refused := ask(gw, "budget", "one more")).status_code == 200:
        assert time.monotonic() < deadline, "the spend never reached the budget"
    assert refused.json()["error"]["code"] == "budget_exceeded"


def test_experiments_feedback_and_capture(gw: Gateway) -> None:
    answers = [ask(gw, "app", f"exp {i}", task="exp", user=f"u{i}") for i in range(12)]
    assert [a.status_code for a in answers] == [200] * 12
    served = Counter(a.headers["x-tunegate-variant"] for a in answers)
    for answer in answers:
        scored = httpx.post(
            f"{gw.url}/v1/feedback",
            headers={"authorization": f"Bearer {KEYS['app']}"},
            json={"request_id": answer.headers["x-request-id"], "score": 1},
        )
        assert scored.status_code == 200, scored.text
    admin = {"authorization": f"Bearer {KEYS['admin']}"}
    report = httpx.get(f"{gw.url}/v1/experiments/exp", headers=admin).json()
    variants = report["variants"]
    assert {n: v["requests"] for n, v in variants.items() if v["requests"]} == served
    assert {n: v["feedback"]["count"] for n, v in variants.items() if v["requests"]} == served
    captured = httpx.get(f"{gw.url}/admin/capture/exp", headers=admin)
    assert captured.status_code == 200
    ids = {a.headers["x-request-id"] for a in answers}
    assert {
        line.split('"request_id":')[1].split('"')[1] for line in captured.text.splitlines()
    } == ids


def test_shadow_pairs(gw: Gateway) -> None:
    for i in range(5):
        assert ask(gw, "app", f"shadowed {i}", task="shadowed").status_code == 200
    admin = {"authorization": f"Bearer {KEYS['admin']}"}
    deadline = time.monotonic() + 10
    while True:  # shadow calls run after the answer, in the background
        shadow = httpx.get(f"{gw.url}/v1/experiments/shadowed", headers=admin).json()["shadow"]
        if (shadow or {}).get("calls") == 5:
            break
        assert time.monotonic() < deadline, shadow
        time.sleep(0.05)


def test_the_keys_spread_over_the_cluster(gw: Gateway, store_url: str) -> None:
    if not store_url.startswith("redis+cluster://"):
        pytest.skip("a Sentinel group has one primary")
    sizes = []
    for node in store_url.removeprefix("redis+cluster://").split(","):
        host, port = node.split(":")
        with redis.Redis(host=host, port=int(port)) as client:
            sizes.append(int(command(client, "DBSIZE")))
    assert all(size > 0 for size in sizes), sizes
