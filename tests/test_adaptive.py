"""Adaptive splits: the pure rule on fixed documents, then a gateway that moves its
traffic toward the better variant and stops, with the split in its metrics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.documents import compared, figure
from tests.harness import (
    BASE,
    TUNED,
    Simulator,
    gateway_config,
    running_gateway,
    simulator_with,
    task_config,
)
from tests.testkit.outcomes import sample
from tests.testkit.redis_server import RedisServer
from tunegate.config.compiled import GatewayConfig, Task, load_config
from tunegate.errors import ConfigError
from tunegate.experiments.adaptive import Split, Watcher, probability_a_better, split_for
from tunegate.experiments.document import Bounds, ExperimentsDocument, Verdict
from tunegate.experiments.recorder import Experiments
from tunegate.state.store import Store


def config_with(tmp_path: Path, task: str = "t", **adaptive: Any) -> GatewayConfig:
    routing = {"weights": {"tuned": 50, "few_shot": 50}, "adaptive": adaptive}
    path = tmp_path / "gateway.yaml"
    config = gateway_config("http://127.0.0.1:9", {task: task_config(routing=routing)})
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def task_with(tmp_path: Path, **adaptive: Any) -> Task:
    return config_with(tmp_path, **adaptive).tasks["t"]


def document(
    n: int, difference: float, ci95: Bounds, verdict: Verdict = "undecided", **decision: Any
) -> ExperimentsDocument:
    same = figure(difference, ci95, verdict)
    figures = {"first_try_valid": same, "cost_usd_per_valid_answer": same}
    return compared((n, n), figures, **decision)


def test_the_probability_of_being_better_follows_the_normal_approximation() -> None:
    assert probability_a_better(0.0, [-0.1, 0.1], higher_is_better=True) == 0.5
    se = 0.05
    at_z = [1.959963984540054 * se * k for k in (-1, 1)]
    # d = 1.96 se: P = 0.975; for a figure where lower is better, 0.025.
    assert probability_a_better(at_z[1], at_z, higher_is_better=True) == pytest.approx(0.975)
    assert probability_a_better(at_z[1], at_z, higher_is_better=False) == pytest.approx(0.025)


def test_splits_warm_then_explore_within_the_floor_then_stop(tmp_path: Path) -> None:
    task = task_with(tmp_path, metric="first_try_valid", min_samples=100, floor=0.1)
    warming = split_for(task, document(99, 0.08, (0.02, 0.14)))
    assert (warming.state, dict(warming.weights)) == ("warming", {"tuned": 0.5, "few_shot": 0.5})
    # P(tuned better) = Phi(0.01 / (0.04 / 1.96)) = 0.69
    leaning = split_for(task, document(100, 0.01, (-0.03, 0.05)))
    assert leaning.state == "exploring"
    assert leaning.weights["tuned"] == pytest.approx(0.6879, abs=1e-3)
    assert sum(leaning.weights.values()) == pytest.approx(1.0)
    sure = split_for(task, document(100, 0.08, (0.02, 0.14)))
    assert dict(sure.weights) == pytest.approx({"tuned": 0.9, "few_shot": 0.1})
    stopped = split_for(task, document(100, 0.08, (0.02, 0.14), verdict="a_better"))
    assert (stopped.state, dict(stopped.weights)) == ("stopped", {"tuned": 1.0, "few_shot": 0.0})


def test_a_lower_is_better_metric_and_no_stop(tmp_path: Path) -> None:
    task = task_with(tmp_path, metric="cost_usd_per_valid_answer", min_samples=10, stop=False)
    # tuned costs more per valid answer: traffic leans to few_shot, and never stops.
    split = split_for(task, document(50, 0.0002, (0.0001, 0.0003), verdict="b_better"))
    assert split.state == "exploring"
    assert dict(split.weights) == pytest.approx({"tuned": 0.1, "few_shot": 0.9})


def test_the_decision_metric_waits_for_the_policy(tmp_path: Path) -> None:
    task = task_with(tmp_path, min_samples=10)
    waiting = split_for(task, document(50, 0.1, (0.05, 0.15)))
    assert (waiting.state, waiting.weights["tuned"]) == ("exploring", 0.5)
    done = split_for(
        task, document(50, 0.1, (0.05, 0.15), status="recommend", recommendation="few_shot")
    )
    assert (done.state, done.weights["few_shot"]) == ("stopped", 1.0)


def test_an_adaptive_split_needs_two_weighted_variants(tmp_path: Path) -> None:
    routing = {"weights": {"tuned": 100, "few_shot": 0}, "adaptive": {"metric": "latency_s"}}
    path = tmp_path / "gateway.yaml"
    config = gateway_config("http://127.0.0.1:9", {"t": task_config(routing=routing)})
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"routing\.adaptive: an adaptive split needs exactly"):
        load_config(path)


@pytest.mark.anyio
async def test_a_scrape_sees_every_sample_recorded_before_it(
    server: RedisServer, tmp_path: Path
) -> None:
    task = f"scraped-{uuid.uuid4().hex[:8]}"
    config = config_with(tmp_path, task, metric="first_try_valid", min_samples=30)
    store = Store(server.url)
    experiments = Experiments(store, flush_s=60.0)  # only a settle writes the samples
    seen: list[int] = []

    def publish(task: str, document: ExperimentsDocument, split: Split) -> None:
        seen.append(document.variants["tuned"].requests)

    watcher = Watcher(experiments, publish)
    try:
        await watcher.refresh_for_scrape(config)
        for _ in range(3):  # back to back: no time passes between samples and scrapes
            experiments.record(sample(task, "tuned"))
            await watcher.refresh_for_scrape(config)
        assert seen == [0, 1, 2, 3]
    finally:
        await experiments.drain()
        await store.close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    scenario = {
        "seed": 3,
        "models": {
            TUNED: {"quality": {"valid": 1.0}},
            BASE: {"quality": {"valid": 0.5, "breakages": {"wrong_enum": 1}}},
            "*": {},
        },
    }
    with simulator_with(scenario, tmp_path_factory.mktemp("scenario")) as simulator:
        yield simulator


def gauge(metrics: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_gateway_moves_traffic_to_the_better_variant_and_stops(
    sim: Simulator, server: RedisServer, tmp_path: Path
) -> None:
    adaptive = {"metric": "first_try_valid", "min_samples": 30, "stop": True, "floor": 0.1}
    routing = {"weights": {"tuned": 50, "few_shot": 50}, "adaptive": adaptive}
    config = gateway_config(sim.url, {"t": task_config(routing=routing)})
    with running_gateway(tmp_path, config, redis_url=server.url) as gw, httpx.Client() as http:

        def serve(n: int) -> list[str]:
            served = []
            for _ in range(n):
                body = {"input": f"My card was declined ({uuid.uuid4().hex})"}
                response = http.post(f"{gw.url}/v1/tasks/t", json=body)
                assert response.status_code == 200, response.text
                served.append(response.json()["variant"])
            return served

        def scrape() -> str:
            return http.get(f"{gw.url}/metrics").text

        first = serve(80)
        assert 20 < first.count("tuned") < 60  # 50/50 while warming
        states = []
        for _ in range(8):
            metrics = scrape()  # a scrape refreshes the split
            states.append(
                [s for s in ("warming", "exploring", "stopped")
                 if gauge(metrics, "tunegate_experiment_state", task="t", state=s) == 1]
            )  # fmt: skip
            if states[-1] == ["stopped"]:
                break
            serve(40)
        assert states[-1] == ["stopped"], states
        assert gauge(metrics, "tunegate_experiment_weight", task="t", variant="tuned") == 1.0
        assert gauge(metrics, "tunegate_experiment_weight", task="t", variant="few_shot") == 0.0
        assert gauge(metrics, "tunegate_experiment_decision", task="t",
                     figure="first_try_valid", decision="tuned") == 1.0  # fmt: skip
        assert serve(30) == ["tuned"] * 30
