"""The lifecycle demo's own files (the whole demo runs in about a minute: `./scripts/demo
--lifecycle`): its scenario loads, and its config, before and after the candidate joins,
is one the gateway accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunegate.commands.lifecycle import SCENARIO, TASK, _config, _merge
from tunegate.config.compiled import load_config
from tunegate.config.tuning import candidate_overlay, prompt_format
from tunegate.simulator.scenario import load_scenario


def test_the_scenario_tunes_in_seconds_to_a_better_model() -> None:
    scenario = load_scenario(SCENARIO)
    tuning = scenario.tuning
    assert tuning.validating_s + tuning.queued_s + tuning.running_s <= 10
    base = scenario.models["gpt-3.5-turbo"].quality
    assert base.valid_with_examples is not None
    assert tuning.model.quality.valid > base.valid_with_examples


def test_the_config_captures_and_takes_its_candidate(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(_config()))
    task = load_config(path).tasks[TASK]
    assert task.capture is not None and task.capture.rate == 1.0
    assert prompt_format(task).source == "tuning.system"
    merged = _merge(_config(), candidate_overlay(task, "ft:gpt-3.5-turbo:x:triage:1", "openai"))
    path.write_text(yaml.safe_dump(merged))
    joined = load_config(path).tasks[TASK]
    assert joined.routing.shadow is not None and joined.routing.shadow.variant == "candidate"
    assert joined.routing.weights == {"few_shot": 100.0, "candidate": 0.0}
