"""Shadow traffic end to end (SPEC §4): paired figures, cost apart, never in the caller's
way; and the report's arithmetic over both directions on fixed data."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import (
    BASE,
    TUNED,
    Gateway,
    Simulator,
    gateway_config,
    metric,
    running_gateway,
    simulator_with,
    task_config,
    wait_until,
)
from tests.openai_shapes import checked_client
from tests.testkit.redis_server import RedisServer
from tunegate.commands import cli
from tunegate.config.compiled import load_config
from tunegate.experiments.document import document_json
from tunegate.experiments.report import build_document
from tunegate.experiments.report_text import render_table

SLOW_BASE = "slow-base-model"
SLOW_MS = 300
SHADOW = {"shadow": {"variant": "few_shot", "rate": 1.0}}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    scenario = {
        "seed": 5,
        "models": {
            TUNED: {"quality": {"valid": 1.0}},
            BASE: {
                "latency_ms": 5,
                "quality": {"valid": 0.8, "breakages": {"wrong_enum": 1}},
            },
            SLOW_BASE: {"latency_ms": SLOW_MS, "quality": {"valid": 1.0}},
            "*": {},
        },
    }
    with simulator_with(scenario, tmp_path_factory.mktemp("scenario")) as simulator:
        yield simulator


def slow_task(**routing: Any) -> dict[str, Any]:
    task = task_config(routing=routing)
    task["variants"]["few_shot"]["model"] = SLOW_BASE
    return task


@pytest.fixture(scope="module")
def gw(
    sim: Simulator, server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tasks = {
        "shadowed": task_config(routing=SHADOW),
        "shadowed-alone": task_config(routing=SHADOW),  # no other test's shadows in its counts
        "slow-shadowed": slow_task(**SHADOW),
        "hung-shadowed": slow_task(**SHADOW),
        "unshadowed": slow_task(),
    }
    config = gateway_config(sim.url, tasks)
    with running_gateway(tmp_path_factory.mktemp("gw"), config, redis_url=server.url) as gateway:
        yield gateway


HTTP = checked_client(timeout=10)


def ask(gw: Gateway, task: str, text: str | None = None, **headers: str) -> httpx.Response:
    body = {"input": text or f"My invoice is wrong (ticket {uuid.uuid4().hex})"}
    response = HTTP.post(f"{gw.url}/v1/tasks/{task}", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


def shadow_figures(gw: Gateway, task: str, calls: int) -> dict[str, Any]:
    """The document's shadow figures once `calls` shadow calls (or skips) are in."""
    deadline = time.monotonic() + 10
    while True:
        document = HTTP.get(f"{gw.url}/v1/experiments/{task}").json()
        shadow = document["shadow"] or {"calls": 0}
        skipped = metric(
            gw, "tunegate_shadow_requests_total", task=task, variant="few_shot", result="skipped"
        )
        if shadow["calls"] + skipped >= calls or time.monotonic() > deadline:
            return dict(shadow)
        time.sleep(0.05)


def test_shadow_calls_give_paired_figures_and_cost_counted_apart(
    gw: Gateway, sim: Simulator
) -> None:
    sim.reset()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(gw, "shadowed"), range(40)))
    shadow = shadow_figures(gw, "shadowed", 40)
    skipped = metric(
        gw, "tunegate_shadow_requests_total", task="shadowed", variant="few_shot", result="skipped"
    )
    assert shadow["calls"] + skipped == 40
    assert shadow["calls"] >= 30
    # Every shadow call reached the upstream, with the few-shot variant's own prompt.
    received = sim.requests(BASE)
    assert len(received) == shadow["calls"]
    assert all(len(r["messages"]) == 4 for r in received)  # system, example pair, input
    assert shadow["by_primary"] == {"tuned": shadow["calls"], "few_shot": 0}
    # The simulated few-shot model breaks 20% of its answers; the rest agree.
    assert 0 < shadow["invalid"] < shadow["calls"] / 2
    assert shadow["answered"] + shadow["invalid"] == shadow["calls"]
    agreement = shadow["agreement"]
    assert agreement["value"] == 1.0
    assert agreement["ci95"][0] < 1.0
    # Paired differences are tuned - few_shot: the tuned model's per-token price is
    # several times the base model's here, more than its shorter prompt saves.
    cost = shadow["cost_usd_difference"]
    assert cost["count"] == shadow["answered"]
    assert cost["mean"] > 0
    assert cost["ci95"][0] > 0
    assert shadow["latency_s_difference"]["ci95"] is not None
    # The callers were charged for their own calls only; the shadow cost is apart.
    callers = sum(float(a.headers["x-tunegate-cost-usd"]) for a in answers)
    assert all(a.json()["variant"] == "tuned" for a in answers)
    charged = metric(gw, "tunegate_cost_usd_total", task="shadowed", variant="tuned", model=TUNED)
    assert charged == pytest.approx(callers)
    assert (
        metric(gw, "tunegate_cost_usd_total", task="shadowed", variant="few_shot", model=BASE) == 0
    )
    shadow_cost = metric(
        gw, "tunegate_shadow_cost_usd_total", task="shadowed", variant="few_shot", model=BASE
    )
    assert shadow_cost == pytest.approx(shadow["shadow_cost_usd"])
    assert shadow_cost > 0
    # Shadow calls are no samples of the shadow variant.
    document = HTTP.get(f"{gw.url}/v1/experiments/shadowed").json()
    assert document["variants"]["few_shot"]["requests"] == 0


