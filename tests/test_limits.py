"""Per-key limits: the budget day arithmetic, the admit script against a real server, and
rpm and budgets through two gateway instances sharing one Redis."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import (
    BASE,
    TUNED,
    Gateway,
    Simulator,
    gateway_config,
    running_gateway,
    task_config,
)
from tests.openai_shapes import checked_client
from tests.testkit.redis_server import RedisServer, redis_server
from tunegate.auth import hash_key
from tunegate.config.compiled import ApiKey
from tunegate.errors import LimitExceeded, Unavailable
from tunegate.records import Outcome, UpstreamCall
from tunegate.state.embedded import free_port
from tunegate.state.limits import (
    BUDGET_GRACE_S,
    Limits,
    budget_day,
    budget_key,
    decision_of,
    is_limited,
    seconds_until_reset,
    window_key,
)
from tunegate.state.store import Store


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# -- pure arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2024, 3, 9, 23, 59, 59), 1.0),
        (utc(2024, 3, 10), 86_400.0),  # just reset: a whole day to go
        (utc(2024, 3, 10) + 0.25, 86_399.75),
        (utc(2024, 6, 30, 12), 43_200.0),
        (utc(2024, 12, 31, 23), 3_600.0),  # into next year
    ],
)
def test_budgets_reset_at_the_next_midnight_utc(now: float, expected: float) -> None:
    assert seconds_until_reset(now) == pytest.approx(expected)


@given(st.integers(min_value=0, max_value=4_102_444_800))
def test_now_plus_the_wait_is_always_a_utc_midnight(now: int) -> None:
    wait = seconds_until_reset(now)
    assert 0 < wait <= 86_400
    reset = datetime.fromtimestamp(now + wait, UTC)
    assert (reset.hour, reset.minute, reset.second) == (0, 0, 0)
    assert reset - datetime.fromtimestamp(now, UTC) <= timedelta(days=1)


def test_the_budget_day_is_the_utc_date() -> None:
    assert budget_day(utc(2024, 3, 9, 23, 59, 59) + 0.999) == "2024-03-09"
    assert budget_day(utc(2024, 3, 10)) == "2024-03-10"


class Millis:
    """The rate window's clock, in ms, set by the test."""

    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


def api_key(name: str = "k", rpm: int | None = None, budget: float | None = None) -> ApiKey:
    return ApiKey(
        name=name,
        sha256=hash_key(f"key-{name}"),
        tenant="t",
        tasks=frozenset({"*"}),
        rpm=rpm,
        daily_budget_usd=budget,
        admin=False,
    )


def test_store_keys_are_prefixed_and_name_the_digest_never_the_key() -> None:
    key = api_key(budget=1)
    assert window_key(key) == "tunegate:limit:{" + key.sha256 + "}"
    assert budget_key(key, utc(2024, 3, 9, 12)) == f"tunegate:budget:{{{key.sha256}}}:2024-03-09"
    assert "key-k" not in window_key(key) + budget_key(key, 0)


def test_only_keys_with_a_limit_are_checked() -> None:
    assert not is_limited(None)
    assert not is_limited(api_key())
    assert is_limited(api_key(rpm=1))
    assert is_limited(api_key(budget=0.5))


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([0, 0], (0, 0.0)),
        ([1, 1500], (1, 1.5)),
        ([2, 0], (2, 0.0)),
        (None, None),
        (b"\x00\x00", None),
        ([1], None),
        ([b"1", 0], None),
        ([7, 0], None),
    ],
)
def test_script_replies_other_than_a_verdict_count_as_a_failed_store(
    reply: object, expected: tuple[int, float] | None
) -> None:
    assert decision_of(reply) == expected


# -- the scripts against a real server ---------------------------------------------------


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[Store]:
    opened = Store(server.url)
    yield opened
    await opened.close()


def outcome(request_id: str, cost_usd: float, key: ApiKey | None = None) -> Outcome:
    return Outcome(
        request_id=request_id,
        task="triage",
        tenant="acme",
        chosen="tuned",
        served="tuned",
        served_model=TUNED,
        sample=True,
        status="ok",
        cache="miss",
        cache_lookup="miss",
        seconds=0.1,
        calls=(UpstreamCall("tuned", TUNED, 0.1, 10, 5, cost_usd),),
        key_digest=key.sha256 if key else None,
    )


