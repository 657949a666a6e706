"""Output checks end to end (simulator, gateway, embedded store): each check kind failing
and re-asked, re-ask then fallback, 502 naming the first failed check, observe mode,
cache hits, buffered streams, JSON tasks with checks, and the check metric."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import (
    BASE,
    TUNED,
    Gateway,
    Simulator,
    gateway_config,
    metric,
    running_gateway,
    task_config,
)
from tests.openai_shapes import checked_client, checked_sdk

CHECKS: list[Any] = [
    {"language": "de"},
    {"max_sentences": 3},
    {"max_chars": 250},
    {"contains": "Ihr Acme-Team"},
    {"not_contains": ["As an AI", "Als KI"]},
    {"regex": "^[^<>]*$"},
]


HTTP = checked_client(timeout=10)


def reply_task(on_fail: str = "reask", **routing: Any) -> dict[str, Any]:
    task = task_config(
        output={"type": "text", "checks": CHECKS, "on_fail": on_fail},
        routing={"json_retries": None, "reasks": 1, **routing},
    )
    task["routing"] = {k: v for k, v in task["routing"].items() if v is not None}
    for variant in task["variants"].values():
        variant["system"] = "Antworte dem Kunden auf Deutsch."
        variant["examples"] = []
        variant["params"] = {"max_tokens": 256}
    return task


@pytest.fixture(autouse=True)
def fresh(sim: Simulator) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def gw(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    json_task = task_config(
        output={
            "type": "json",
            "schema": task_config()["output"]["schema"],
            "checks": [{"contains": '"priority":"high"'}],
            "on_fail": "observe",
        }
    )
    tasks = {
        "reply": reply_task(),
        "observed": reply_task("observe"),
        "once": reply_task(reasks=0),
        "triage": json_task,
        "counted": reply_task(),
    }
    with running_gateway(tmp_path_factory.mktemp("gw"), gateway_config(sim.url, tasks)) as gateway:
        yield gateway


def ask(gw: Gateway, task: str = "reply", ticket: str | None = None) -> httpx.Response:
    ticket = ticket or f"My invoice is wrong. ({uuid.uuid4().hex[:8]})"
    return HTTP.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": task, "messages": [{"role": "user", "content": ticket}]},
        timeout=10,
    )


def content(response: httpx.Response) -> str:
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


def test_a_good_answer_passes_first_time(gw: Gateway, sim: Simulator) -> None:
    response = ask(gw)
    assert response.status_code == 200
    assert response.headers["x-tunegate-checks"] == "passed"
    assert content(response).endswith("Ihr Acme-Team")
    assert len(sim.requests(TUNED)) == 1


@pytest.mark.parametrize(
    ("flaw", "named"),
    [
        ("english", "language: expected de, detected en"),
        ("too_long", "max_sentences: 5 sentences, at most 3"),
        ("too_long", "max_chars: "),
        ("unsigned", 'contains: missing "Ihr Acme-Team"'),
        ("as_an_ai", 'not_contains: found "Als KI"'),
        ("markup", 'regex: no match for "^[^<>]*$"'),
    ],
)
def test_each_failed_check_is_re_asked_naming_it(
    gw: Gateway, sim: Simulator, flaw: str, named: str
) -> None:
    sim.script(TUNED, flaw)  # the re-ask is answered well
    response = ask(gw)
    assert response.status_code == 200
    assert response.headers["x-tunegate-checks"] == "reasked"
    assert response.headers["x-tunegate-variant"] == "tuned"
    assert "Ihr Acme-Team" in content(response)
    first, reask = sim.requests(TUNED)
    assert reask["messages"][: len(first["messages"])] == first["messages"]
    bad, correction = reask["messages"][-2:]
    assert bad["role"] == "assistant" and correction["role"] == "user"
    assert named in correction["content"]


def test_a_re_ask_that_fails_again_falls_back(gw: Gateway, sim: Simulator) -> None:
    sim.script(TUNED, "english", "english")
    response = ask(gw)
    assert response.status_code == 200
    assert response.headers["x-tunegate-variant"] == "few_shot"
    assert response.headers["x-tunegate-fallback"] == "tuned"
    assert response.headers["x-tunegate-checks"] == "reasked"
    assert len(sim.requests(TUNED)) == 2
    assert len(sim.requests(BASE)) == 1


def test_every_variant_failing_is_a_502_naming_the_first_failed_check(
    gw: Gateway, sim: Simulator
) -> None:
    sim.script(TUNED, "english", "english")
    sim.script(BASE, "markup", "markup")
    response = ask(gw, ticket="Please refund my payment, thank you")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "invalid_output"
    assert "tuned: language: expected de, detected en" in error["message"]
    assert "few_shot: regex" in error["message"]
    assert "refund" not in error["message"] and "Hello" not in error["message"]
    assert "x-tunegate-checks" not in response.headers
    assert response.headers["x-should-retry"] == "false"


def test_without_reasks_a_failed_check_falls_back_at_once(gw: Gateway, sim: Simulator) -> None:
    sim.script(TUNED, "unsigned")
    response = ask(gw, "once")
    assert response.status_code == 200
    assert response.headers["x-tunegate-variant"] == "few_shot"
    assert response.headers["x-tunegate-checks"] == "passed"
    assert len(sim.requests(TUNED)) == 1


def test_observe_serves_the_failing_answer_and_never_caches_it(gw: Gateway, sim: Simulator) -> None:
    ticket = f"Where is my invoice? {uuid.uuid4().hex}"
    sim.script(TUNED, "english")
    response = ask(gw, "observed", ticket)
    assert response.status_code == 200
    assert response.headers["x-tunegate-checks"] == "failed"
    assert content(response).startswith("Hello")
    assert len(sim.requests(TUNED)) == 1
    again = ask(gw, "observed", ticket)
    assert again.headers["x-tunegate-cache"] == "miss"
    assert again.headers["x-tunegate-checks"] == "passed"


def test_a_cache_hit_reports_passed(gw: Gateway, sim: Simulator) -> None:
    ticket = f"My account is locked. {uuid.uuid4().hex}"
    sim.script(TUNED, "english")
    first = ask(gw, ticket=ticket)
    assert first.headers["x-tunegate-checks"] == "reasked"
    hit = ask(gw, ticket=ticket)
    assert hit.headers["x-tunegate-cache"] == "hit"
    assert hit.headers["x-tunegate-checks"] == "passed"
    assert content(hit) == content(first)


def test_a_stream_is_checked_before_its_first_chunk(gw: Gateway, sim: Simulator) -> None:
    sim.script(TUNED, "english")
    client = checked_sdk(f"{gw.url}/v1", "k")
    with client.chat.completions.with_streaming_response.create(
        model="reply",
        messages=[{"role": "user", "content": f"Invoice wrong {uuid.uuid4().hex}"}],
        stream=True,
    ) as raw:
        assert raw.headers["x-tunegate-checks"] == "reasked"
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text.endswith("Ihr Acme-Team") and "Hello" not in text
    assert len(sim.requests(TUNED)) == 2  # the English answer was never streamed


def test_json_tasks_check_the_validated_json_text(gw: Gateway) -> None:
    urgent = ask(gw, "triage", f"The app crashes, urgent! {uuid.uuid4().hex}")
    assert urgent.headers["x-tunegate-checks"] == "passed"
    assert urgent.headers["x-tunegate-json"] == "valid"
    calm = ask(gw, "triage", f"Do you have a dark mode? {uuid.uuid4().hex}")
    assert calm.status_code == 200
    assert calm.headers["x-tunegate-checks"] == "failed"


def check_metric(gw: Gateway, task: str, check: str, result: str) -> float:
    return metric(
        gw, "tunegate_check_results_total", task=task, variant="tuned", check=check, result=result
    )


def test_every_evaluated_answer_counts_per_check(gw: Gateway, sim: Simulator) -> None:
    before = {r: check_metric(gw, "reply", "language", r) for r in ("pass", "fail")}
    contains_before = check_metric(gw, "reply", "contains", "pass")
    sim.script(TUNED, "english")
    assert ask(gw).status_code == 200
    assert check_metric(gw, "reply", "language", "fail") == before["fail"] + 1
    assert check_metric(gw, "reply", "language", "pass") == before["pass"] + 1
    assert check_metric(gw, "reply", "contains", "pass") == contains_before + 1


def test_first_answers_are_counted_per_variant_in_the_experiments(
    gw: Gateway, sim: Simulator
) -> None:
    sim.script(TUNED, "english", "ok", "markup", "ok", "ok", "ok")
    for _ in range(4):
        assert ask(gw, "counted").status_code == 200
    document = httpx.get(f"{gw.url}/v1/experiments/counted").json()
    tuned = document["variants"]["tuned"]
    assert tuned["requests"] == 4
    assert tuned["checks_first_try_pass"]["rate"] == 0.5
    low, high = tuned["checks_first_try_pass"]["ci95"]
    assert low < 0.5 < high
    # The English reply also lacks the signature; the re-asks are not first answers.
    assert tuned["check_failures"] == {"contains": 1, "language": 1, "regex": 1}
    assert document["variants"]["few_shot"]["checks_first_try_pass"]["rate"] is None
