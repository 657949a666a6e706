"""The access line (SPEC §12) and the request id on every answer, through real uvicorn
and the simulator: one line per request, with its id, status, task, variant, cache,
duration and cost, and no content; every other line of a request carries its id."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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
from tests.openai_shapes import checked_client

SECRET_WORD = "zanzibar"


@pytest.fixture(autouse=True)
def fresh(sim: Simulator) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def gw(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tasks = {"triage": task_config(), "reply": task_config(output={"type": "text"})}
    with running_gateway(tmp_path_factory.mktemp("gw"), gateway_config(sim.url, tasks)) as gateway:
        yield gateway


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with checked_client(timeout=10) as client:
        yield client


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="tunegate")
    return caplog


def lines_of(logs: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [r for r in logs.records if getattr(r, "request_id", None) == request_id]


def access_line(logs: pytest.LogCaptureFixture, request_id: str) -> dict[str, Any]:
    """The one access line of `request_id` (it is written once the last byte has left,
    so it may follow the answer by a moment)."""

    def written() -> list[logging.LogRecord]:
        return [r for r in lines_of(logs, request_id) if r.name == "tunegate.access"]

    assert wait_until(lambda: bool(written()))
    [record] = written()
    fields = ("request_id", "status", "task", "variant", "cache", "duration_s", "cost_usd")
    line: dict[str, Any] = {name: getattr(record, name, None) for name in fields}
    assert line["duration_s"] > 0
    assert SECRET_WORD not in str(vars(record))  # no content
    return line


def chat(http: httpx.Client, gw: Gateway, task: str, **extra: Any) -> httpx.Response:
    text = f"I was charged twice, {SECRET_WORD} {uuid.uuid4().hex[:8]}"
    body = {"model": task, "messages": [{"role": "user", "content": text}], **extra}
    return http.post(f"{gw.url}/v1/chat/completions", json=body)


def test_an_answer_has_one_access_line(
    http: httpx.Client, gw: Gateway, logs: pytest.LogCaptureFixture
) -> None:
    response = chat(http, gw, "triage")
    request_id = response.headers["x-request-id"]
    line = access_line(logs, request_id)
    assert line["status"] == 200
    assert (line["task"], line["variant"], line["cache"]) == ("triage", "tuned", "miss")
    assert line["cost_usd"] == pytest.approx(float(response.headers["x-tunegate-cost-usd"]))
    assert line["cost_usd"] > 0


def test_a_failed_variant_logs_its_request_and_task(
    http: httpx.Client, gw: Gateway, sim: Simulator, logs: pytest.LogCaptureFixture
) -> None:
    sim.script(TUNED, "401")
    response = chat(http, gw, "triage")
    assert response.headers["x-tunegate-fallback"] == "tuned"
    request_id = response.headers["x-request-id"]
    line = access_line(logs, request_id)
    assert line["variant"] == "few_shot"
    [failed] = [r for r in logs.records if r.getMessage() == "variant failed"]
    assert (getattr(failed, "request_id", None), getattr(failed, "task", None)) == (
        request_id,
        "triage",
    )


def test_a_refused_request_of_a_known_task_names_it(
    http: httpx.Client, gw: Gateway, logs: pytest.LogCaptureFixture
) -> None:
    response = chat(http, gw, "triage", tools=[{"type": "function"}])
    assert response.status_code == 400
    assert response.headers["x-tunegate-task"] == "triage"
    line = access_line(logs, response.headers["x-request-id"])
    assert (line["status"], line["task"], line["cost_usd"]) == (400, "triage", 0)


def test_a_failed_shadow_call_logs_its_request_and_task(
    tmp_path: Path, http: httpx.Client, sim: Simulator, logs: pytest.LogCaptureFixture
) -> None:
    tasks = {"shadowed": task_config(routing={"shadow": {"variant": "few_shot", "rate": 1.0}})}
    with running_gateway(tmp_path, gateway_config(sim.url, tasks)) as gateway:
        sim.script(BASE, "401")
        response = chat(http, gateway, "shadowed")
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]

        def failed() -> list[logging.LogRecord]:
            return [r for r in lines_of(logs, request_id) if r.getMessage() == "shadow call failed"]

        assert wait_until(lambda: bool(failed()))
        assert getattr(failed()[0], "task", None) == "shadowed"


def test_a_failed_judge_call_logs_its_request_and_task(
    tmp_path: Path, http: httpx.Client, sim: Simulator, logs: pytest.LogCaptureFixture
) -> None:
    judged = task_config(output={"type": "text"})
    judged["judge"] = {"upstream": "sim", "model": "gpt-4o-mini", "rate": 1.0, "rubric": "Be kind."}
    with running_gateway(tmp_path, gateway_config(sim.url, {"judged": judged})) as gateway:
        sim.script("gpt-4o-mini", "401")
        response = chat(http, gateway, "judged")
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]

        def failed() -> list[logging.LogRecord]:
            return [r for r in lines_of(logs, request_id) if r.getMessage() == "judge call failed"]

        assert wait_until(lambda: bool(failed()))
        assert getattr(failed()[0], "task", None) == "judged"


def test_a_text_streams_line_has_its_whole_cost(
    http: httpx.Client, gw: Gateway, logs: pytest.LogCaptureFixture
) -> None:
    response = chat(http, gw, "reply", stream=True, stream_options={"include_usage": True})
    usage_chunk = [line for line in response.text.splitlines() if '"cost_usd"' in line]
    streamed_cost = float(json.loads(usage_chunk[0].removeprefix("data: "))["cost_usd"])
    assert response.headers["x-tunegate-cost-usd"] == "0"  # known when the headers left
    line = access_line(logs, response.headers["x-request-id"])
    assert line["cost_usd"] == pytest.approx(streamed_cost) and streamed_cost > 0


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/chat/completions", 405),
        ("DELETE", "/v1/models", 405),
        ("GET", "/v1/nothing", 404),
        ("POST", "/v1/chat/completions", 400),
        ("GET", "/healthz", 200),
        ("GET", "/v1/models", 200),
    ],
)
def test_every_answer_has_a_request_id_and_a_line(
    http: httpx.Client,
    gw: Gateway,
    logs: pytest.LogCaptureFixture,
    method: str,
    path: str,
    status: int,
) -> None:
    response = http.request(method, f"{gw.url}{path}", content=b"{}")
    assert response.status_code == status
    request_id = response.headers["x-request-id"]
    assert len(request_id) >= 16
    assert access_line(logs, request_id)["status"] == status
    if status == 405:
        assert response.headers["allow"]
        assert method not in response.headers["allow"]


def test_an_unexpected_failure_is_a_500_with_a_request_id_and_a_line(
    tmp_path: Path, sim: Simulator, http: httpx.Client, logs: pytest.LogCaptureFixture
) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug, not a GatewayError")

    config = gateway_config(sim.url, {"triage": task_config()})
    with running_gateway(tmp_path, config, routes=[Route("/broken", broken)]) as gateway:
        response = http.get(f"{gateway.url}/broken")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"  # OpenAI's shape
    assert "bug" not in response.text
    assert access_line(logs, response.headers["x-request-id"])["status"] == 500


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_caller_that_hangs_up_is_a_499_line_not_a_server_error(
    gw: Gateway, sim: Simulator, logs: pytest.LogCaptureFixture
) -> None:
    server_errors = _Kept()
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.addHandler(server_errors)
    try:
        sim.script(TUNED, "hang")
        body = {"model": "triage", "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=0.5)
        assert wait_until(
            lambda: any(
                r.name == "tunegate.access" and getattr(r, "status", None) == 499
                for r in logs.records
            )
        )
    finally:
        uvicorn_errors.removeHandler(server_errors)
    assert [r.getMessage() for r in server_errors.records if r.levelno >= logging.ERROR] == []
