"""Several instances on one store agree (SPEC §10): three `tunegate serve` processes on one
Redis behind HAProxy, every request balanced anew. rpm limits are exact across instances,
budgets are shared, 50 identical concurrent misses spread over all three make one upstream
call, a sticky unit gets the same variant whichever instance answers, and the experiment
totals (and feedback) equal what was sent."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.fleet import Fleet, gateway_fleet, haproxy_or_skip
from tests.harness import BASE, TUNED, Simulator, gateway_config, simulator_with, task_config
from tests.testkit.redis_server import RedisServer
from tunegate.auth import hash_key
from tunegate.config.compiled import load_config
from tunegate.state.limits import budget_key

LATENCY_MS = 150  # every upstream answer: long enough for 50 misses to overlap
PRICING = {TUNED: {"input": 3.0, "output": 6.0}, BASE: {"input": 0.5, "output": 1.5}}
RPM = 30
KEYS = {
    "rpm": "tg-rpm-key",
    "budget": "tg-budget-key",
    "plain": "tg-plain-key",
    "admin": "tg-admin",
}
BUDGET_USD = 0.0006
WEAK = "gpt-3.5-turbo-weak"  # the adaptive task's worse variant: 30 % valid first time


ADAPTIVE = {"metric": "first_try_valid", "min_samples": 30, "floor": 0.1}


def key_entry(name: str, **limits: Any) -> dict[str, Any]:
    return {"name": name, "sha256": hash_key(KEYS[name]), "tenant": name, **limits}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    haproxy_or_skip()
    weak = {"latency_ms": LATENCY_MS, "quality": {"valid": 0.3, "valid_with_examples": 0.3}}
    scenario = {
        "models": {
            TUNED: {"latency_ms": LATENCY_MS},
            BASE: {"latency_ms": LATENCY_MS},
            WEAK: weak,
        }
    }
    with simulator_with(scenario, tmp_path_factory.mktemp("sim")) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def config_path(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = {"tuned": 50, "few_shot": 50}
    tasks = {
        "triage": task_config(),
        "sticky": task_config(weights=split, routing={"sticky": "user"}),
        "exp": task_config(weights=split),
        "adaptive": task_config(routing={"weights": split, "adaptive": ADAPTIVE}),
    }
    tasks["adaptive"]["variants"]["few_shot"]["model"] = WEAK
    keys = [
        key_entry("rpm", rpm=RPM),
        key_entry("budget", daily_budget_usd=BUDGET_USD),
        key_entry("plain"),
        key_entry("admin", admin=True),
    ]
    # A generous store timeout: this machine's cores are shared by every process of the
    # test, and a cache lookup slower than the timeout is a miss (SPEC §3), so the 50
    # identical misses would no longer share one upstream call.
    store = {"socket_timeout_ms": 2000}
    config = gateway_config(sim.url, tasks, pricing=PRICING, auth={"keys": keys}, store=store)
    path = tmp_path_factory.mktemp("fleet") / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def fleet(
    config_path: Path, server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    with gateway_fleet(config_path, server.url, tmp_path_factory.mktemp("logs")) as running:
        yield running


def ask(fleet: Fleet, key: str, text: str, task: str = "triage", **body: Any) -> httpx.Response:
    return httpx.post(
        f"{fleet.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {KEYS[key]}"},
        json={"model": task, "messages": [{"role": "user", "content": text}], **body},
        timeout=30,
    )


def in_parallel(calls: int, send: Any, threads: int = 50) -> list[httpx.Response]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(send, range(calls)))


def test_rpm_is_exact_across_instances(fleet: Fleet) -> None:
    sent = RPM + 15
    answers = in_parallel(sent, lambda i: ask(fleet, "rpm", f"rpm ticket {i}"), threads=15)
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {200: RPM, 429: sent - RPM}
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 429} == {"rate_limited"}
    assert {a.headers["x-served-by"] for a in answers} == {"g0", "g1", "g2"}


def test_a_budget_is_shared_by_every_instance(
    fleet: Fleet, config_path: Path, server: RedisServer
) -> None:
    (key,) = [k for k in load_config(config_path).keys if k.name == "budget"]
    spend_key = budget_key(key, time.time())
    store = redis.Redis.from_url(server.url, decode_responses=True)
    budget, spent, served_by = Decimal(str(BUDGET_USD)), Decimal(0), set[str]()
    while spent < budget:  # every request is admitted while the shared spend is below it
        answer = ask(fleet, "budget", f"budget ticket {len(served_by)} {spent}")
        assert answer.status_code == 200, answer.text
        served_by.add(answer.headers["x-served-by"])
        spent += Decimal(answer.headers["x-tunegate-cost-usd"])
        # The charge is written after the answer: wait for it, as a caller's next request
        # on the same instance would.
        deadline = time.monotonic() + 5
        while Decimal(str(store.get(spend_key) or "0")) < spent - Decimal("1e-9"):
            assert time.monotonic() < deadline, "the charge never reached the store"
            time.sleep(0.01)
    store.close()
    assert len(served_by) > 1  # the spend was charged by several instances
    refusals = [ask(fleet, "budget", f"over budget {i}") for i in range(3)]
    assert [r.status_code for r in refusals] == [429] * 3
    assert {r.json()["error"]["code"] for r in refusals} == {"budget_exceeded"}
    assert {r.headers["x-served-by"] for r in refusals} == {"g0", "g1", "g2"}


def test_50_identical_concurrent_misses_make_one_upstream_call(
    fleet: Fleet, sim: Simulator
) -> None:
    sim.reset()
    start = threading.Barrier(50)

    def send(_: int) -> httpx.Response:
        start.wait()
        return ask(fleet, "plain", "The same ticket, fifty times at once.")

    answers = in_parallel(50, send)
    assert [a.status_code for a in answers] == [200] * 50
    assert len({a.json()["choices"][0]["message"]["content"] for a in answers}) == 1
    assert Counter(a.headers["x-tunegate-cache"] for a in answers) == {"miss": 1, "hit": 49}
    assert {a.headers["x-served-by"] for a in answers} == {"g0", "g1", "g2"}
    assert len(sim.requests()) == 1


def test_a_sticky_unit_gets_one_variant_on_every_instance(fleet: Fleet) -> None:
    seen: dict[str, set[str]] = {}
    instances: dict[str, set[str]] = {}
    for user in range(10):
        for i in range(3):
            answer = ask(fleet, "plain", f"sticky {user} {i}", task="sticky", user=f"u{user}")
            assert answer.status_code == 200, answer.text
            seen.setdefault(f"u{user}", set()).add(answer.headers["x-tunegate-variant"])
            instances.setdefault(f"u{user}", set()).add(answer.headers["x-served-by"])
    assert all(len(variants) == 1 for variants in seen.values()), seen
    assert all(len(served) == 3 for served in instances.values()), instances
    assert set().union(*seen.values()) == {"tuned", "few_shot"}


def test_experiment_totals_and_feedback_equal_what_was_sent(fleet: Fleet) -> None:
    sent = 60
    answers = in_parallel(sent, lambda i: ask(fleet, "plain", f"exp {i}", task="exp"), 12)
    assert [a.status_code for a in answers] == [200] * sent
    served = Counter(a.headers["x-tunegate-variant"] for a in answers)
    assert {a.headers["x-served-by"] for a in answers} == {"g0", "g1", "g2"}
    # Feedback through the balancer: mostly on another instance than the one that answered.
    for answer in answers:
        scored = httpx.post(
            f"{fleet.url}/v1/feedback",
            headers={"authorization": f"Bearer {KEYS['plain']}"},
            json={"request_id": answer.headers["x-request-id"], "score": 1},
        )
        assert scored.status_code == 200, scored.text
    admin = {"authorization": f"Bearer {KEYS['admin']}"}
    deadline = time.monotonic() + 10
    while True:
        report = httpx.get(f"{fleet.url}/v1/experiments/exp", headers=admin).json()
        variants = report["variants"]
        counted = {name: v["requests"] for name, v in variants.items() if v["requests"]}
        feedback = {name: v["feedback"]["count"] for name, v in variants.items() if v["requests"]}
        if (counted == served and feedback == served) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert counted == served
    assert feedback == served


def weights(metrics: str, task: str) -> dict[str, float]:
    found = {}
    for line in metrics.splitlines():
        if line.startswith(f'tunegate_experiment_weight{{task="{task}",'):
            variant = line.split('variant="')[1].split('"')[0]
            found[variant] = float(line.rsplit(" ", 1)[1])
    return found


def test_an_adaptive_split_is_the_same_on_every_instance(fleet: Fleet) -> None:
    """SPEC §12: instances agree on an adaptive split within one refresh period; a scrape
    refreshes it at once, so each instance's /metrics shows the split of the same figures."""
    answers = in_parallel(120, lambda i: ask(fleet, "plain", f"adaptive {i}", task="adaptive"))
    assert [a.status_code for a in answers] == [200] * 120
    assert {a.headers["x-served-by"] for a in answers} == {"g0", "g1", "g2"}
    admin = {"authorization": f"Bearer {KEYS['admin']}"}
    deadline = time.monotonic() + 10
    while True:  # every instance's batch of samples written (they flush every 20 ms)
        report = httpx.get(f"{fleet.url}/v1/experiments/adaptive", headers=admin).json()
        if sum(v["requests"] for v in report["variants"].values()) == 120:
            break
        assert time.monotonic() < deadline, report["variants"]
        time.sleep(0.05)
    splits = [weights(httpx.get(f"{url}/metrics").text, "adaptive") for url in fleet.instances]
    assert splits[0] == splits[1] == splits[2], splits
    assert splits[0]["tuned"] > 0.5  # moved from 50/50 towards the better variant
