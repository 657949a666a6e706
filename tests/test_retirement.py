"""A variant's model retired upstream (SPEC §9 "Retirement", issue 18): a 404
model_not_found falls back like an outage, is counted, and never reaches the caller as a
404. Against a real simulator whose model is deleted with `DELETE /v1/models/{model}`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
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


@pytest.fixture
def retired(tmp_path: Path) -> Iterator[tuple[Simulator, Gateway]]:
    simulator = Simulator()  # its own: the deletion must not leak into other tests
    try:
        with running_gateway(
            tmp_path, gateway_config(simulator.url, {"triage": task_config()})
        ) as gw:
            assert httpx.delete(f"{simulator.url}/v1/models/{TUNED}").status_code == 200
            yield simulator, gw
    finally:
        simulator.stop()


def ask(gw: Gateway, text: str) -> httpx.Response:
    body = {"model": "triage", "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10)


def errors(gw: Gateway, kind: str) -> float:
    """`tunegate_upstream_errors_total` of `kind`, summed over the variants."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(f"{gw.url}/metrics").text.splitlines()
        if line.startswith("tunegate_upstream_errors_total{") and f'kind="{kind}"' in line
    )


def test_a_retired_model_falls_back_and_is_counted(retired: tuple[Simulator, Gateway]) -> None:
    simulator, gw = retired
    response = ask(gw, "The app crashes on start.")
    assert response.status_code == 200, response.text
    assert response.headers["x-tunegate-fallback"] == "tuned"
    assert response.headers["x-tunegate-variant"] == "few_shot"
    assert errors(gw, "model_not_found") == 1.0  # not retried: a 404 cannot heal
    assert [r["fault"] for r in simulator.requests(TUNED)] == [None]


def test_with_every_model_gone_the_caller_gets_a_502_not_a_404(
    retired: tuple[Simulator, Gateway],
) -> None:
    simulator, gw = retired
    assert httpx.delete(f"{simulator.url}/v1/models/{BASE}").status_code == 404  # not ft:
    simulator.script(BASE, "404")
    response = ask(gw, "I was charged twice.")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert errors(gw, "model_not_found") == 2.0
