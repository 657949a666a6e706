"""The response cache end to end (SPEC §3 Cache, §7 Cache hits): real uvicorn, the
simulator, a real Redis-protocol server the tests kill, freeze and fill with garbage, and
the official openai SDK.

What a caller sees on a miss and on a hit, what the upstream received, what Redis holds
(every key with a TTL, never an invalid answer), single-flight, and failing open."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml
from openai._legacy_response import LegacyAPIResponse
from openai.types.chat import ChatCompletion

from tests.harness import (
    BASE,
    TUNED,
    Gateway,
    Simulator,
    gateway_config,
    running_gateway,
    simulator_with,
    task_config,
    wait_until,
)
from tests.openai_shapes import (
    checked_async_client,
    checked_async_sdk,
    checked_client,
    checked_sdk,
)
from tests.testkit.redis_server import RedisServer, redis_server
from tunegate.auth import hash_key
from tunegate.config.compiled import load_config
from tunegate.state.cache import KEY_PREFIX, LOCK_PREFIX, Cache, Entry, Write, cache_key_for
from tunegate.state.store import Store

# The model of the `crowd` task: slow enough that 50 concurrent requests overlap.
SLOW = "gpt-4o-mini"
SLOW_MS = 300
TTL_S = 600
REPLY_TTL_S = 120
# Headers that may differ between a miss and its hit; `date` is the server's clock.
# content-length too: a hit's body has no `system_fingerprint` (SPEC §12).
FRESH_HEADERS = {
    "x-tunegate-cache",
    "x-request-id",
    "x-tunegate-cost-usd",
    "date",
    "content-length",
}


HTTP = checked_client(timeout=10)


def tasks() -> dict[str, Any]:
    crowd = task_config()
    crowd["variants"]["tuned"]["model"] = SLOW
    return {
        "triage": task_config(cache={"ttl_s": TTL_S}),
        "sticky": task_config(routing={"sticky": "user"}, cache={"ttl_s": TTL_S}),
        "reply": task_config(output={"type": "text"}, cache={"ttl_s": REPLY_TTL_S}),
        "crowd": crowd,
        # The one task with the in-process tier on; the module's default turns it off.
        "hot": task_config(cache={"ttl_s": TTL_S, "local_ttl_s": 60}),
    }


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    scenario = {"models": {SLOW: {"latency_ms": SLOW_MS}, "*": {}}}
    with simulator_with(scenario, tmp_path_factory.mktemp("scenario")) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def config(sim: Simulator) -> dict[str, Any]:
    # These tests are about Redis: the in-process tier is off but for the `hot` task.
    defaults = {"cache": {"ttl_s": 86400, "local_ttl_s": 0}}
    return gateway_config(sim.url, tasks(), defaults=defaults)


@pytest.fixture(scope="module")
def gw(
    config: dict[str, Any], server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gw"), config, redis_url=server.url) as gateway:
        yield gateway


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the gateway's Redis, to look at (and spoil) what it stored."""
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def fresh(sim: Simulator, raw: redis.Redis) -> None:
    sim.reset()
    raw.flushall()


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    with checked_sdk(f"{gw.url}/v1", "caller-key") as opened:
        yield opened


def ticket() -> str:
    """A prompt no earlier test asked, so no entry answers it by accident."""
    return f"I was charged twice! (ticket {uuid.uuid4().hex[:8]})"


def ask(
    client: openai.OpenAI, task: str, text: str, **kw: Any
) -> LegacyAPIResponse[ChatCompletion]:
    return client.chat.completions.with_raw_response.create(
        model=task, messages=[{"role": "user", "content": text}], **kw
    )


def cache_of(response: LegacyAPIResponse[ChatCompletion] | httpx.Response) -> str:
    return response.headers["x-tunegate-cache"]


def cost_of(response: LegacyAPIResponse[ChatCompletion] | httpx.Response) -> float:
    return float(response.headers["x-tunegate-cost-usd"])


def content_of(response: LegacyAPIResponse[ChatCompletion]) -> str:
    return response.parse().choices[0].message.content or ""


