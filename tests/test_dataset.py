"""`tunegate dataset export` as a person runs it: a gateway with capture on a real
Redis-protocol server, traffic through it, then the command in a subprocess reading
`REDIS_URL` (or the gateway with `--url`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import Gateway, Simulator, gateway_config, running_gateway, task_config
from tests.testkit.redis_server import RedisServer
from tunegate.experiments.dataset import Dataset, Tokenizer, build, check

TUNED_SYSTEM = "Classify the support ticket as JSON."
TICKETS = [f"The app crashes when I open screen {i}." for i in range(12)]


@pytest.fixture(scope="module")
def setup(
    sim: Simulator, server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Path, list[str]]]:
    tmp = tmp_path_factory.mktemp("dataset")
    tuning = {"base_model": "gpt-3.5-turbo-0613"}
    tasks = {
        "triage": task_config(capture={"rate": 1.0}, tuning=tuning),
        "short": task_config(capture={"rate": 1.0}),
        "plain": {
            **task_config(),
            "variants": {"base": task_config()["variants"]["few_shot"]},
            "routing": {},
        },
    }
    config = gateway_config(sim.url, tasks)
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    with running_gateway(tmp, config, redis_url=server.url) as gw:
        ids = [ask(gw, "triage", text) for text in TICKETS]
        ask(gw, "triage", TICKETS[0], headers={"cache-control": "no-store"})  # a duplicate
        ask(gw, "triage", "word " * 5000)  # too long for gpt-3.5-turbo-0613 (4,096)
        for text in TICKETS[:3]:
            ask(gw, "short", text)
        for request_id, score in zip(ids, [0.9, 0.2, 0.8, 1.0], strict=False):
            scored = httpx.post(
                f"{gw.url}/v1/feedback", json={"request_id": request_id, "score": score}
            )
            assert scored.status_code == 200, scored.text
        yield gw, path, ids


def ask(gw: Gateway, task: str, text: str, headers: dict[str, str] | None = None) -> str:
    body = {"model": task, "messages": [{"role": "user", "content": text}]}
    response = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def export(
    setup: tuple[Gateway, Path, list[str]], server: RedisServer, out: Path, *argv: str
) -> subprocess.CompletedProcess[str]:
    _, config, _ = setup
    env = {**os.environ, "REDIS_URL": server.url, "TUNEGATE_CONFIG": str(config)}
    command = [sys.executable, "-m", "tunegate.commands.cli", "dataset", "export"]
    return subprocess.run(
        [*command, *argv, "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_file_is_the_tuned_prompt_format_deduplicated_and_checked(
    setup: tuple[Gateway, Path, list[str]], server: RedisServer, tmp_path: Path
) -> None:
    out = tmp_path / "train.jsonl"
    done = export(setup, server, out, "triage")
    assert done.returncode == 0, done.stderr
    examples = lines(out)
    assert len(examples) == 12
    for example, ticket in zip(examples, [*TICKETS[1:], TICKETS[0]], strict=True):
        messages = example["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert messages[0]["content"] == TUNED_SYSTEM  # the ft: variant's, no examples
        assert messages[1]["content"] == ticket
        assert json.loads(messages[2]["content"]) == {"category": "bug", "priority": "medium"}
    report = json.loads(done.stdout)
    assert report["kept"] == 12
    assert report["dropped"] == {"duplicate": 1, "too_long": 1}
    assert report["tokens_exact"] is True
    assert report["epochs"] == 8  # 12 examples: min(25, 100 // 12)
    tokens = report["tokens"]
    assert tokens["min"] <= tokens["mean"] <= tokens["max"] and tokens["total"] > 12 * 20
    assert report["training_price_source"].endswith("(gpt-3.5-turbo)")
    assert report["estimated_cost_usd"] == pytest.approx(tokens["total"] * 8 * 8.0 / 1e6)
    assert not (tmp_path / "train.validation.jsonl").exists()
    # The report's break-even takes the estimate: the task has no training_cost_usd.
    document = httpx.get(f"{setup[0].url}/v1/experiments/triage").json()
    assert document["break_even"]["training_cost_usd"] == report["estimated_cost_usd"]
    assert document["break_even"]["training_cost_source"] == "dataset export (estimate)"


def test_min_score_keeps_the_well_scored(
    setup: tuple[Gateway, Path, list[str]], server: RedisServer, tmp_path: Path
) -> None:
    out = tmp_path / "good.jsonl"
    done = export(setup, server, out, "triage", "--min-score", "0.7")
    assert done.returncode == 1  # three examples: too few
    assert "3 training examples" in done.stderr and not out.exists()


def test_the_split_is_deterministic_by_seed(
    setup: tuple[Gateway, Path, list[str]], server: RedisServer, tmp_path: Path
) -> None:
    held_out = []
    for run, seed in enumerate(["3", "3", "4"]):
        out = tmp_path / f"run{run}.jsonl"
        done = export(setup, server, out, "triage", "--validation-share", "0.2", "--seed", seed)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["validation"] == 2
        validation = lines(tmp_path / f"run{run}.validation.jsonl")
        assert len(lines(out)) == 10 and len(validation) == 2
        held_out.append(validation)
    assert held_out[0] == held_out[1]
    assert held_out[0] != held_out[2]


def test_fewer_than_ten_examples_exit_1_naming_the_count(
    setup: tuple[Gateway, Path, list[str]], server: RedisServer, tmp_path: Path
) -> None:
    done = export(setup, server, tmp_path / "x.jsonl", "short")
    assert done.returncode == 1
    assert "3 training examples for task 'short'" in done.stderr


def test_usage_errors_exit_2(
    setup: tuple[Gateway, Path, list[str]], server: RedisServer, tmp_path: Path
) -> None:
    out = tmp_path / "x.jsonl"
    plain = export(setup, server, out, "plain")
    assert plain.returncode == 2 and "tuning.system" in plain.stderr
    assert export(setup, server, out, "triage", "--since", "yesterday").returncode == 2
    assert export(setup, server, out, "triage", "--validation-share", "1").returncode == 2
    assert export(setup, server, out, "nope").returncode == 2


def test_over_http_and_with_another_prompt_format(
    setup: tuple[Gateway, Path, list[str]], server: RedisServer, tmp_path: Path
) -> None:
    gw = setup[0]
    out = tmp_path / "http.jsonl"
    done = export(setup, server, out, "triage", "--url", gw.url, "--as", "few_shot")
    assert done.returncode == 0, done.stderr
    system = lines(out)[0]["messages"][0]
    assert system["content"] == "You classify support tickets. Answer only with JSON."
    report = json.loads(done.stdout)
    assert report["prompt_format"] == "variants.few_shot.system"
    # The estimate went to the gateway, for its report's break-even.
    document = httpx.get(f"{gw.url}/v1/experiments/triage").json()
    assert document["break_even"]["training_cost_usd"] == report["estimated_cost_usd"]
    bad = httpx.post(f"{gw.url}/admin/capture/triage/dataset", json={"estimated_cost_usd": -1})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "estimated_cost_usd"


def test_since_is_an_inclusive_utc_date(
    setup: tuple[Gateway, Path, list[str]], server: RedisServer, tmp_path: Path
) -> None:
    later = export(setup, server, tmp_path / "later.jsonl", "triage", "--since", "2999-01-01")
    assert later.returncode == 1 and "0 training examples" in later.stderr
    today = export(setup, server, tmp_path / "today.jsonl", "triage", "--since", "2000-01-01")
    assert today.returncode == 0


def test_the_split_holds_the_same_examples_for_the_same_seed() -> None:
    entries = [
        {"messages": [{"role": "user", "content": f"q{i}"}], "answer": "a", "at": i}
        for i in range(20)
    ]
    words = Tokenizer(lambda text: len(text.split()), True, "words")

    def split(seed: int) -> Dataset:
        return build(
            entries,
            "S",
            limit=None,
            validation_share=0.25,
            seed=seed,
            tokenizer=words,
            context=None,
        )

    first, again, other = split(1), split(1), split(2)
    assert len(first.validation) == 5 and len(first.training) == 15
    assert first.validation == again.validation
    assert first.validation != other.validation
    assert check(first, words, "gpt-3.5-turbo", {}).epochs == 6  # 15 examples: 100 // 15
    limited = build(
        entries, None, limit=12, validation_share=0, seed=0, tokenizer=words, context=None
    )
    assert [e["messages"][0]["content"] for e in limited.training] == [
        f"q{i}" for i in range(8, 20)
    ]
