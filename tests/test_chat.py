"""`POST /v1/chat/completions` on the wire, as OpenAI's clients read it: real uvicorn, the
simulator, the official SDK and httpx, every body and chunk checked against OpenAI's
published description (tests/openai_shapes.py).

Streams end in a usage chunk only when asked; unknown optional fields are left out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

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
)
from tests.openai_shapes import checked_client, checked_sdk

SIM_FINGERPRINT = "fp_tunegate_sim"


@pytest.fixture(autouse=True)
def fresh(sim: Simulator) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def gw(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tasks = {"triage": task_config(), "reply": task_config(output={"type": "text"})}
    with running_gateway(tmp_path_factory.mktemp("gw"), gateway_config(sim.url, tasks)) as gateway:
        yield gateway


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return checked_sdk(f"{gw.url}/v1")


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with checked_client(timeout=10) as client:
        yield client


def ticket() -> str:
    return f"I was charged twice! (ticket {uuid.uuid4().hex[:8]})"


def sse(
    http: httpx.Client, gw: Gateway, body: dict[str, Any]
) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    """A stream read raw: its headers and its chunks (the `[DONE]` end checked)."""
    with http.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return response.headers, [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def streamed(task: str, text: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {"model": task, "messages": messages, "stream": True, **extra}


# -- item 6: the usage chunk only when asked ---------------------------------------------


@pytest.mark.parametrize("task", ["triage", "reply"])
def test_the_standard_consumer_loop_never_meets_empty_choices(
    client: openai.OpenAI, task: str
) -> None:
    stream = client.chat.completions.create(
        model=task, messages=[{"role": "user", "content": ticket()}], stream=True
    )
    # The loop of OpenAI's own examples: an empty `choices` here is an IndexError.
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text


@pytest.mark.parametrize("task", ["triage", "reply"])
@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}])
def test_without_include_usage_no_chunk_carries_usage(
    http: httpx.Client, gw: Gateway, task: str, options: dict[str, Any] | None
) -> None:
    extra = {} if options is None else {"stream_options": options}
    _, chunks = sse(http, gw, streamed(task, ticket(), **extra))
    assert all(chunk["choices"] for chunk in chunks)
    assert all("usage" not in chunk and "cost_usd" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("task", ["triage", "reply"])
def test_include_usage_ends_with_usage_and_cost(http: httpx.Client, gw: Gateway, task: str) -> None:
    body = streamed(task, ticket(), stream_options={"include_usage": True})
    headers, chunks = sse(http, gw, body)
    *content, last = chunks
    assert all(chunk["choices"] for chunk in content)
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert float(last["cost_usd"]) > 0 and "e" not in last["cost_usd"]
    # SPEC §12: the header carries the cost known when it left: all of it for a JSON
    # stream (checked before the first chunk), none yet for a text stream's first try.
    expected = last["cost_usd"] if task == "triage" else "0"
    assert headers["x-tunegate-cost-usd"] == expected


def test_the_sdk_reads_the_usage_chunk_when_asked(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="reply",
        messages=[{"role": "user", "content": ticket()}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_a_cached_stream_with_usage_costs_nothing(http: httpx.Client, gw: Gateway) -> None:
    text = ticket()
    sse(http, gw, streamed("reply", text))
    headers, chunks = sse(http, gw, streamed("reply", text, stream_options={"include_usage": True}))
    assert headers["x-tunegate-cache"] == "hit"
    assert chunks[-1]["choices"] == [] and chunks[-1]["cost_usd"] == "0"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"include_usage": "yes"}, "stream_options.include_usage"),
        ("yes", "stream_options"),
        ({"include_cost": True}, "stream_options.include_cost"),
    ],
)
def test_bad_stream_options_are_a_400(
    http: httpx.Client, gw: Gateway, sim: Simulator, options: Any, param: str
) -> None:
    response = http.post(
        f"{gw.url}/v1/chat/completions", json=streamed("reply", ticket(), stream_options=options)
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert sim.requests() == []


# -- item 14: unknown optional fields are omitted, never null ----------------------------


def test_system_fingerprint_is_the_upstreams_on_a_miss_and_absent_on_a_hit(
    http: httpx.Client, gw: Gateway
) -> None:
    body = {"model": "triage", "messages": [{"role": "user", "content": ticket()}]}
    miss = http.post(f"{gw.url}/v1/chat/completions", json=body)
    assert miss.headers["x-tunegate-cache"] == "miss"
    assert miss.json()["system_fingerprint"] == SIM_FINGERPRINT
    hit = http.post(f"{gw.url}/v1/chat/completions", json=body)
    assert hit.headers["x-tunegate-cache"] == "hit"
    assert "system_fingerprint" not in hit.json()
    assert "service_tier" not in hit.json()
    choice = hit.json()["choices"][0]
    assert choice["logprobs"] is None and choice["message"]["refusal"] is None


@pytest.mark.parametrize("task", ["triage", "reply"])
def test_stream_chunks_carry_the_fingerprint_on_a_miss_only(
    http: httpx.Client, gw: Gateway, task: str
) -> None:
    text = ticket()
    headers, chunks = sse(http, gw, streamed(task, text))
    assert headers["x-tunegate-cache"] == "miss"
    assert {chunk.get("system_fingerprint") for chunk in chunks} == {SIM_FINGERPRINT}
    headers, chunks = sse(http, gw, streamed(task, text))
    assert headers["x-tunegate-cache"] == "hit"
    assert all("system_fingerprint" not in chunk for chunk in chunks)


def test_the_sdk_parses_every_shape_strictly(client: openai.OpenAI, sim: Simulator) -> None:
    # Through the checking transport: a completion, a model list, an error.
    client.chat.completions.create(model="triage", messages=[{"role": "user", "content": "hi"}])
    assert [model.id for model in client.models.list()] == ["triage", "reply"]
    sim.script(TUNED, "401")
    sim.script(BASE, "401")
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model="triage", messages=[{"role": "user", "content": ticket()}]
        )


# -- item 2 and the caller's turns: forwarded as sent, or refused by name ----------------


def post_chat(http: httpx.Client, gw: Gateway, messages: Any, **extra: Any) -> httpx.Response:
    body = {"model": "triage", "messages": messages, **extra}
    return http.post(f"{gw.url}/v1/chat/completions", json=body)


def assert_400(response: httpx.Response, param: str, *words: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    for word in (param, *words):
        assert word in error["message"]
    return str(error["message"])


def test_content_parts_reach_the_upstream_as_parts(
    http: httpx.Client, gw: Gateway, sim: Simulator
) -> None:
    parts = [{"type": "text", "text": "I was charged"}, {"type": "text", "text": "twice"}]
    response = post_chat(http, gw, [{"role": "user", "content": parts}])
    assert response.status_code == 200
    [received] = sim.requests(TUNED)
    assert received["messages"][-1] == {"role": "user", "content": parts}


def test_parts_and_their_glued_text_are_two_cache_entries(
    http: httpx.Client, gw: Gateway, sim: Simulator
) -> None:
    tag = uuid.uuid4().hex[:8]
    parts = [{"type": "text", "text": f"I was charged {tag}"}, {"type": "text", "text": "twice"}]
    glued = f"I was charged {tag}twice"
    for content in (parts, glued, parts):
        response = post_chat(http, gw, [{"role": "user", "content": content}])
        assert response.status_code == 200
    assert response.headers["x-tunegate-cache"] == "hit"
    assert len(sim.requests(TUNED)) == 2


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ],
)
def test_a_part_the_task_cannot_take_is_a_400_naming_it(
    http: httpx.Client, gw: Gateway, sim: Simulator, part: dict[str, Any]
) -> None:
    messages = [
        {"role": "assistant", "content": "How can I help?"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, part]},
    ]
    assert_400(post_chat(http, gw, messages), "messages[1].content[1]", part["type"])
    assert sim.requests() == []


@pytest.mark.parametrize(
    ("message", "param", "word"),
    [
        ({"role": "user", "content": 5}, "messages[0].content", "string"),
        ({"role": "user", "content": []}, "messages[0].content", "non-empty"),
        ({"role": "user", "content": [{"type": "text"}]}, "messages[0].content[0]", "text"),
        ({"role": "user", "content": ["hi"]}, "messages[0].content[0]", "text"),
        ({"role": "tool", "content": "x", "tool_call_id": "c1"}, "messages[0].role", "'tool'"),
        ({"content": "x"}, "messages[0].role", "missing"),
        ({"role": "user", "content": "x", "tool_calls": []}, "messages[0].tool_calls", "user"),
        ({"role": "user", "content": "x", "name": 7}, "messages[0].name", "string"),
        ("hello", "messages[0]", "object"),
    ],
)
def test_a_refused_turn_is_named_in_the_callers_terms(
    http: httpx.Client, gw: Gateway, sim: Simulator, message: Any, param: str, word: str
) -> None:
    text = assert_400(post_chat(http, gw, [message]), param, word)
    # Never the validator's internals (`messages.0.content.str`, `list[TextPart]`).
    assert ".str" not in text and "TextPart" not in text and "union" not in text
    assert sim.requests() == []


def test_a_union_parameter_error_names_the_parameter_only(http: httpx.Client, gw: Gateway) -> None:
    response = post_chat(http, gw, [{"role": "user", "content": "x"}], stop=5)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stop"
    assert "stop.str" not in response.text


def test_a_message_name_is_forwarded(http: httpx.Client, gw: Gateway, sim: Simulator) -> None:
    turn = {"role": "user", "content": ticket(), "name": "alice"}
    assert post_chat(http, gw, [turn]).status_code == 200
    [received] = sim.requests(TUNED)
    assert received["messages"][-1] == turn


# -- item 13: the task-native endpoint takes at least one turn ---------------------------


@pytest.mark.parametrize(
    ("task_input", "param"),
    [([], "input"), ([{"role": "system", "content": "x"}], "input[0].role")],
)
def test_task_input_without_a_caller_turn_is_a_400(
    http: httpx.Client, gw: Gateway, sim: Simulator, task_input: Any, param: str
) -> None:
    response = http.post(f"{gw.url}/v1/tasks/triage", json={"input": task_input})
    assert_400(response, param)
    assert sim.requests() == []


def test_task_input_as_turns_is_forwarded(http: httpx.Client, gw: Gateway, sim: Simulator) -> None:
    turns = [{"role": "user", "content": [{"type": "text", "text": ticket()}]}]
    response = http.post(f"{gw.url}/v1/tasks/triage", json={"input": turns})
    assert response.status_code == 200
    assert sim.requests(TUNED)[0]["messages"][-1] == turns[0]