@pytest.mark.anyio
async def test_the_window_admits_rpm_requests_and_names_the_exact_wait(
    store: Store, raw: redis.Redis
) -> None:
    now = Millis()
    limits = Limits(store, window_ms=1_000, window_clock=now)
    key = api_key(rpm=3)
    for i in range(3):  # admitted at 0, 300 and 600 ms
        now.ms = 300 * i
        await limits.admit(key, f"r{i}", fail_open=True)
    with pytest.raises(LimitExceeded) as caught:
        await limits.admit(key, "r3", fail_open=True)
    refused = caught.value
    assert (refused.status, refused.code, refused.should_retry) == (429, "rate_limited", True)
    assert refused.retry_after_s == 0.4  # when the first admission leaves the window
    assert refused.headers["retry-after-ms"] == "400"
    assert raw.zcard(window_key(key)) == 3  # refusals take no slot

    now.ms = 999
    with pytest.raises(LimitExceeded) as caught:
        await limits.admit(key, "r4", fail_open=True)
    assert caught.value.retry_after_s == 0.001
    now.ms = 1_000
    await limits.admit(key, "r5", fail_open=True)  # the first left: one slot, just in time
    with pytest.raises(LimitExceeded) as caught:
        await limits.admit(key, "r6", fail_open=True)
    assert caught.value.retry_after_s == 0.3  # the second (300 ms) leaves next
    assert 0 < raw.pttl(window_key(key)) <= 1_000


@pytest.mark.anyio
async def test_a_lowered_rpm_waits_until_enough_admissions_have_left(
    store: Store, raw: redis.Redis
) -> None:
    now = Millis()
    limits = Limits(store, window_ms=2_000, window_clock=now)
    for i in range(4):
        now.ms = 200 * i
        await limits.admit(api_key(rpm=4), f"r{i}", fail_open=True)
    # Admitted at 0, 200, 400 and 600 ms; at 800 a reload cut the key to 2: a slot
    # frees when only one is left, once the third (400 ms) has left at 2,400 ms.
    now.ms = 800
    with pytest.raises(LimitExceeded) as caught:
        await limits.admit(api_key(rpm=2), "after-reload", fail_open=True)
    assert caught.value.retry_after_s == 1.6


@pytest.mark.anyio
async def test_a_request_over_budget_is_refused_until_midnight_and_takes_no_rate_slot(
    store: Store, raw: redis.Redis
) -> None:
    limits = Limits(store)
    key = api_key(rpm=5, budget=0.01)
    other = api_key("other", budget=0.01)
    record = limits.recorder({k.sha256: k for k in (key, other)})
    await limits.admit(key, "first", fail_open=True)
    record(outcome("first", 0.004, key))
    record(outcome("open-mode", 0.5))  # no key: nobody's budget
    record(outcome("by-other", 0.5, other))  # another key's budget
    record(outcome("unknown", 0.5, api_key("removed-on-reload", budget=1)))
    await limits.admit(key, "second", fail_open=True)  # 0.004 spent of 0.01
    record(outcome("second", 0.007, key))
    with pytest.raises(LimitExceeded) as caught:
        await limits.admit(key, "third", fail_open=True)
    refused = caught.value
    assert (refused.code, refused.should_retry) == ("budget_exceeded", False)
    assert refused.retry_after_s == pytest.approx(seconds_until_reset(time.time()), abs=2)
    assert "0.01 USD" in refused.message
    assert raw.zcard(window_key(key)) == 2
    spent_key = budget_key(key, time.time())
    assert float(raw.get(spent_key) or 0) == pytest.approx(0.011)
    await limits.aclose()
    assert float(raw.get(budget_key(other, time.time())) or 0) == pytest.approx(0.5)
    assert len(raw.keys("tunegate:budget:*")) == 2  # a key not in the config: no spend
    ttl = raw.ttl(spent_key)
    assert (
        seconds_until_reset(time.time())
        < ttl
        <= seconds_until_reset(time.time()) + (BUDGET_GRACE_S + 1)
    )


@pytest.mark.anyio
async def test_free_answers_and_keys_without_a_budget_write_no_spend(
    store: Store, raw: redis.Redis
) -> None:
    limits = Limits(store)
    budgeted = api_key("budgeted", budget=1)
    rate_only = api_key("rate-only", rpm=10)
    record = limits.recorder({k.sha256: k for k in (budgeted, rate_only)})
    await limits.admit(budgeted, "hit", fail_open=True)
    record(outcome("hit", 0.0, budgeted))  # a cache hit
    await limits.admit(rate_only, "paid", fail_open=True)
    record(outcome("paid", 0.3, rate_only))
    await limits.aclose()
    assert raw.keys("tunegate:budget:*") == []
    assert raw.keys("tunegate:limit:*") == [window_key(rate_only).encode()]


