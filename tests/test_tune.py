"""`tunegate tune start | status | cancel` as a person runs them, against a real simulator
process; and the candidate YAML it prints, merged into the config, passes check-config."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import BASE, TUNED, Simulator, gateway_config, task_config
from tunegate.commands.tune import Display
from tunegate.config.compiled import load_config
from tunegate.config.tuning import candidate_overlay
from tunegate.errors import ConfigError
from tunegate.flow.upstream import TuningEvent, TuningJob

SCENARIO = """
models:
  "*": {}
fine_tuning:
  validating_s: 0.05
  queued_s: 0.05
  running_s: 0.2
  steps: 2
  fail_suffixes: [doomed]
"""


def example(i: int) -> str:
    messages = [
        {"role": "system", "content": "Classify the support ticket as JSON."},
        {"role": "user", "content": f"The app crashes ({i})."},
        {"role": "assistant", "content": '{"category": "bug", "priority": "medium"}'},
    ]
    return json.dumps({"messages": messages})


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    path = tmp_path_factory.mktemp("tune") / "scenario.yaml"
    path.write_text(SCENARIO)
    simulator = Simulator(path)
    yield simulator
    simulator.stop()


@pytest.fixture
def config(sim: Simulator, tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config(sim.url, {"triage": task_config()})))
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(example(i) for i in range(12)) + "\n")
    return path


def tunegate(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIM_KEY": "sk-sim"}
    command = [sys.executable, "-m", "tunegate.commands.cli", *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def start(config: Path, dataset: Path, *extra: str) -> str:
    done = tunegate("tune", "start", "triage", "--dataset", dataset, "--config", config, *extra)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert job_id.startswith("ftjob-")
    return job_id


def follow(config: Path, job_id: str) -> subprocess.CompletedProcess[str]:
    return tunegate("tune", "status", job_id, "--follow", "--interval", "0.05", "--config", config)


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_a_job_runs_to_a_candidate_that_check_config_accepts(
    sim: Simulator, config: Path, dataset: Path, tmp_path: Path
) -> None:
    job_id = start(config, dataset, "--suffix", "triage", "--epochs", "2")
    done = follow(config, job_id)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.endswith("Fine-tuning job started") for line in lines)
    assert any("Step 4/4: training loss=" in line for line in lines)
    assert f"{job_id}: succeeded" in lines
    model = next(line.split(": ", 1)[1] for line in lines if line.startswith("fine-tuned model"))
    assert model.startswith(f"ft:{BASE}:tunegate-sim:triage:")
    overlay = yaml.safe_load(done.stdout[done.stdout.index("# Add to your config") :])
    candidate = overlay["tasks"]["triage"]["variants"]["candidate"]
    assert candidate == {
        "upstream": "sim",
        "model": model,
        "system": "Classify the support ticket as JSON.",
        "params": {"temperature": 0, "max_tokens": 64},
    }
    routing = overlay["tasks"]["triage"]["routing"]
    assert routing["shadow"] == {"variant": "candidate", "rate": 0.2}
    assert routing["weights"] == {"tuned": 100, "few_shot": 0, "candidate": 0}
    merged = tmp_path / "merged.yaml"
    merged.write_text(yaml.safe_dump(merge(yaml.safe_load(config.read_text()), overlay)))
    checked = tunegate("check-config", merged)
    assert checked.returncode == 0, checked.stderr
    # Without --follow: the state, exit 0; the job's metadata names the task.
    again = tunegate("tune", "status", job_id, "--config", config)
    assert again.returncode == 0 and f"fine-tuned model: {model}" in again.stdout
    # Against the merged config, the next candidate takes the next name.
    jobs = tunegate("tune", "status", job_id, "--config", merged, "--task", "triage")
    assert "candidate-2:" in jobs.stdout


def test_a_failing_job_exits_1_with_its_reason(config: Path, dataset: Path) -> None:
    job_id = start(config, dataset, "--suffix", "doomed")
    done = follow(config, job_id)
    assert done.returncode == 1
    assert "failed: training_failed: The job failed due to an internal error" in done.stderr
    assert tunegate("tune", "status", job_id, "--config", config).returncode == 0


def test_an_invalid_dataset_fails_validation(config: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.jsonl"
    short.write_text(example(1) + "\n")
    done = follow(config, start(config, short))
    assert done.returncode == 1
    assert "invalid_training_file" in done.stderr and "at least 10" in done.stderr


def test_cancel_exits_0_and_the_job_ends_cancelled(tmp_path: Path, dataset: Path) -> None:
    scenario = tmp_path / "slow.yaml"
    scenario.write_text(SCENARIO.replace("running_s: 0.2", "running_s: 600"))
    slow = Simulator(scenario)
    try:
        config = tmp_path / "slow-gateway.yaml"
        config.write_text(yaml.safe_dump(gateway_config(slow.url, {"triage": task_config()})))
        cancel_and_check(config, dataset)
    finally:
        slow.stop()


def cancel_and_check(config: Path, dataset: Path) -> None:
    job_id = start(config, dataset)
    cancelled = tunegate("tune", "cancel", job_id, "--config", config)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{job_id}: cancelled"
    done = follow(config, job_id)
    assert done.returncode == 1 and "cancelled" in done.stderr
    again = tunegate("tune", "cancel", job_id, "--config", config)
    assert again.returncode == 1 and "already cancelled" in again.stderr


def test_usage_errors_exit_2(config: Path, dataset: Path, tmp_path: Path) -> None:
    unknown = tunegate("tune", "start", "nope", "--dataset", dataset, "--config", config)
    assert unknown.returncode == 2 and "no task 'nope'" in unknown.stderr
    missing = tunegate("tune", "start", "triage", "--dataset", tmp_path / "x", "--config", config)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert tunegate("tune", "start", "triage", "--config", config).returncode == 2
    wrong = tunegate("tune", "status", "ftjob-x", "--upstream", "other", "--config", config)
    assert wrong.returncode == 2 and "no upstream 'other'" in wrong.stderr
    gone = tunegate("tune", "status", "ftjob-nope", "--config", config)
    assert gone.returncode == 1 and "404" in gone.stderr


def test_the_candidate_name_moves_on_when_taken(sim: Simulator, tmp_path: Path) -> None:
    task = task_config()
    task["variants"]["candidate"] = {"upstream": "sim", "model": TUNED}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config(sim.url, {"triage": task})))
    overlay = candidate_overlay(load_config(path).tasks["triage"], "ft:x", "sim")
    routing: Any = overlay["tasks"]
    assert list(routing["triage"]["variants"]) == ["candidate-2"]
    assert routing["triage"]["routing"]["shadow"] == {"variant": "candidate-2", "rate": 0.2}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_steps_become_a_progress_line() -> None:
    out = Terminal()
    display = Display(out, clock=lambda: 0.0)
    job = TuningJob("ftjob-1", "running", BASE, None, None, None, 3, {})
    events = [
        TuningEvent("e1", 0, "info", "Fine-tuning job started"),
        TuningEvent("e2", 1, "info", "Step 6/12: training loss=0.5"),
    ]
    seen = display.events(events, set(), job)
    assert seen == {"e1", "e2"}
    shown = out.getvalue()
    assert "Fine-tuning job started\n" in shown
    assert "Step 6/12" not in shown
    assert shown.endswith("\r\x1b[Krunning [############............] step 6/12  0 s")


def test_a_tuning_upstream_must_exist(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    task = task_config(tuning={"base_model": "gpt-4o-mini-2024-07-18", "upstream": "nowhere"})
    path.write_text(yaml.safe_dump(gateway_config(sim.url, {"triage": task})))
    with pytest.raises(ConfigError, match=r"tasks\.triage\.tuning\.upstream: unknown upstream"):
        load_config(path)