def keys(raw: redis.Redis, pattern: str = "tunegate:*") -> list[bytes]:
    """The keys matching `pattern` once every single-flight lock is gone: a leader saves
    its entry and releases its lock in one script, sent as its answer leaves."""
    assert wait_until(lambda: not list(raw.scan_iter(match=LOCK_PREFIX + "*")))
    return list(raw.scan_iter(match=pattern))


def stream_sse(gw: Gateway, task: str, text: str) -> tuple[httpx.Headers, list[str]]:
    """A streamed request read as raw SSE: the headers and the non-empty lines."""
    body = {
        "model": task,
        "messages": [{"role": "user", "content": text}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with HTTP.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return response.headers, [line for line in response.iter_lines() if line]


def sse_content(lines: list[str]) -> str:
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def sse_cost(lines: list[str]) -> float:
    usage = json.loads(lines[-2].removeprefix("data: "))
    assert usage["usage"]["completion_tokens"] > 0
    return float(usage["cost_usd"])


# -- hits and misses ---------------------------------------------------------------------


def test_a_repeat_is_a_hit_equal_but_for_id_created_request_id_and_cost(
    client: openai.OpenAI, sim: Simulator
) -> None:
    text = ticket()
    miss = ask(client, "triage", text)
    hit = ask(client, "triage", text)
    assert (cache_of(miss), cache_of(hit)) == ("miss", "hit")
    assert cost_of(miss) > 0
    assert hit.headers["x-tunegate-cost-usd"] == "0"
    assert hit.headers["x-request-id"] != miss.headers["x-request-id"]
    first, second = miss.http_response.json(), hit.http_response.json()
    assert second["id"] != first["id"]
    for body in (first, second):
        del body["id"], body["created"]
    # The upstream's fingerprint describes the call that made the answer (SPEC §12).
    assert first.pop("system_fingerprint") and "system_fingerprint" not in second
    assert second == first
    assert json.loads(first["choices"][0]["message"]["content"]) == {
        "category": "billing",
        "priority": "high",
    }

    def kept(response: LegacyAPIResponse[ChatCompletion]) -> dict[str, str]:
        return {k: v for k, v in response.headers.items() if k not in FRESH_HEADERS}

    assert kept(hit) == kept(miss)
    assert "x-tunegate-json" in kept(hit)  # the compared set covers the gateway's headers
    assert len(sim.requests()) == 1


def test_variants_never_share_entries(client: openai.OpenAI, sim: Simulator) -> None:
    text = ticket()
    for variant, model in (("tuned", TUNED), ("few_shot", BASE)):
        forced = {"extra_headers": {"x-tunegate-variant": variant}}
        miss = ask(client, "triage", text, **forced)
        assert cache_of(miss) == "miss"
        assert miss.headers["x-tunegate-variant"] == variant
        hit = ask(client, "triage", text, **forced)
        assert cache_of(hit) == "hit"
        assert hit.headers["x-tunegate-variant"] == variant
        assert hit.headers["x-tunegate-model"] == model
        assert len(sim.requests(model)) == 1
    assert len(sim.requests()) == 2


def test_a_fallback_answer_is_stored_under_the_serving_variant(
    client: openai.OpenAI, sim: Simulator
) -> None:
    sim.script(TUNED, "quota")
    text = ticket()
    served = ask(client, "triage", text)
    assert served.headers["x-tunegate-variant"] == "few_shot"
    assert served.headers["x-tunegate-fallback"] == "tuned"
    forced = ask(client, "triage", text, extra_headers={"x-tunegate-variant": "few_shot"})
    assert cache_of(forced) == "hit"
    # The router's choice, tuned, has no entry of its own: it is asked now.
    chosen = ask(client, "triage", text)
    assert cache_of(chosen) == "miss"
    assert chosen.headers["x-tunegate-variant"] == "tuned"
    assert len(sim.requests(TUNED)) == 2
    assert len(sim.requests(BASE)) == 1


# -- the key -------------------------------------------------------------------------------


def key(tenant: str | None, **changes: Any) -> str:
    parts: dict[str, Any] = {
        "task": "triage",
        "fingerprint": "f" * 40,
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"temperature": 0.5, "seed": 3},
    }
    return cache_key_for(tenant=tenant, **{**parts, **changes})


def test_the_key_separates_tenants_unless_the_scope_is_shared() -> None:
    assert key("acme") != key("globex")
    assert key("acme") == key("acme")
    assert key(None) == key(None)
    assert key(None) not in (key("acme"), key("globex"))
    assert key("acme").startswith(KEY_PREFIX)


def test_the_key_covers_variant_messages_and_parameters_but_not_their_order() -> None:
    assert key("acme", fingerprint="e" * 40) != key("acme")
    assert key("acme", task="other") != key("acme")
    assert key("acme", messages=[{"role": "user", "content": "hi!"}]) != key("acme")
    assert key("acme", params={"temperature": 0.7, "seed": 3}) != key("acme")
    assert key("acme", params={"seed": 3, "temperature": 0.5}) == key("acme")
    assert key("acme", messages=[{"content": "hi", "role": "user"}]) == key("acme")


def test_user_metadata_and_store_are_not_part_of_the_key(
    client: openai.OpenAI, sim: Simulator
) -> None:
    text = ticket()
    assert cache_of(ask(client, "sticky", text, user="alice")) == "miss"
    for extra in (
        {"user": "bob"},
        {"metadata": {"source": "web"}},
        {"store": True},
        {"user": "carol", "metadata": {"source": "mail"}},
    ):
        response = ask(client, "sticky", text, **extra)
        assert cache_of(response) == "hit", extra
    assert len(sim.requests()) == 1


def test_caller_parameters_are_part_of_the_key(client: openai.OpenAI, sim: Simulator) -> None:
    text = ticket()
    assert cache_of(ask(client, "triage", text, seed=1)) == "miss"
    assert cache_of(ask(client, "triage", text, seed=2)) == "miss"
    assert cache_of(ask(client, "triage", text, seed=1)) == "hit"
    assert len(sim.requests()) == 2


def tenant_client(gw: Gateway, tenant: str) -> openai.OpenAI:
    return checked_sdk(f"{gw.url}/v1", f"key-{tenant}")


def test_tenants_share_entries_only_under_scope_shared(
    sim: Simulator, server: RedisServer, tmp_path: Path
) -> None:
    keys_config = [
        {"name": name, "sha256": hash_key(f"key-{name}"), "tenant": name}
        for name in ("acme", "globex")
    ]
    tasks = {
        "private": task_config(),
        "public": task_config(cache={"scope": "shared"}),
    }
    config = gateway_config(sim.url, tasks, auth={"keys": keys_config})
    with (
        running_gateway(tmp_path, config, redis_url=server.url) as gateway,
        tenant_client(gateway, "acme") as acme,
        tenant_client(gateway, "globex") as globex,
    ):
        text = ticket()
        assert cache_of(ask(acme, "private", text)) == "miss"
        assert cache_of(ask(globex, "private", text)) == "miss"
        assert cache_of(ask(globex, "private", text)) == "hit"
        assert len(sim.requests()) == 2
        assert cache_of(ask(acme, "public", text)) == "miss"
        assert cache_of(ask(globex, "public", text)) == "hit"
        assert len(sim.requests()) == 3


def test_the_stored_key_is_the_one_cache_key_for_derives(
    client: openai.OpenAI, config: dict[str, Any], raw: redis.Redis, tmp_path: Path
) -> None:
    text = ticket()
    ask(client, "triage", text)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    task = load_config(path).tasks["triage"]
    expected = cache_key_for(
        tenant="open",  # open mode: every caller is the `open` tenant
        task="triage",
        fingerprint=task.variants["tuned"].fingerprint,
        messages=[{"role": "user", "content": text}],
        params={},
    )
    assert keys(raw, KEY_PREFIX + "*") == [expected.encode()]


# -- what Redis holds --------------------------------------------------------------------


def test_every_key_carries_a_ttl_within_the_tasks(
    client: openai.OpenAI, gw: Gateway, raw: redis.Redis
) -> None:
    for _ in range(3):
        text = ticket()
        ask(client, "triage", text)
        ask(client, "triage", text, extra_headers={"x-tunegate-variant": "few_shot"})
        ask(client, "sticky", text, user="dora")
    # Cache entries only: experiment keys have TTLs of their own (test_experiments.py).
    stored = keys(raw, KEY_PREFIX + "*")
    assert len(stored) == 9
    for name in stored:
        assert 0 < raw.ttl(name) <= TTL_S, name
    raw.flushall()
    for _ in range(2):
        stream_sse(gw, "reply", ticket())
        ask(client, "reply", ticket(), extra_headers={"cache-control": "no-cache"})
    stored = keys(raw, KEY_PREFIX + "*")
    assert len(stored) == 4
    for name in stored:
        assert 0 < raw.ttl(name) <= REPLY_TTL_S, name


def test_single_flight_locks_are_released(client: openai.OpenAI, raw: redis.Redis) -> None:
    ask(client, "triage", ticket())
    assert keys(raw, LOCK_PREFIX + "*") == []
    assert len(keys(raw, KEY_PREFIX + "*")) == 1


def entry_with(**changes: object) -> bytes:
    """A stored entry that is whole but for `changes`."""
    entry = {
        "variant": "tuned",
        "content": '{"category": "other", "priority": "low"}',
        "parsed": {"category": "other", "priority": "low"},
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.001,
        "json_status": "valid",
    }
    return json.dumps({**entry, **changes}).encode()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xffnot json",
        b'{"variant": "tuned"}',
        b"[1, 2, 3]",
        b'"a string"',
        entry_with(content=None),
        entry_with(variant=["tuned"]),
        entry_with(json_status=5),
        entry_with(prompt_tokens="many"),
        "a list",
    ],
)
def test_garbage_at_a_key_is_a_miss_then_overwritten(
    client: openai.OpenAI, sim: Simulator, raw: redis.Redis, garbage: bytes | str
) -> None:
    text = ticket()
    first = ask(client, "triage", text)
    [name] = keys(raw, KEY_PREFIX + "*")
    if isinstance(garbage, bytes):
        raw.set(name, garbage, ex=TTL_S)
    else:  # a key of another type: GET fails with WRONGTYPE
        raw.delete(name)
        raw.rpush(name, b"x")
    spoiled = ask(client, "triage", text)
    assert spoiled.http_response.status_code == 200
    assert cache_of(spoiled) == "miss"
    assert cost_of(spoiled) > 0
    assert content_of(spoiled) == content_of(first)
    assert len(sim.requests()) == 2
    value = raw.get(name)
    assert isinstance(value, bytes)
    stored = json.loads(value)
    assert stored["variant"] == "tuned"
    assert stored["content"] == content_of(first)
    assert 0 < raw.ttl(name) <= TTL_S
    assert cache_of(ask(client, "triage", text)) == "hit"
    assert len(sim.requests()) == 2