@pytest.mark.anyio
async def test_an_unreachable_store_fails_open_or_closed_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tunegate.limits")
    store = Store(f"redis://127.0.0.1:{free_port()}")  # nothing listens there
    limits = Limits(store)
    try:
        keys = [api_key("free"), api_key("limited", rpm=1)]
        await limits.admit(keys[0], "free", fail_open=False)
        assert store.state == "ok"  # a key without limits never asked the store
        assert limits.state(keys, fail_open=True) == "ok"
        for i in range(5):
            await limits.admit(keys[1], f"open-{i}", fail_open=True)
        assert limits.state(keys, fail_open=True) == "open"
        for i in range(5):
            with pytest.raises(Unavailable) as caught:
                await limits.admit(keys[1], f"closed-{i}", fail_open=False)
        assert (caught.value.status, caught.value.code) == (503, "limits_unavailable")
        assert caught.value.should_retry is True
        assert limits.state(keys, fail_open=False) == "closed"
        assert limits.state(keys[:1], fail_open=False) == "off"
    finally:
        await store.close()
    lines = [r for r in caplog.records if r.name == "tunegate.limits"]
    assert len(lines) == 1
    assert "store unreachable" in lines[0].getMessage()


# -- through the gateway ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh(sim: Simulator) -> None:
    sim.reset()


def keyed(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "sha256": hash_key(f"key-{name}"), "tenant": name, **fields}


def limited_config(sim: Simulator, *keys: dict[str, Any], **top: Any) -> dict[str, Any]:
    tasks = {
        "triage": task_config(),
        "reply": task_config(output={"type": "text"}),
    }
    # 0.001 USD a token, so a few requests cross a small budget.
    pricing = {TUNED: {"input": 1000, "output": 1000}, BASE: {"input": 1000, "output": 1000}}
    return gateway_config(sim.url, tasks, auth={"keys": list(keys)}, pricing=pricing, **top)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    # One client for the module: building one (its TLS context) takes ~60 ms.
    with checked_client(timeout=10) as client:
        yield client


def ask(
    http: httpx.Client, gw: Gateway, name: str, task: str = "triage", **body: Any
) -> httpx.Response:
    text = f"My invoice is wrong ({uuid.uuid4().hex[:8]})"
    return http.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": task, "messages": [{"role": "user", "content": text}], **body},
        headers={"authorization": f"Bearer key-{name}"},
    )


def test_two_instances_share_one_rate_window(
    sim: Simulator, server: RedisServer, raw: redis.Redis, tmp_path: Path, http: httpx.Client
) -> None:
    # The subject is the shared window, not a slow store (the fault suite's): a reply
    # delayed past the default 50 ms by a busy machine must not fail the limits open.
    config = limited_config(
        sim, keyed("busy", rpm=60), keyed("other", rpm=60), store={"socket_timeout_ms": 2000}
    )
    with (
        running_gateway(tmp_path, config, redis_url=server.url) as first,
        running_gateway(tmp_path, config, redis_url=server.url) as second,
        ThreadPoolExecutor(max_workers=10) as pool,
    ):
        instances = [first, second]
        responses = list(pool.map(lambda i: ask(http, instances[i % 2], "busy"), range(100)))
        accepted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        # All 100 arrive within the minute: exactly the 60 the window holds get through.
        assert len(accepted) == 60
        assert {r.headers["x-request-id"] for r in accepted}
        assert len(sim.requests()) == 60
        for response in refused:
            assert response.status_code == 429
            assert response.json()["error"]["code"] == "rate_limited"
            assert response.json()["error"]["type"] == "rate_limit_error"
            assert response.headers["x-should-retry"] == "true"
            assert 1 <= int(response.headers["retry-after"]) <= 60
            assert 0 < int(response.headers["retry-after-ms"]) <= 60_000
        # Both instances refused some: the window is shared, not per process.
        assert {r.url.port for r in refused} == {first.port, second.port}
        # Another key has its own window.
        assert ask(http, second, "other").status_code == 200
        assert raw.zcard(window_key(api_key("busy"))) == 60
        for gateway in instances:
            assert http.get(f"{gateway.url}/readyz").json()["limits"] == "ok"


