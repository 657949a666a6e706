"""Config loading: the example validates; broken files name the file, YAML path and fix;
`tunegate check-config` runs the same validator."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import gateway_config, task_config
from tunegate.commands.cli import main
from tunegate.config.compiled import load_config, missing_secrets
from tunegate.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "gateway.yaml"


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def good() -> dict[str, Any]:
    return gateway_config("http://127.0.0.1:1", {"triage": task_config()})


def test_the_example_config_is_valid_and_compiled() -> None:
    config = load_config(EXAMPLE)
    triage = config.tasks["ticket-triage"]
    assert triage.is_json and triage.schema is not None
    few = triage.variants["few_shot"]
    assert few.prefix[0]["role"] == "system"
    assert few.example_count == 4 and len(few.prefix) == 1 + 2 * 4
    assert triage.variants["tuned"].is_tuned and not few.is_tuned
    assert triage.variants["tuned"].fingerprint != few.fingerprint
    assert triage.routing.cumulative[-1][0] == 1.0
    assert config.tasks["reply-de"].output_type == "text"
    assert config.open_mode


def test_fingerprint_changes_with_the_prompt_and_not_with_routing(tmp_path: Path) -> None:
    base = load_config(write(tmp_path, good())).tasks["triage"].variants["tuned"].fingerprint
    changed = good()
    changed["tasks"]["triage"]["variants"]["tuned"]["system"] = "Something else."
    assert (
        load_config(write(tmp_path, changed)).tasks["triage"].variants["tuned"].fingerprint != base
    )
    rerouted = good()
    rerouted["tasks"]["triage"]["routing"]["weights"] = {"tuned": 1, "few_shot": 1}
    assert (
        load_config(write(tmp_path, rerouted)).tasks["triage"].variants["tuned"].fingerprint == base
    )


def broken(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(good())
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()

BROKEN = [
    (
        broken("tasks.triage.variants.tuned.upstream", "nope"),
        "tasks.triage.variants.tuned.upstream",
        "unknown upstream",
    ),
    (
        broken("tasks.triage.routing.fallback", ["ghost"]),
        "tasks.triage.routing.fallback.0",
        "no variant named 'ghost'",
    ),
    (
        broken("tasks.triage.routing.weights", {"tuned": 0, "few_shot": 0}),
        "tasks.triage.routing.weights",
        "all weights are 0",
    ),
    (broken("tasks.triage.routing.colour", "blue"), "tasks.triage.routing.colour", "unknown key"),
    (
        broken("tasks.triage.output.schema", {"type": "objekt"}),
        "tasks.triage.output.schema",
        "not a valid JSON Schema",
    ),
    (
        broken("tasks.triage.routing.weights", {"tuned": 1, "fewshot": 1}),
        "tasks.triage.routing.weights.fewshot",
        "no variant named",
    ),
    (
        broken("tasks.triage.variants.tuned.params", {"temprature": 0}),
        "tasks.triage.variants.tuned.params",
        "temprature",
    ),
    (broken("tasks.triage.routing.retries", "twice"), "tasks.triage.routing.retries", "integer"),
    (
        broken("tasks.triage.variants.tuned.model", _DELETE),
        "tasks.triage.variants.tuned.model",
        "missing",
    ),
    (broken("upstreams.sim.timeout_s", -1), "upstreams.sim.timeout_s", "greater than 0"),
]


@pytest.mark.parametrize(("data", "yaml_path", "fix"), BROKEN, ids=[b[1] for b in BROKEN])
def test_broken_config_names_file_path_and_fix(
    tmp_path: Path,
    data: dict[str, Any],
    yaml_path: str,
    fix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and yaml_path in message and fix in message
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert yaml_path in err and str(path) in err


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "ticket-triage" in capsys.readouterr().out


def test_not_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_missing_secret_is_named_at_serve_time(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, good()))
    problems = missing_secrets(config, {})
    assert (
        len(problems) == 1
        and "upstreams.sim.api_key_env" in problems[0]
        and "SIM_KEY" in problems[0]
    )
    assert missing_secrets(config, {"SIM_KEY": "x"}) == []


def test_tasks_dir_holds_one_file_per_task(tmp_path: Path) -> None:
    data = good()
    task = data["tasks"].pop("triage")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "triage.yaml").write_text(yaml.safe_dump(task))
    data["tasks_dir"] = "tasks"
    config = load_config(write(tmp_path, data))
    assert list(config.tasks) == ["triage"]