# -- cache-control ---------------------------------------------------------------------


def test_no_cache_skips_the_lookup_but_stores(
    client: openai.OpenAI, sim: Simulator, raw: redis.Redis
) -> None:
    text = ticket()
    no_cache = {"extra_headers": {"cache-control": "no-cache"}}
    for upstream_calls in (1, 2):
        response = ask(client, "triage", text, **no_cache)
        assert cache_of(response) == "bypass"
        assert cost_of(response) > 0
        assert len(sim.requests()) == upstream_calls
    assert len(keys(raw, KEY_PREFIX + "*")) == 1
    assert cache_of(ask(client, "triage", text)) == "hit"
    assert len(sim.requests()) == 2


def test_no_store_neither_reads_nor_writes(
    client: openai.OpenAI, sim: Simulator, raw: redis.Redis
) -> None:
    text = ticket()
    no_store = {"extra_headers": {"cache-control": "no-store"}}
    response = ask(client, "triage", text, **no_store)
    assert cache_of(response) == "bypass"
    assert keys(raw, KEY_PREFIX + "*") == []  # experiment sums are no cache writes
    assert cache_of(ask(client, "triage", text)) == "miss"
    # An entry exists now; no-store still goes upstream.
    response = ask(client, "triage", text, **no_store)
    assert cache_of(response) == "bypass"
    assert cost_of(response) > 0
    assert len(sim.requests()) == 3


