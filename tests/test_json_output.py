"""Guaranteed JSON end to end: each kind of broken answer from the simulator, what the
caller gets, the headers, and what the simulator received (the corrective re-ask)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import (
    BASE,
    TRIAGE_SCHEMA,
    TUNED,
    Gateway,
    Simulator,
    gateway_config,
    running_gateway,
    task_config,
)
from tests.openai_shapes import checked_client, checked_sdk
from tunegate.quality.jsonguard import check, compile_schema

HTTP = checked_client(timeout=10)


@pytest.fixture(autouse=True)
def fresh(sim: Simulator) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def gw(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tasks = {
        "triage": task_config(),
        "strict": task_config(routing={"json_retries": 0}),
        "reply": task_config(output={"type": "text"}),
    }
    with running_gateway(tmp_path_factory.mktemp("gw"), gateway_config(sim.url, tasks)) as gateway:
        yield gateway


def ask(gw: Gateway, task: str = "triage") -> httpx.Response:
    ticket = f"The app crashes on start, urgent! ({uuid.uuid4().hex[:8]})"
    return HTTP.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": task, "messages": [{"role": "user", "content": ticket}]},
        timeout=10,
    )


RIGHT = {"category": "bug", "priority": "high"}


@pytest.mark.parametrize(("fault", "status"), [("valid", "valid"), ("fenced", "valid")])
def test_valid_and_fenced_answers_pass_first_time(
    gw: Gateway, sim: Simulator, fault: str, status: str
) -> None:
    sim.script(TUNED, fault)
    response = ask(gw)
    assert response.status_code == 200
    content = response.json()["choices"][0]["message"]["content"]
    assert json.loads(content) == RIGHT
    assert "```" not in content
    assert response.headers["x-tunegate-json"] == status
    assert len(sim.requests(TUNED)) == 1


def test_a_trailing_comma_is_repaired_without_a_reask(gw: Gateway, sim: Simulator) -> None:
    sim.script(TUNED, "trailing_comma")
    response = ask(gw)
    assert response.status_code == 200
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == RIGHT
    assert response.headers["x-tunegate-json"] == "repaired"
    assert len(sim.requests(TUNED)) == 1


@pytest.mark.parametrize(
    ("fault", "mentions"),
    [
        ("missing_field", "required"),
        ("wrong_enum", "enum"),
        ("prose", "not JSON"),
    ],
)
def test_invalid_answers_are_re_asked_with_the_validators_message(
    gw: Gateway, sim: Simulator, fault: str, mentions: str
) -> None:
    sim.script(TUNED, fault)  # the re-ask is answered normally
    response = ask(gw)
    assert response.status_code == 200
    content = response.json()["choices"][0]["message"]["content"]
    assert check(content, compile_schema(TRIAGE_SCHEMA)).status == "valid"
    assert response.headers["x-tunegate-variant"] == "tuned"
    assert response.headers["x-tunegate-json"] == "valid"
    first, reask = sim.requests(TUNED)
    assert reask["messages"][: len(first["messages"])] == first["messages"]
    bad_answer, correction = reask["messages"][-2:]
    assert bad_answer["role"] == "assistant"
    assert correction["role"] == "user"
    assert mentions in correction["content"]


def test_exhausted_reasks_fall_back(gw: Gateway, sim: Simulator) -> None:
    sim.script(TUNED, "wrong_enum", "prose")
    response = ask(gw)
    assert response.status_code == 200
    assert response.headers["x-tunegate-variant"] == "few_shot"
    assert response.headers["x-tunegate-fallback"] == "tuned"
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == RIGHT
    assert len(sim.requests(TUNED)) == 2


def test_all_invalid_is_a_502_invalid_output_naming_path_and_keyword(
    gw: Gateway, sim: Simulator
) -> None:
    sim.script(TUNED, "wrong_enum")
    sim.script(BASE, "missing_field")
    response = ask(gw, "strict")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "invalid_output"
    assert error["type"] == "api_error"
    assert "(enum)" in error["message"]
    assert "(required)" in error["message"]
    assert "crashes" not in error["message"]  # never the prompt or the output text
    assert response.headers["x-should-retry"] == "false"
    assert float(response.headers["x-tunegate-cost-usd"]) > 0


def test_json_mode_sends_response_format(
    tmp_path_factory: pytest.TempPathFactory, sim: Simulator
) -> None:
    task = task_config()
    task["variants"]["tuned"]["json_mode"] = True
    config = gateway_config(sim.url, {"triage": task})
    with running_gateway(tmp_path_factory.mktemp("jm"), config) as gateway:
        assert ask(gateway).status_code == 200
    [received] = sim.requests(TUNED)
    assert received["response_format"] == {"type": "json_object"}


def test_task_endpoint_returns_the_parsed_object(gw: Gateway, sim: Simulator) -> None:
    sim.script(TUNED, "fenced")
    response = HTTP.post(f"{gw.url}/v1/tasks/triage", json={"input": "crash, urgent"})
    assert response.status_code == 200
    assert response.json()["output"] == RIGHT


def test_text_tasks_skip_the_guard(gw: Gateway, sim: Simulator) -> None:
    sim.script(TUNED, "prose")
    response = ask(gw, "reply")
    assert response.status_code == 200
    assert "x-tunegate-json" not in response.headers


def test_every_200_for_a_json_task_validates(gw: Gateway, sim: Simulator) -> None:
    schema = compile_schema(TRIAGE_SCHEMA)
    faults = ["invalid_json", "fenced", "trailing_comma", "missing_field", "wrong_enum", "prose"]
    for fault in faults:
        sim.script(TUNED, fault, fault)
        sim.script(BASE, fault, fault)
        response = ask(gw)
        if response.status_code == 200:
            content = response.json()["choices"][0]["message"]["content"]
            assert check(content, schema).status == "valid", fault
        else:
            assert response.json()["error"]["code"] == "invalid_output", fault


def test_a_streamed_json_answer_is_validated_before_it_is_sent(gw: Gateway, sim: Simulator) -> None:
    sim.script(TUNED, "missing_field")
    client = checked_sdk(f"{gw.url}/v1", "k")
    stream = client.chat.completions.create(
        model="triage",
        messages=[{"role": "user", "content": f"crash, urgent {uuid.uuid4().hex}"}],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert check(text, compile_schema(TRIAGE_SCHEMA)).status == "valid"
    assert len(sim.requests(TUNED)) == 2  # the invalid first answer was never streamed
