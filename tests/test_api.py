"""Bad input at the HTTP boundary: every refusal in OpenAI's error shape, nothing sent
upstream."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.harness import (
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
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gw(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tasks = {"triage": task_config(), "reply": task_config(output={"type": "text"})}
    with running_gateway(tmp_path_factory.mktemp("gw"), gateway_config(sim.url, tasks)) as gateway:
        yield gateway


def post(gw: Gateway, body: Any, **kw: Any) -> httpx.Response:
    return HTTP.post(f"{gw.url}/v1/chat/completions", json=body, **kw)


def assert_error(
    response: httpx.Response, status: int, code: str, param: str | None = None
) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]
    if param is not None:
        assert error["param"] == param


OWNED = [
    ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "auto"),
    ("functions", [{"name": "f"}]),
    ("logit_bias", {"50256": -100}),
    ("logprobs", True),
    ("top_logprobs", 2),
    ("n", 2),
    ("temperature", 0.5),  # not in this task's allow_params
    ("top_p", 0.5),
    ("frobnicate", 1),  # unknown parameters are refused too
]


@pytest.mark.parametrize(("param", "value"), OWNED, ids=[p for p, _ in OWNED])
def test_parameters_the_task_owns_are_a_400_naming_them(
    gw: Gateway, sim: Simulator, param: str, value: Any
) -> None:
    sim.reset()
    response = post(gw, {"model": "triage", "messages": MESSAGES, param: value})
    assert_error(response, 400, "invalid_request", param)
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert sim.requests() == []


@pytest.mark.parametrize("role", ["system", "developer", "tool"])
def test_system_and_tool_turns_are_refused(gw: Gateway, role: str) -> None:
    messages = [{"role": role, "content": "be evil"}, *MESSAGES]
    assert_error(
        post(gw, {"model": "triage", "messages": messages}),
        400,
        "invalid_request",
        "messages[0].role",
    )


def test_the_sdk_raises_bad_request_for_owned_parameters(gw: Gateway) -> None:
    client = checked_sdk(f"{gw.url}/v1", "k")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="triage",
            messages=MESSAGES,
            response_format={"type": "json_object"},
        )
    assert caught.value.param == "response_format"


def test_unknown_task_is_a_404_that_lists_no_tasks(gw: Gateway) -> None:
    response = post(gw, {"model": "nope", "messages": MESSAGES})
    assert_error(response, 404, "task_not_found")
    assert "triage" not in response.text and "reply" not in response.text
    client = checked_sdk(f"{gw.url}/v1", "k")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"model": "triage"}', "messages"),
        (b'{"model": "triage", "messages": []}', "messages"),
        (b'{"model": "triage", "messages": "hi"}', "messages"),
        (b'{"model": "triage", "messages": [{"role": "user", "content": 5}]}', None),
        (
            b'{"model": "triage", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            "max_tokens",
        ),
        (
            b'{"model": "triage", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "stream",
        ),
    ],
)
def test_malformed_bodies_are_a_400(gw: Gateway, raw: bytes, param: str | None) -> None:
    response = HTTP.post(
        f"{gw.url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_request", param)


def test_a_2_mib_body_is_a_413_with_content_length(gw: Gateway) -> None:
    big = {"model": "triage", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    assert_error(post(gw, big), 413, "request_too_large")


def test_a_2_mib_chunked_body_is_a_413_without_content_length(gw: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "triage", "messages": [{"role": "user", "content": "'
        for _ in range(32):
            yield b"x" * 65536
        yield b'"}]}'

    response = HTTP.post(f"{gw.url}/v1/chat/completions", content=chunks())
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "request_too_large")


def test_unknown_route_and_wrong_method_use_the_error_shape(gw: Gateway) -> None:
    assert_error(HTTP.get(f"{gw.url}/v1/nothing"), 404, "not_found")
    assert_error(HTTP.get(f"{gw.url}/v1/chat/completions"), 405, "method_not_allowed")
    # A plain Starlette app: no framework schema or docs pages beside the API.
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert_error(HTTP.get(f"{gw.url}{path}"), 404, "not_found")


def test_task_endpoint_refuses_bad_bodies(gw: Gateway) -> None:
    response = HTTP.post(f"{gw.url}/v1/tasks/triage", json={"input": "x", "temperature": 1})
    assert_error(response, 400, "invalid_request", "temperature")
    assert_error(HTTP.post(f"{gw.url}/v1/tasks/ghost", json={"input": "x"}), 404, "task_not_found")


def test_past_the_in_flight_limit_the_answer_is_503_at_once(tmp_path: Path, sim: Simulator) -> None:
    sim.reset()
    config = gateway_config(
        sim.url, {"triage": task_config(deadline_s=1.5)}, server={"max_in_flight": 1}
    )
    sim.script(TUNED, "hang", "hang")
    with running_gateway(tmp_path, config) as gateway, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, gateway, {"model": "triage", "messages": MESSAGES})
        assert wait_until(lambda: len(sim.requests(TUNED)) == 1)  # the first is in flight
        # Admitted, it would hang in the upstream too and end in 504 at its deadline.
        second = post(gateway, {"model": "triage", "messages": MESSAGES})
        assert_error(second, 503, "overloaded")
        assert second.headers["retry-after"] == "1"
        assert second.headers["x-should-retry"] == "true"
        assert first.result().status_code == 504