# -- streams -----------------------------------------------------------------------------


def test_a_completed_text_stream_is_stored_and_replayed_as_sse(
    gw: Gateway, client: openai.OpenAI, sim: Simulator, raw: redis.Redis
) -> None:
    text = ticket()
    headers, lines = stream_sse(gw, "reply", text)
    assert headers["x-tunegate-cache"] == "miss"
    assert lines[-1] == "data: [DONE]"
    content = sse_content(lines)
    assert content
    assert sse_cost(lines) > 0
    assert len(keys(raw, KEY_PREFIX + "*")) == 1

    headers, lines = stream_sse(gw, "reply", text)
    assert headers["x-tunegate-cache"] == "hit"
    assert headers["x-tunegate-cost-usd"] == "0"
    assert lines[-1] == "data: [DONE]"
    assert sse_content(lines) == content
    assert sse_cost(lines) == 0

    # `stream` is not part of the key: a plain request gets the streamed answer.
    plain = ask(client, "reply", text)
    assert cache_of(plain) == "hit"
    assert content_of(plain) == content
    assert len(sim.requests()) == 1


def test_a_stream_that_broke_off_is_not_stored(
    gw: Gateway, sim: Simulator, raw: redis.Redis
) -> None:
    sim.script(TUNED, "drop")
    text = ticket()
    _, lines = stream_sse(gw, "reply", text)
    assert lines[-1] != "data: [DONE]"
    assert "error" in json.loads(lines[-1].removeprefix("data: "))
    assert keys(raw, KEY_PREFIX + "*") == []
    headers, lines = stream_sse(gw, "reply", text)
    assert headers["x-tunegate-cache"] == "miss"
    assert lines[-1] == "data: [DONE]"
    assert len(sim.requests()) == 2


