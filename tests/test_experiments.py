"""Experiments end to end: real uvicorn, the simulator, a real Redis-protocol server.

What counts as a sample, the comparison it leads to, feedback, and figures shared by
several gateway instances."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml

from tests.harness import (
    BASE,
    TUNED,
    Gateway,
    Simulator,
    free_port,
    gateway_config,
    running_gateway,
    simulator_with,
    task_config,
)
from tests.testkit.outcomes import sample
from tests.testkit.redis_server import RedisServer, redis_server
from tunegate.auth import hash_key
from tunegate.commands import cli
from tunegate.experiments.recorder import (
    AGGREGATE_TTL_S,
    MAX_PENDING,
    REQUEST_TTL_S,
    Experiments,
)
from tunegate.state.store import Store

# Models the scenario's "*" entry answers, always with valid JSON.
PERFECT_TUNED = "ft:perfect-model:acme::1"
PERFECT_BASE = "perfect-base-model"
BREAKAGES = {"invalid_json": 1, "missing_field": 1, "wrong_enum": 1}
KEYS = {
    "admin": {"tenant": "acme", "admin": True},
    "acme": {"tenant": "acme", "admin": False},
    "globex": {"tenant": "globex", "admin": False},
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    scenario = {
        "seed": 11,
        "models": {
            TUNED: {"quality": {"valid": 0.98, "breakages": BREAKAGES}},
            BASE: {"quality": {"valid": 0.85, "breakages": BREAKAGES}},
            "*": {},
        },
    }
    with simulator_with(scenario, tmp_path_factory.mktemp("scenario")) as simulator:
        yield simulator


def perfect_task(**kw: Any) -> dict[str, Any]:
    task = task_config(**kw)
    task["variants"]["tuned"]["model"] = PERFECT_TUNED
    task["variants"]["few_shot"]["model"] = PERFECT_BASE
    return task


def config_with_keys(sim: Simulator, tasks: dict[str, Any]) -> dict[str, Any]:
    keys = [
        {"name": name, "sha256": hash_key(f"key-{name}"), "tasks": ["*"], **spec}
        for name, spec in KEYS.items()
    ]
    return gateway_config(sim.url, tasks, auth={"keys": keys})


# One client for the module: building one per request (its TLS context) costs ~50 ms.
HTTP = httpx.Client(timeout=10)


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer key-{name}"}


def ask(
    gw: Gateway, task: str, text: str | None = None, key: str = "admin", **headers: str
) -> httpx.Response:
    body = {"input": text or f"I was charged twice (ticket {uuid.uuid4().hex[:8]})"}
    return HTTP.post(f"{gw.url}/v1/tasks/{task}", json=body, headers={**auth(key), **headers})


def experiments(gw: Gateway, task: str, key: str = "admin") -> httpx.Response:
    return HTTP.get(f"{gw.url}/v1/experiments/{task}", headers=auth(key))


def figures(gw: Gateway, task: str) -> dict[str, Any]:
    response = experiments(gw, task)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def feedback(gw: Gateway, body: dict[str, Any], key: str = "acme") -> httpx.Response:
    return HTTP.post(f"{gw.url}/v1/feedback", json=body, headers=auth(key))


def test_finds_the_difference_in_first_try_validity(
    sim: Simulator, server: RedisServer, tmp_path: Path
) -> None:
    tasks = {"triage": task_config(weights={"tuned": 50, "few_shot": 50})}
    config = config_with_keys(sim, tasks)
    with running_gateway(tmp_path, config, redis_url=server.url) as gw:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: ask(gw, "triage").status_code, range(800)))
        assert statuses.count(200) >= 790
        document = figures(gw, "triage")
    tuned, few = document["variants"]["tuned"], document["variants"]["few_shot"]
    assert document["tuned"] == "tuned"
    assert tuned["requests"] + few["requests"] == 800
    assert min(tuned["requests"], few["requests"]) > 300
    assert tuned["first_try_valid"]["value"] > few["first_try_valid"]["value"]
    comparison = document["comparison"]
    assert (comparison["a"], comparison["b"]) == ("tuned", "few_shot")
    valid = comparison["figures"]["first_try_valid"]
    assert valid["p_value"] < 0.01
    low, high = valid["anytime_ci95"]
    assert low < 0.98 - 0.85 < high
    assert valid["ci95"][0] > 0
    assert valid["decision"] == "tuned better"
    assert few["repair_rate"]["value"] > tuned["repair_rate"]["value"]
    assert tuned["latency_s"]["p50"] <= tuned["latency_s"]["p95"]
    assert tuned["cost_usd_per_request"]["value"] > 0
    assert document["decision"]["figures"]["first_try_valid"] == "tuned better"
    assert document["decision"]["status"] in ("recommend", "undecided")
    assert document["break_even"]["few_shot_example_tokens_estimate"] > 0


def test_fallbacks_cache_hits_and_forced_variants(
    sim: Simulator, server: RedisServer, tmp_path: Path
) -> None:
    tasks = {"fb": perfect_task(weights={"tuned": 100, "few_shot": 0})}
    with running_gateway(tmp_path, config_with_keys(sim, tasks), redis_url=server.url) as gw:
        sim.script(PERFECT_TUNED, "quota", "quota")
        served = [ask(gw, "fb").json()["variant"] for _ in range(4)]
        assert served == ["few_shot", "few_shot", "tuned", "tuned"]
        repeated = "The same question, twice."
        assert ask(gw, "fb", repeated).json()["cache"] == "miss"
        assert ask(gw, "fb", repeated).json()["cache"] == "hit"
        forced = ask(gw, "fb", **{"x-tunegate-variant": "few_shot"})
        assert forced.json()["variant"] == "few_shot"
        document = figures(gw, "fb")
    tuned, few = document["variants"]["tuned"], document["variants"]["few_shot"]
    # 4 + the miss; the two fallbacks are failed samples of the chosen variant.
    assert (tuned["requests"], tuned["successes"]) == (5, 3)
    assert few["requests"] == 0
    raw = redis.Redis.from_url(server.url)
    for pattern, ttl_s in (
        ("tunegate:exp:{fb}:*", AGGREGATE_TTL_S),
        ("tunegate:req:*", REQUEST_TTL_S),
    ):
        stored = list(raw.scan_iter(match=pattern))
        assert stored
        assert all(0 < raw.ttl(name) <= ttl_s for name in stored)
    raw.close()


def test_feedback(sim: Simulator, server: RedisServer, tmp_path: Path) -> None:
    tasks = {"fbk": perfect_task(weights={"tuned": 50, "few_shot": 50})}
    with running_gateway(tmp_path, config_with_keys(sim, tasks), redis_url=server.url) as gw:
        answers = [ask(gw, "fbk", key="acme") for _ in range(40)]
        by_variant: dict[str, list[float]] = {"tuned": [], "few_shot": []}
        for i, answer in enumerate(answers):
            variant = answer.json()["variant"]
            score = 1.0 if variant == "tuned" else (0.5 if i % 2 else 0.0)
            request_id = answer.headers["x-request-id"]
            posted = feedback(gw, {"request_id": request_id, "score": score})
            assert posted.status_code == 200, posted.text
            assert posted.json()["variant"] == variant
            by_variant[variant].append(score)
        first = answers[0].headers["x-request-id"]
        again = feedback(gw, {"request_id": first, "score": True})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "feedback_exists"
        unknown = feedback(gw, {"request_id": "no-such-request", "score": 1})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "request_not_found"
        other_tenant = ask(gw, "fbk", key="globex").headers["x-request-id"]
        assert feedback(gw, {"request_id": other_tenant, "score": 1}).status_code == 404
        for bad in (1.5, -0.1, "good", None):
            response = feedback(gw, {"request_id": other_tenant, "score": bad}, key="globex")
            assert response.status_code == 400
            assert response.json()["error"]["param"] == "score"
        stream_body = {
            "model": "fbk",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        with HTTP.stream(
            "POST", f"{gw.url}/v1/chat/completions", json=stream_body, headers=auth("acme")
        ) as streamed:
            assert streamed.status_code == 200
            streamed.read()
        posted = feedback(gw, {"request_id": streamed.headers["x-request-id"], "score": 1})
        assert posted.status_code == 200, posted.text
        by_variant[posted.json()["variant"]].append(1.0)
        forced = ask(gw, "fbk", key="admin", **{"x-tunegate-variant": "tuned"})
        forced_id = forced.headers["x-request-id"]
        assert feedback(gw, {"request_id": forced_id, "score": 0}, key="admin").status_code == 200
        assert experiments(gw, "fbk", key="acme").status_code == 403
        assert experiments(gw, "nope").status_code == 404
        document = figures(gw, "fbk")
    for name, scores in by_variant.items():
        shown = document["variants"][name]["feedback"]
        assert shown["count"] == len(scores)
        assert shown["mean"] == pytest.approx(sum(scores) / len(scores))
    # The forced request's score is shown for its variant but kept out of the comparison.
    assert document["variants"]["tuned"]["feedback_not_sampled"]["count"] == 1
    assert document["variants"]["tuned"]["feedback_not_sampled"]["mean"] == 0
    assert document["comparison"]["figures"]["feedback_score"]["difference"] > 0


def test_two_instances_share_the_figures(
    sim: Simulator,
    server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tasks = {"shared": perfect_task(weights={"tuned": 100, "few_shot": 0})}
    config = config_with_keys(sim, tasks)
    with (
        running_gateway(tmp_path, config, redis_url=server.url) as one,
        running_gateway(tmp_path, config, redis_url=server.url) as two,
    ):
        for _ in range(15):
            assert ask(one, "shared").status_code == 200
            assert ask(two, "shared").status_code == 200
        deadline = time.monotonic() + 5
        while figures(one, "shared")["variants"]["tuned"]["requests"] < 30:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert figures(two, "shared")["variants"]["tuned"]["requests"] == 30
        monkeypatch.setenv("TUNEGATE_API_KEY", "key-admin")
        assert cli.main(["report", "shared", "--url", two.url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["variants"]["tuned"]["requests"] == 30
    # Without a gateway: the store at REDIS_URL and the config file.
    path = tmp_path / "report.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setenv("REDIS_URL", server.url)
    assert cli.main(["report", "shared", "--config", str(path)]) == 0
    table = capsys.readouterr().out
    assert "task shared" in table
    assert re.search(r"samples\s+30\s+0", table)
    assert cli.main(["report", "nope", "--config", str(path)]) == 1


def test_feedback_takes_the_completion_id_and_the_task_native_id(
    sim: Simulator, server: RedisServer, tmp_path: Path
) -> None:
    config = config_with_keys(sim, {"fbk": perfect_task()})
    with running_gateway(tmp_path, config, redis_url=server.url) as gw:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="key-acme", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="fbk", messages=[{"role": "user", "content": "I was charged twice"}]
        )
        completion = raw.parse()
        assert completion.id.startswith("chatcmpl-")
        by_completion_id = feedback(gw, {"request_id": completion.id, "score": 1})
        assert by_completion_id.status_code == 200, by_completion_id.text
        assert by_completion_id.json()["request_id"] == raw.headers["x-request-id"]
        # The same request under its x-request-id: already scored.
        again = feedback(gw, {"request_id": raw.headers["x-request-id"], "score": 0})
        assert again.status_code == 409
        native = ask(gw, "fbk", key="acme").json()["id"]
        assert feedback(gw, {"request_id": native, "score": 0.5}).status_code == 200
        unknown = feedback(gw, {"request_id": "chatcmpl-nope", "score": 1})
        assert unknown.status_code == 404
        client.close()


def test_a_store_that_fails_is_an_error_not_zero_figures(
    sim: Simulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_with_keys(sim, {"fresh": task_config()})
    with redis_server() as own, running_gateway(tmp_path, config, redis_url=own.url) as gw:
        empty = figures(gw, "fresh")  # no samples yet: zeros
        assert empty["variants"]["tuned"]["requests"] == 0
        assert empty["decision"]["status"] == "undecided"
        own.kill()
        failed = experiments(gw, "fresh")
        assert failed.status_code == 503
        error = failed.json()["error"]
        assert list(error) == ["message", "type", "param", "code"]  # OpenAI's shape
        assert error["code"] == "not_ready"
        assert "store is unavailable" in error["message"]
        monkeypatch.setenv("TUNEGATE_API_KEY", "key-admin")
        assert cli.main(["report", "fresh", "--url", gw.url]) == 1
        assert "answered 503" in capsys.readouterr().err
    down = f"redis://127.0.0.1:{free_port()}"  # nothing ever listened there
    with running_gateway(tmp_path, config, redis_url=down) as gw:
        assert experiments(gw, "fresh").status_code == 503


def test_report_from_a_stopped_store_exits_1_and_from_an_empty_one_shows_zeros(
    sim: Simulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "report.yaml"
    config = config_with_keys(sim, {"fresh": task_config()})
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with redis_server() as own:
        monkeypatch.setenv("REDIS_URL", own.url)
        assert cli.main(["report", "fresh", "--config", str(path), "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert document["variants"]["tuned"]["requests"] == 0
        assert document["comparison"]["figures"]["success_rate"]["difference"] is None
        own.kill()
        assert cli.main(["report", "fresh", "--config", str(path), "--json"]) == 1
        printed = capsys.readouterr()
        assert printed.out == ""
        assert printed.err == "tunegate report: cannot read the store at REDIS_URL\n"


@pytest.mark.anyio
async def test_a_sample_dropped_for_a_slow_store_is_logged_with_its_request(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(server.url)
    experiments = Experiments(store, flush_s=60.0)  # nothing is written before the end
    outcomes = [sample("dropped") for _ in range(MAX_PENDING + 1)]
    try:
        for outcome in outcomes:
            experiments.record(outcome)
    finally:
        await experiments.drain()
        await store.close()
    [dropped] = [r for r in caplog.records if "dropping a sample" in r.getMessage()]
    assert getattr(dropped, "request_id", None) == outcomes[-1].request_id
    assert getattr(dropped, "task", None) == "dropped"