def test_a_budget_crossed_by_upstream_cost_is_refused_on_every_instance(
    sim: Simulator, server: RedisServer, tmp_path: Path, http: httpx.Client
) -> None:
    config = limited_config(sim, keyed("thrifty", daily_budget_usd=0.1))
    with (
        running_gateway(tmp_path, config, redis_url=server.url) as first,
        running_gateway(tmp_path, config, redis_url=server.url) as second,
    ):
        spent = 0.0
        served = 0
        while spent < 0.1:
            response = ask(http, first, "thrifty")
            assert response.status_code == 200, response.text
            spent += float(response.headers["x-tunegate-cost-usd"])
            served += 1
        assert served >= 2  # the budget was crossed by spending, not by one request
        for gateway in (first, second):
            refused = ask(http, gateway, "thrifty")
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "budget_exceeded"
            assert refused.headers["x-should-retry"] == "false"
            until_midnight = seconds_until_reset(time.time())
            assert abs(int(refused.headers["retry-after"]) - until_midnight) <= 2
        assert len(sim.requests()) == served  # refusals never reached the upstream


def test_failed_and_streamed_requests_are_charged_what_they_cost(
    sim: Simulator, server: RedisServer, raw: redis.Redis, tmp_path: Path, http: httpx.Client
) -> None:
    config = limited_config(sim, keyed("payer", daily_budget_usd=100))
    spent_key = budget_key(api_key("payer"), time.time())
    with running_gateway(tmp_path, config, redis_url=server.url) as gateway:
        # Every attempt answers broken JSON: re-asks and fallback cost money, then 502.
        sim.script(TUNED, "prose", "prose")
        sim.script(BASE, "prose", "prose")
        failed = ask(http, gateway, "payer")
        assert failed.status_code == 502
        assert failed.json()["error"]["code"] == "invalid_output"
        cost = float(failed.headers["x-tunegate-cost-usd"])
        assert cost > 0
        assert wait_for_spend(raw, spent_key, cost) == pytest.approx(cost, abs=1e-6)

        with http.stream(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            json={
                "model": "reply",
                "messages": [{"role": "user", "content": "Write me a haiku"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers={"authorization": "Bearer key-payer"},
        ) as streamed:
            assert streamed.status_code == 200
            events = [line for line in streamed.iter_lines() if '"cost_usd"' in line]
        [usage] = events
        stream_cost = float(json.loads(usage.removeprefix("data: "))["cost_usd"])
        assert stream_cost > 0
        total = cost + stream_cost
        assert wait_for_spend(raw, spent_key, total) == pytest.approx(total, abs=1e-6)


def wait_for_spend(raw: redis.Redis, key: str, expected: float) -> float:
    deadline = time.monotonic() + 2
    spent = 0.0
    while time.monotonic() < deadline:
        spent = float(raw.get(key) or 0)
        if spent >= expected - 1e-9:
            break
        time.sleep(0.02)
    return spent


def test_a_redis_outage_lets_limited_keys_through_or_refuses_them_as_configured(
    sim: Simulator, tmp_path: Path, http: httpx.Client
) -> None:
    keys = (keyed("metered", rpm=1, daily_budget_usd=1), keyed("free"))
    with redis_server() as down:
        open_config = limited_config(sim, *keys)
        closed_config = limited_config(sim, *keys)
        closed_config["auth"]["on_store_error"] = "closed"
        with (
            running_gateway(tmp_path, open_config, redis_url=down.url) as fail_open,
            running_gateway(tmp_path, closed_config, redis_url=down.url) as fail_closed,
        ):
            down.kill()
            for _ in range(3):  # rpm 1, yet nothing can count: all go through
                assert ask(http, fail_open, "metered").status_code == 200
            assert http.get(f"{fail_open.url}/readyz").json()["limits"] == "open"
            refused = ask(http, fail_closed, "metered")
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "limits_unavailable"
            assert refused.headers["x-should-retry"] == "true"
            assert refused.headers["retry-after"] == "1"
            # A key without limits never asks the store, so closed limits do not touch it.
            assert ask(http, fail_closed, "free").status_code == 200
            ready = http.get(f"{fail_closed.url}/readyz")
            assert ready.status_code == 200 and ready.json()["limits"] == "closed"
            down.restart()
            # The store is down until a probe succeeds: /readyz's ping is one.
            assert http.get(f"{fail_closed.url}/readyz").json()["limits"] == "ok"
            assert ask(http, fail_closed, "metered").status_code == 200