def test_a_json_stream_after_a_plain_request_is_a_hit(
    gw: Gateway, client: openai.OpenAI, sim: Simulator
) -> None:
    text = ticket()
    plain = ask(client, "triage", text)
    headers, lines = stream_sse(gw, "triage", text)
    assert headers["x-tunegate-cache"] == "hit"
    assert headers["x-tunegate-variant"] == "tuned"
    assert lines[-1] == "data: [DONE]"
    assert sse_content(lines) == content_of(plain)
    assert sse_cost(lines) == 0
    assert len(sim.requests()) == 1


# -- invalid output ----------------------------------------------------------------------


def test_invalid_output_is_never_cached(
    client: openai.OpenAI, sim: Simulator, raw: redis.Redis
) -> None:
    sim.script(TUNED, "prose", "prose")
    sim.script(BASE, "prose", "prose")
    text = ticket()
    with pytest.raises(openai.APIStatusError) as caught:
        ask(client, "triage", text)
    assert caught.value.status_code == 502
    assert caught.value.code == "invalid_output"
    assert keys(raw, KEY_PREFIX + "*") == []
    assert len(sim.requests()) == 4
    retry = ask(client, "triage", text)
    assert cache_of(retry) == "miss"
    assert cost_of(retry) > 0
    assert len(sim.requests()) == 5
    assert cache_of(ask(client, "triage", text)) == "hit"
    assert len(sim.requests()) == 5


# -- single-flight -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_identical_misses_share_one_upstream_call(
    gw: Gateway, sim: Simulator
) -> None:
    text = ticket()
    async with checked_async_sdk(f"{gw.url}/v1", timeout=10) as client:
        responses = await asyncio.gather(
            *(
                client.chat.completions.with_raw_response.create(
                    model="crowd", messages=[{"role": "user", "content": text}]
                )
                for _ in range(50)
            )
        )
    assert len(sim.requests(SLOW)) == 1
    assert len(sim.requests()) == 1
    assert all(r.http_response.status_code == 200 for r in responses)
    contents = {r.parse().choices[0].message.content for r in responses}
    assert len(contents) == 1
    states = sorted(cache_of(r) for r in responses)
    assert states == ["hit"] * 49 + ["miss"]
    [leader] = [r for r in responses if cache_of(r) == "miss"]
    assert cost_of(leader) > 0
    assert all(cost_of(r) == 0 for r in responses if r is not leader)
    assert all(r.headers["x-tunegate-variant"] == "tuned" for r in responses)
    assert len({r.headers["x-request-id"] for r in responses}) == 50


