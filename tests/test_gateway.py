"""The request flow end to end: real uvicorn, the simulator, the official openai SDK.

Variants, streams, retries, Retry-After, fallback, deadline and the 502 body."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.harness import (
    BASE,
    TUNED,
    Gateway,
    Simulator,
    gateway_config,
    running_gateway,
    task_config,
    wait_until,
)
from tests.openai_shapes import checked_client, checked_sdk

HTTP = checked_client(timeout=10)
SECRET = "sk-upstream-secret"


@pytest.fixture(autouse=True)
def fresh(sim: Simulator) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def gw(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tasks = {
        "triage": task_config(),
        "triage-few": task_config(weights={"tuned": 0, "few_shot": 100}),
        "reply": task_config(
            output={"type": "text"}, allow_params=["temperature"], weights={"tuned": 100}
        ),
        "slow": task_config(deadline_s=1.5, routing={"retries": 3}),
    }
    with running_gateway(tmp_path_factory.mktemp("gw"), gateway_config(sim.url, tasks)) as gateway:
        yield gateway


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return checked_sdk(f"{gw.url}/v1", "caller-key")


def ask(
    client: openai.OpenAI, task: str, text: str | None = None, **kw: object
) -> openai.types.chat.ChatCompletion:
    # A fresh prompt each time unless given: the cache would answer a repeated one.
    text = text or f"I was charged twice! (ticket {uuid.uuid4().hex[:8]})"
    raw = client.chat.completions.with_raw_response.create(
        model=task,
        messages=[{"role": "user", "content": text}],
        **kw,  # type: ignore[call-overload]
    )
    completion: openai.types.chat.ChatCompletion = raw.parse()
    ask.headers = raw.headers  # type: ignore[attr-defined]
    return completion


def last_headers() -> httpx.Headers:
    headers: httpx.Headers = ask.headers  # type: ignore[attr-defined]
    return headers


def test_json_task_answers_valid_json_with_every_header(
    client: openai.OpenAI, sim: Simulator
) -> None:
    completion = ask(client, "triage", "I was charged twice!")
    assert json.loads(completion.choices[0].message.content or "") == {
        "category": "billing",
        "priority": "high",
    }
    headers = last_headers()
    assert headers["x-tunegate-task"] == "triage"
    assert headers["x-tunegate-variant"] == "tuned"
    assert headers["x-tunegate-model"] == TUNED
    assert headers["x-tunegate-cache"] in ("miss", "bypass")
    assert headers["x-tunegate-json"] == "valid"
    assert float(headers["x-tunegate-cost-usd"]) > 0
    assert "e" not in headers["x-tunegate-cost-usd"]
    assert len(headers["x-request-id"]) >= 16
    assert "x-tunegate-fallback" not in headers
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    # The upstream saw the variant's prompt before the caller's turn.
    [received] = sim.requests(TUNED)
    assert received["messages"][0] == {
        "role": "system",
        "content": "Classify the support ticket as JSON.",
    }
    assert received["messages"][-1] == {"role": "user", "content": "I was charged twice!"}


def test_few_shot_variant_carries_its_examples(client: openai.OpenAI, sim: Simulator) -> None:
    ask(client, "triage-few")
    assert last_headers()["x-tunegate-variant"] == "few_shot"
    [received] = sim.requests(BASE)
    roles = [m["role"] for m in received["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert sim.requests(TUNED) == []


@pytest.mark.parametrize("task", ["triage", "triage-few", "reply"])
def test_streams_end_with_usage_and_done(client: openai.OpenAI, gw: Gateway, task: str) -> None:
    stream = client.chat.completions.create(
        model=task,
        messages=[{"role": "user", "content": "My login is broken"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    if task != "reply":
        assert set(json.loads(text)) == {"category", "priority"}
    with HTTP.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        json={"model": task, "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-tunegate-task"] == task
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_forced_variant_is_served(client: openai.OpenAI) -> None:
    ask(client, "triage", extra_headers={"x-tunegate-variant": "few_shot"})
    assert last_headers()["x-tunegate-variant"] == "few_shot"


def test_forcing_an_unknown_variant_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "triage", extra_headers={"x-tunegate-variant": "nope"})
    assert caught.value.param == "x-tunegate-variant"


def test_a_500_is_retried_on_the_same_variant(client: openai.OpenAI, sim: Simulator) -> None:
    sim.script(TUNED, "500")
    ask(client, "triage")
    assert last_headers()["x-tunegate-variant"] == "tuned"
    assert "x-tunegate-fallback" not in last_headers()
    assert len(sim.requests(TUNED)) == 2


def test_an_input_the_model_refuses_is_the_callers_400_without_fallback(
    client: openai.OpenAI, gw: Gateway, sim: Simulator
) -> None:
    def samples() -> int:
        document = HTTP.get(f"{gw.url}/v1/experiments/triage").json()
        return int(document["variants"]["tuned"]["requests"])

    before = samples()
    sim.script(TUNED, "400")  # the simulator's 400 is context_length_exceeded
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "triage")
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    assert caught.value.response.headers["x-request-id"]
    assert len(sim.requests(TUNED)) == 1 and sim.requests(BASE) == []
    assert samples() == before
    sim.script(TUNED, "400")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="reply", messages=[{"role": "user", "content": "long"}], stream=True
        )
    assert caught.value.code == "context_length_exceeded"
    assert sim.requests(BASE) == []


def test_a_502_after_429s_passes_on_the_shortest_retry_after(
    tmp_path: Path, sim: Simulator
) -> None:
    tasks = {"impatient": task_config(deadline_s=10, routing={"retries": 0})}
    with running_gateway(tmp_path, gateway_config(sim.url, tasks)) as gateway:
        sim.script(TUNED, "429:7")
        sim.script(BASE, "429:3")
        body = {"model": "impatient", "messages": [{"role": "user", "content": "hi"}]}
        response = HTTP.post(f"{gateway.url}/v1/chat/completions", json=body)
        assert response.status_code == 502
        assert response.headers["retry-after"] == "3"
        assert response.headers["x-should-retry"] == "true"
        # Waits beyond the deadline help no retry: none is passed on.
        sim.script(TUNED, "429:30")
        sim.script(BASE, "429:20")
        response = HTTP.post(f"{gateway.url}/v1/chat/completions", json=body)
        assert response.status_code == 502 and "retry-after" not in response.headers


def test_max_tokens_too_small_for_the_schema_says_so_once_per_variant(
    client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        ask(client, "triage", max_tokens=3)
    assert caught.value.status_code == 502 and caught.value.code == "invalid_output"
    message = caught.value.message
    assert "max_tokens 3" in message
    assert "tuned: tuned" not in message and "few_shot: few_shot" not in message


def test_insufficient_quota_is_not_retried_and_falls_back(
    client: openai.OpenAI, sim: Simulator
) -> None:
    sim.script(TUNED, "quota")
    ask(client, "triage")
    headers = last_headers()
    assert headers["x-tunegate-variant"] == "few_shot"
    assert headers["x-tunegate-fallback"] == "tuned"
    assert len(sim.requests(TUNED)) == 1
    assert len(sim.requests(BASE)) == 1


def test_an_answer_beyond_max_tokens_is_a_failed_attempt_never_parsed(
    client: openai.OpenAI, sim: Simulator
) -> None:
    sim.script(TUNED, "huge", "huge")  # 4 MiB answers, whatever max_tokens says
    # A repair of megabytes would hold the event loop for seconds: the client gives up.
    completion = ask(client, "triage", timeout=5.0)
    headers = last_headers()
    assert headers["x-tunegate-variant"] == "few_shot"
    assert headers["x-tunegate-fallback"] == "tuned"
    assert json.loads(completion.choices[0].message.content or "")["category"]
    assert len(completion.choices[0].message.content or "") < 1000
    assert len(sim.requests(TUNED)) == 2  # the attempt and its retry


def test_a_stream_beyond_max_tokens_falls_back(client: openai.OpenAI, sim: Simulator) -> None:
    sim.script(TUNED, "huge", "huge")
    raw = client.chat.completions.with_raw_response.create(
        model="reply", messages=[{"role": "user", "content": "Hallo"}], stream=True
    )
    assert raw.headers["x-tunegate-variant"] == "few_shot"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert 0 < len(text) < 10_000


# How long each wait is: test_gateway_unit.py, on a controlled clock.
def test_retry_after_is_waited_when_it_fits(client: openai.OpenAI, sim: Simulator) -> None:
    sim.script(TUNED, "429:1")
    ask(client, "triage")
    assert last_headers()["x-tunegate-variant"] == "tuned"
    assert len(sim.requests(TUNED)) == 2


def test_retry_after_beyond_the_deadline_moves_to_the_fallback(
    client: openai.OpenAI, sim: Simulator
) -> None:
    sim.script(TUNED, "429:30")
    ask(client, "slow", timeout=10.0)  # a wait of 30 s would time the client out
    assert last_headers()["x-tunegate-variant"] == "few_shot"
    assert last_headers()["x-tunegate-fallback"] == "tuned"


def test_a_hang_ends_in_504_within_the_deadline(client: openai.OpenAI, sim: Simulator) -> None:
    sim.script(TUNED, *["hang"] * 5)
    sim.script(BASE, *["hang"] * 5)
    with pytest.raises(openai.APIStatusError) as caught:
        ask(client, "slow", timeout=10.0)  # without the deadline: a client timeout
    assert caught.value.status_code == 504
    assert caught.value.code == "deadline_exceeded"
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_every_variant_failing_is_a_502_without_secrets(
    client: openai.OpenAI, sim: Simulator
) -> None:
    sim.script(TUNED, "503", "503")
    sim.script(BASE, "401")
    with pytest.raises(openai.APIStatusError) as caught:
        ask(client, "triage")
    response = caught.value.response
    assert response.status_code == 502
    body = response.json()
    assert body["error"]["code"] == "upstream_error"
    assert body["error"]["type"] == "api_error"
    assert "tuned" in body["error"]["message"] and "few_shot" in body["error"]["message"]
    assert SECRET not in response.text and "caller-key" not in response.text
    assert response.headers["x-should-retry"] == "true"
    assert "x-request-id" in response.headers


def test_text_stream_falls_back_before_its_first_chunk(
    client: openai.OpenAI, sim: Simulator
) -> None:
    sim.script(TUNED, "quota")
    raw = client.chat.completions.with_raw_response.create(
        model="reply", messages=[{"role": "user", "content": "Hallo"}], stream=True
    )
    assert raw.headers["x-tunegate-variant"] == "few_shot"
    assert raw.headers["x-tunegate-fallback"] == "tuned"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)


def test_allowed_caller_parameters_reach_the_upstream(
    client: openai.OpenAI, sim: Simulator
) -> None:
    ask(client, "reply", temperature=0.7, max_tokens=1000, seed=3)
    [received] = sim.requests(TUNED)
    assert received["temperature"] == 0.7
    assert received["max_tokens"] == 64  # clamped to the task's
    assert received["seed"] == 3


def test_task_endpoint_returns_the_parsed_output(gw: Gateway) -> None:
    response = HTTP.post(f"{gw.url}/v1/tasks/triage", json={"input": "The app crashes, urgent!"})
    assert response.status_code == 200
    body = response.json()
    assert body["output"] == {"category": "bug", "priority": "high"}
    assert body["variant"] == "tuned" and body["model"] == TUNED and body["task"] == "triage"
    assert body["usage"]["prompt_tokens"] > 0 and body["cost_usd"] > 0
    assert body["fallback_from"] is None


def test_models_lists_the_tasks(client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list()} == {"triage", "triage-few", "reply", "slow"}


def test_health_and_readiness(gw: Gateway) -> None:
    assert HTTP.get(f"{gw.url}/healthz").status_code == 200
    ready = HTTP.get(f"{gw.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_weights_zero_and_hundred_through_http(tmp_path: Path, sim: Simulator) -> None:
    tasks = {
        "all-tuned": task_config(weights={"tuned": 100, "few_shot": 0}),
        "all-few": task_config(weights={"tuned": 0, "few_shot": 100}),
    }
    with running_gateway(tmp_path, gateway_config(sim.url, tasks)) as gateway:
        client = checked_sdk(f"{gateway.url}/v1", "k")
        for task, variant in (("all-tuned", "tuned"), ("all-few", "few_shot")):
            seen = set()
            for i in range(20):
                ask(client, task, f"ticket {i}")
                seen.add(last_headers()["x-tunegate-variant"])
            assert seen == {variant}


def test_sticky_user_keeps_the_variant_through_http(tmp_path: Path, sim: Simulator) -> None:
    tasks = {
        "split": task_config(weights={"tuned": 50, "few_shot": 50}, routing={"sticky": "user"})
    }
    with running_gateway(tmp_path, gateway_config(sim.url, tasks)) as gateway:
        client = checked_sdk(f"{gateway.url}/v1", "k")
        first = {}
        for i in range(40):
            ask(client, "split", f"t{i}", user=f"user-{i}")
            first[i] = last_headers()["x-tunegate-variant"]
        for i in range(40):
            ask(client, "split", f"again {i}", user=f"user-{i}")
            assert last_headers()["x-tunegate-variant"] == first[i]
        assert set(first.values()) == {"tuned", "few_shot"}


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "text stream"])
def test_a_client_that_goes_away_cancels_its_upstream_call(
    tmp_path: Path, sim: Simulator, stream: bool
) -> None:
    # A text task streams from the upstream; a JSON task's stream waits for the answer.
    tasks = {"patient": task_config(deadline_s=30, output={"type": "text"} if stream else None)}
    with running_gateway(tmp_path, gateway_config(sim.url, tasks)) as gateway:
        sim.script(TUNED, "hang")
        body = {"model": "patient", "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(httpx.TimeoutException):
            HTTP.post(
                f"{gateway.url}/v1/chat/completions", json={**body, "stream": stream}, timeout=0.5
            )
        # Without the cancellation the request would sit in flight for its 30 s deadline.
        assert wait_until(
            lambda: "tunegate_in_flight_requests 0.0" in HTTP.get(f"{gateway.url}/metrics").text
        )
        assert len(sim.requests(TUNED)) == 1  # and it was not retried either
