"""Capture for fine-tuning (SPEC §9, §12) through real processes: the gateway under
uvicorn, the simulator, a real Redis-protocol server; read back over
`GET /admin/capture/{task}`."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import TUNED, Gateway, Simulator, gateway_config, running_gateway, task_config
from tests.testkit.outcomes import served
from tunegate.auth import hash_key
from tunegate.config.compiled import CapturePolicy, load_config
from tunegate.errors import ConfigError
from tunegate.experiments.capture import decide, sampled
from tunegate.records import Exchange, Outcome

ADMIN, APP, PRIVATE = "key-admin", "key-app", "key-private"
KEYS = [
    {"name": "admin", "sha256": hash_key(ADMIN), "tenant": "acme", "admin": True},
    {"name": "app", "sha256": hash_key(APP), "tenant": "acme"},
    {"name": "private", "sha256": hash_key(PRIVATE), "tenant": "acme", "capture": False},
]
counter = itertools.count()


def ticket() -> str:
    return f"I was charged twice for order {next(counter)}!"


def ask(gw: Gateway, key: str = APP, text: str | None = None, **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **extra.pop("headers", {})}
    body = {"model": "triage", "messages": [{"role": "user", "content": text or ticket()}]}
    response = httpx.post(
        f"{gw.url}/v1/chat/completions", json={**body, **extra}, headers=headers, timeout=10
    )
    assert response.status_code == 200, response.text
    return response


def captured(gw: Gateway) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{gw.url}/admin/capture/triage", headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def counts(gw: Gateway) -> dict[str, float]:
    found = {}
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith("tunegate_capture_total{") and 'task="triage"' in line:
            result = line.split('result="')[1].split('"')[0]
            found[result] = float(line.rsplit(" ", 1)[1])
    return found


def config(sim: Simulator, capture: dict[str, Any], **task: Any) -> dict[str, Any]:
    tasks = {"triage": task_config(capture=capture, **task)}
    return gateway_config(sim.url, tasks, auth={"keys": KEYS})


@pytest.fixture
def gw(sim: Simulator, tmp_path: Path) -> Iterator[Gateway]:
    # Each gateway on its own embedded store: every test starts with no capture.
    sim.reset()
    with running_gateway(tmp_path, config(sim, {"rate": 1.0})) as gateway:
        yield gateway


def test_a_sampled_exchange_is_kept_with_the_callers_messages_and_the_answer(
    gw: Gateway,
) -> None:
    text = ticket()
    response = ask(gw, text=text, user="u-1")
    [entry] = captured(gw)
    assert entry["request_id"] == response.headers["x-request-id"]
    assert entry["messages"] == [{"role": "user", "content": text}]
    assert entry["answer"] == response.json()["choices"][0]["message"]["content"]
    assert (entry["variant"], entry["model"], entry["tenant"]) == ("tuned", TUNED, "acme")
    assert entry["score"] is None
    assert counts(gw) == {"kept": 1.0}


def test_opt_outs_streams_forced_hits_and_fallbacks_are_never_kept(
    gw: Gateway, sim: Simulator
) -> None:
    ask(gw, PRIVATE)  # key with capture: false: sampled, skipped
    ask(gw, stream=True)  # a stream: sampled, skipped
    ask(gw, ADMIN, headers={"x-tunegate-variant": "tuned"})  # forced: not a candidate
    kept = ask(gw, text="The app crashes on start.")
    hit = ask(gw, text="The app crashes on start.")  # a cache hit: not a candidate
    assert hit.headers["x-tunegate-cache"] == "hit"
    sim.script(TUNED, "500", "500")
    fallback = ask(gw)
    assert fallback.headers["x-tunegate-fallback"] == "tuned"
    assert [e["request_id"] for e in captured(gw)] == [kept.headers["x-request-id"]]
    assert counts(gw) == {"kept": 1.0, "skipped": 2.0}


def test_the_sample_is_the_hash_of_the_request_id(sim: Simulator, tmp_path: Path) -> None:
    with running_gateway(tmp_path, config(sim, {"rate": 0.5})) as gw:
        ids = [ask(gw).headers["x-request-id"] for _ in range(40)]
        expected = [i for i in ids if sampled(i, 0.5)]
        assert 5 < len(expected) < 35
        assert [e["request_id"] for e in captured(gw)] == expected


def test_answers_failing_a_check_are_skipped(sim: Simulator, tmp_path: Path) -> None:
    output = {"type": "text", "checks": [{"max_chars": 5}], "on_fail": "observe"}
    text_config = config(sim, {"rate": 1.0}, output=output)
    with running_gateway(tmp_path, text_config) as gw:
        response = ask(gw)
        assert response.headers["x-tunegate-checks"] == "failed"
        assert captured(gw) == []
        assert counts(gw) == {"skipped": 1.0}
    with running_gateway(
        tmp_path, config(sim, {"rate": 1.0, "only_valid": False}, output=output)
    ) as gw:
        ask(gw)
        assert len(captured(gw)) == 1


def test_a_later_feedback_score_lands_on_its_entry(gw: Gateway) -> None:
    request_id = ask(gw).headers["x-request-id"]
    feedback = httpx.post(
        f"{gw.url}/v1/feedback",
        json={"request_id": request_id, "score": 0.8},
        headers={"authorization": f"Bearer {APP}"},
    )
    assert feedback.status_code == 200, feedback.text
    [entry] = captured(gw)
    assert entry["score"] == 0.8


def test_the_stream_keeps_the_latest_max_examples(sim: Simulator, tmp_path: Path) -> None:
    with running_gateway(tmp_path, config(sim, {"rate": 1.0, "max_examples": 3})) as gw:
        ids = [ask(gw).headers["x-request-id"] for _ in range(5)]
        assert [e["request_id"] for e in captured(gw)] == ids[2:]


def test_capture_reads_are_admin_only_and_name_a_task(gw: Gateway) -> None:
    denied = httpx.get(f"{gw.url}/admin/capture/triage", headers={"authorization": f"Bearer {APP}"})
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "override_not_allowed"
    unknown = httpx.get(
        f"{gw.url}/admin/capture/nope", headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert unknown.status_code == 404


def test_without_capture_nothing_is_kept(sim: Simulator, tmp_path: Path) -> None:
    plain = gateway_config(sim.url, {"triage": task_config()}, auth={"keys": KEYS})
    with running_gateway(tmp_path, plain) as gw:
        ask(gw)
        assert captured(gw) == []
        assert counts(gw) == {}


def test_capture_of_an_unknown_variant_is_a_config_error(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config(sim, {"rate": 0.2, "variants": ["nope"]})))
    with pytest.raises(ConfigError, match=r"tasks\.triage\.capture\.variants\.0: no variant"):
        load_config(path)
    path.write_text(json.dumps(config(sim, {"rate": 0.2})))
    policy = load_config(path).tasks["triage"].capture
    assert policy is not None and policy.variants == {"tuned"}  # the arms: weight above 0
    assert (policy.ttl_s, policy.max_examples, policy.only_valid) == (30 * 86400, 50_000, True)


def _outcome(**fields: Any) -> Outcome:
    policy = fields.pop("policy", CapturePolicy(1.0, frozenset({"tuned"}), True, 86400, 10))
    exchange = Exchange(({"role": "user", "content": "hi"},), "{}", policy, False, False)
    base = {"request_id": "r1", "task": "triage", "seconds": 0.01, "calls": ()}
    return served(**{**base, "exchange": exchange, **fields})


def result_of(outcome: Outcome) -> str | None:
    decision = decide(outcome)
    return decision[0] if decision is not None else None


def test_only_the_chosen_variants_own_answers_in_the_capture_variants_are_candidates() -> None:
    assert result_of(_outcome()) == "kept"
    assert decide(_outcome(status="fallback", served="few_shot")) is None
    assert decide(_outcome(chosen="few_shot", served="few_shot")) is None  # not in variants
    assert decide(_outcome(exchange=None)) is None  # hits, forced: no exchange
    only_few_shot = CapturePolicy(1.0, frozenset({"few_shot"}), True, 86400, 10)
    assert decide(_outcome(policy=only_few_shot)) is None
    assert result_of(_outcome(json_results=(("tuned", "invalid"),))) == "skipped"