def lookups(gw: Gateway, result: str, task: str = "crowd") -> float:
    """The gateway's `tunegate_cache_lookups_total` for `task` and `result`."""
    text = HTTP.get(f"{gw.url}/metrics").text
    line = f'tunegate_cache_lookups_total{{result="{result}",task="{task}"}} '
    found = [float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)]
    return found[0] if found else 0.0


@pytest.mark.anyio
async def test_a_crowd_arriving_after_the_answer_is_stored_counts_as_hits(
    gw: Gateway, sim: Simulator
) -> None:
    text = ticket()
    [first] = await crowd([gw.url], text, 1)
    assert first.headers["x-tunegate-cache"] == "miss"
    hits, misses = lookups(gw, "hit"), lookups(gw, "miss")
    responses = await crowd([gw.url], text, 20)
    assert [r.headers["x-tunegate-cache"] for r in responses] == ["hit"] * 20
    assert lookups(gw, "hit") == hits + 20
    assert lookups(gw, "miss") == misses
    assert len(sim.requests()) == 1


async def crowd(urls: list[str], text: str, n: int) -> list[httpx.Response]:
    """`n` identical requests for the `crowd` task at once, spread over `urls`."""
    body = {"model": "crowd", "messages": [{"role": "user", "content": text}]}
    async with checked_async_client(timeout=10) as client:
        return await asyncio.gather(
            *(
                client.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body)
                for i in range(n)
            )
        )


@pytest.mark.anyio
async def test_instances_on_one_redis_share_one_upstream_call(
    gw: Gateway, sim: Simulator, config: dict[str, Any], server: RedisServer, tmp_path: Path
) -> None:
    with running_gateway(tmp_path, config, redis_url=server.url) as other:
        responses = await crowd([gw.url, other.url], ticket(), 20)
    assert len(sim.requests()) == 1
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["choices"][0]["message"]["content"] for r in responses}) == 1
    assert sorted(cache_of(r) for r in responses) == ["hit"] * 19 + ["miss"]


def test_a_hot_entry_is_served_from_memory(
    client: openai.OpenAI, sim: Simulator, raw: redis.Redis, gw: Gateway
) -> None:
    text = ticket()
    first = ask(client, "hot", text)
    assert cache_of(first) == "miss"
    [name] = keys(raw, KEY_PREFIX + "*")
    raw.set(name, b"garbage", ex=TTL_S)  # only Redis is spoiled
    held = ask(client, "hot", text)
    assert cache_of(held) == "hit"
    assert content_of(held) == content_of(first)
    assert len(sim.requests()) == 1


@pytest.mark.anyio
async def test_a_local_entry_lasts_its_local_ttl_then_redis_answers(server: RedisServer) -> None:
    clock = Clock()
    store = Store(server.url)
    cache = Cache(store, clock=clock)
    key = KEY_PREFIX + uuid.uuid4().hex
    entry = Entry("tuned", "hello", "hello", "stop", 3, 1, 0.001, None)
    try:
        cache.save(Write(key, entry, TTL_S), local_ttl_s=1.0)
        await store.settle()
        await store.set(key, b"garbage", TTL_S)  # only Redis is spoiled
        clock.now += 0.999
        assert (await cache.lookup(key, 1.0))[:2] == (entry, "hit")
        clock.now += 0.001  # the local TTL is over: Redis's garbage counts as an error
        assert (await cache.lookup(key, 1.0))[:2] == (None, "error")
    finally:
        await store.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("in_flight", "state_at_answer"), [(1, "ok"), (2, "slow")])