def test_report_html_draws_the_shadow_pairs_of_a_running_gateway(
    gw: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(5):
        ask(gw, "shadowed")
    shadow_figures(gw, "shadowed", 5)
    page = tmp_path / "report.html"
    assert cli.main(["report", "shadowed", "--url", gw.url, "--html", str(page)]) == 0
    assert "shadow pairs (tuned - few_shot on the same inputs)" in capsys.readouterr().out
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "Shadow pairs" in html
    assert "<svg" in html
    assert cli.main(["report", "shadowed", "--url", gw.url, "--html", str(tmp_path)]) == 1


def test_the_caller_never_waits_for_its_shadow(gw: Gateway, sim: Simulator) -> None:
    before = len(sim.requests(SLOW_BASE))
    sim.script(SLOW_BASE, "hang")  # the shadow gets no answer until its upstream timeout
    assert ask(gw, "hung-shadowed").json()["variant"] == "tuned"  # answered meanwhile
    assert wait_until(lambda: len(sim.requests(SLOW_BASE)) == before + 1)
    results = ("ok", "invalid", "error", "skipped")
    labels = {"task": "hung-shadowed", "variant": "few_shot"}
    assert [metric(gw, "tunegate_shadow_requests_total", **labels, result=r) for r in results] == [
        0.0
    ] * 4  # the shadow is still waiting


def test_a_slow_shadow_shows_in_the_paired_latency(gw: Gateway) -> None:
    for _ in range(8):
        ask(gw, "slow-shadowed")
    shadow = shadow_figures(gw, "slow-shadowed", 8)
    assert shadow["calls"] == 8
    # The shadow waited ~300 ms more than the tuned answer.
    assert shadow["latency_s_difference"]["mean"] < -(SLOW_MS / 1000) * 0.8


def test_hits_forced_variants_and_fallbacks_are_not_shadowed(gw: Gateway, sim: Simulator) -> None:
    def shadow_calls() -> float:
        return sum(
            metric(
                gw,
                "tunegate_shadow_requests_total",
                task="shadowed-alone",
                variant="few_shot",
                result=r,
            )
            for r in ("ok", "invalid", "error", "skipped")
        )

    text = f"Please reset my password ({uuid.uuid4().hex})"
    assert shadow_calls() == 0
    assert ask(gw, "shadowed-alone", text).json()["cache"] == "miss"
    assert ask(gw, "shadowed-alone", text).json()["cache"] == "hit"
    assert ask(gw, "shadowed-alone", **{"x-tunegate-variant": "tuned"}).json()["variant"] == "tuned"
    sim.script(TUNED, "quota", "quota")
    assert ask(gw, "shadowed-alone").json()["variant"] == "few_shot"  # a fallback
    # A last shadowed request: a wrong shadow of the ones above started before its own.
    sim.reset()
    assert ask(gw, "shadowed-alone").json()["cache"] == "miss"
    assert wait_until(lambda: shadow_calls() >= 2)
    assert shadow_calls() == 2  # the two misses only


def test_the_report_combines_both_directions_as_a_minus_b(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            gateway_config("http://127.0.0.1:9", {"triage": task_config(routing=SHADOW)})
        )
    )
    task = load_config(path).tasks["triage"]
    # tuned answered the callers 3 times (shadow few_shot), few_shot once (shadow tuned).
    # Differences stored as shadow - primary: few_shot - tuned = +1, +2, +3 s; then
    # tuned - few_shot = -2 s. As tuned - few_shot: -1, -2, -3, -2.
    pairs = {
        ("tuned", "few_shot"): {
            "n": 4, "answered": 3, "invalid": 1, "agree": 2,
            "dl": 6.0, "dl_sq": 14.0, "dc": 0.3, "dc_sq": 0.03, "cost": 0.5,
        },
        ("few_shot", "tuned"): {
            "n": 1, "answered": 1, "invalid": 0, "agree": 1,
            "dl": -2.0, "dl_sq": 4.0, "dc": -0.1, "dc_sq": 0.01, "cost": 0.1,
        },
    }  # fmt: skip
    shadow = document_json(build_document(task, {}, pairs=pairs))["shadow"]
    assert (shadow["calls"], shadow["answered"], shadow["invalid"]) == (5, 4, 1)
    assert shadow["by_primary"] == {"tuned": 4, "few_shot": 1}
    assert shadow["agreement"]["value"] == 0.75
    latency = shadow["latency_s_difference"]
    assert latency["mean"] == pytest.approx(-2.0)  # mean of -1, -2, -3, -2
    # Student's t, 3 degrees of freedom: sd = sqrt(2/3), t(0.975, 3) = 3.182446
    half = 3.182446 * (2 / 3) ** 0.5 / 2
    assert latency["ci95"] == pytest.approx([-2.0 - half, -2.0 + half], abs=1e-5)
    assert shadow["cost_usd_difference"]["mean"] == pytest.approx(-0.1)
    assert shadow["shadow_cost_usd"] == pytest.approx(0.6)
    text = render_table(build_document(task, {}, pairs=pairs))
    assert "shadow pairs (tuned - few_shot on the same inputs): 5 calls" in text
    assert build_document(task, {}, pairs={}).shadow is None