async def test_a_leader_alone_answers_before_its_save_lands(
    server: RedisServer, in_flight: int, state_at_answer: str
) -> None:
    """The server freezes while the answer is computed. Serving no other request, the
    leader has its entry back with the store still `ok` (its save under way), and the
    save's timeout is counted (`slow`) only after; with other requests in flight it waits
    for the save, so the timeout is counted before. Either way the entry stays in this
    process's memory."""
    store = Store(server.url)
    cache = Cache(store, busy=lambda: in_flight)
    key = KEY_PREFIX + uuid.uuid4().hex
    entry = Entry("tuned", "hello", "hello", "stop", 3, 1, 0.001, None)

    async def compute() -> Write:
        server.freeze()
        return Write(key, entry, TTL_S)

    try:
        try:
            read = await cache.read_through(key, 5.0, compute, local_ttl_s=1.0)
            assert (read.entry, read.lookup, str(store.state)) == (entry, "miss", state_at_answer)
            await store.settle()
            assert str(store.state) == "slow"
            assert (await cache.lookup(key, 1.0))[:2] == (entry, "hit")
        finally:
            server.thaw()
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_save_sent_to_a_restarted_server_loads_its_script_again(
    server: RedisServer,
) -> None:
    """NOSCRIPT for a save that was not waited for: sent again as EVAL, and stored."""
    store = Store(server.url)
    cache = Cache(store)
    raw = redis.Redis.from_url(server.url)
    key = KEY_PREFIX + uuid.uuid4().hex
    entry = Entry("tuned", "hello", "hello", "stop", 3, 1, 0.001, None)

    async def compute() -> Write:
        raw.script_flush()  # as a restart would
        return Write(key, entry, TTL_S)

    try:
        await cache.read_through(key, 5.0, compute)
        await store.settle()
        stored = raw.get(key)
        assert isinstance(stored, bytes)
        assert Entry.decode(stored) == entry
        assert not list(raw.scan_iter(match=LOCK_PREFIX + "*"))
        assert str(store.state) == "ok"
    finally:
        raw.close()
        await store.close()


# -- failing open ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def own(config: dict[str, Any], tmp_path: Path) -> Iterator[tuple[Gateway, RedisServer]]:
    """A gateway on a Redis of its own, for tests that kill or freeze it."""
    with (
        redis_server() as server,
        running_gateway(tmp_path, config, redis_url=server.url) as gateway,
    ):
        yield gateway, server


def readyz(gw: Gateway) -> Mapping[str, Any]:
    response = HTTP.get(f"{gw.url}/readyz", timeout=3)
    assert response.status_code == 200
    body: Mapping[str, Any] = response.json()
    return body


def post(gw: Gateway, text: str, timeout: float = 10.0) -> httpx.Response:
    body = {"model": "triage", "messages": [{"role": "user", "content": text}]}
    return HTTP.post(f"{gw.url}/v1/chat/completions", json=body, timeout=timeout)


def test_a_killed_redis_is_a_miss_and_a_restarted_one_serves_hits_again(
    own: tuple[Gateway, RedisServer], sim: Simulator
) -> None:
    gw, server = own
    text = ticket()
    assert cache_of(post(gw, text)) == "miss"
    assert cache_of(post(gw, text)) == "hit"
    server.kill()
    for prompt in (text, text, ticket()):
        response = post(gw, prompt)
        assert response.status_code == 200
        assert cache_of(response) == "miss"
        assert cost_of(response) > 0
    assert readyz(gw)["store"] == "down"
    assert len(sim.requests()) == 4

    server.restart()  # empty, on the same port; the gateway is not restarted
    assert readyz(gw)["store"] == "ok"  # its ping is the probe that closes the breaker
    assert cache_of(post(gw, text)) == "miss"
    hit = post(gw, text)
    assert hit.status_code == 200
    assert cache_of(hit) == "hit"
    assert readyz(gw)["store"] == "ok"
    assert len(sim.requests()) == 5


def test_a_frozen_redis_costs_no_more_than_its_socket_timeouts(
    own: tuple[Gateway, RedisServer], sim: Simulator
) -> None:
    gw, server = own
    text = ticket()
    assert cache_of(post(gw, text)) == "miss"
    server.freeze()
    try:
        for prompt in (text, ticket()):
            # A lookup, a lock and a save at 50 ms each, and a zero-latency upstream: a
            # request that waited on the frozen server would time the client out.
            response = post(gw, prompt, timeout=3.0)
            assert response.status_code == 200
            assert cache_of(response) == "miss"
        assert readyz(gw)["store"] == "down"
    finally:
        server.thaw()
    assert post(gw, ticket()).status_code == 200
    assert readyz(gw)["store"] == "ok"
    assert len(sim.requests()) == 4
