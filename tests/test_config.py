"""Config loading: the example validates; broken files name the file, YAML path and fix;
`tunegate check-config` runs the same validator."""

from __future__ import annotations

import copy
import subprocess
import sys
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


# -- strictness (SPEC §7): duplicate keys, wrong types, unknown keys, with their lines --

DUPLICATED = """\
upstreams:
  sim: {base_url: "http://127.0.0.1:1/v1", timeout_s: 5}
tasks:
  triage:
    deadline_s: 5
    deadline_s: 6
    variants:
      tuned: {upstream: sim, model: m}
auth:
  keys:
    - name: checkout
      sha256: "%s"
      tenant: alpha
      tenant: beta
tasks:
  other:
    variants:
      tuned: {upstream: sim, model: m}
""" % ("ab" * 32)


def test_duplicate_keys_anywhere_are_refused_naming_path_and_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(DUPLICATED)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert lines == [
        f"{path}:6: tasks.triage.deadline_s: duplicate key 'deadline_s' "
        "(first at line 5, again at line 6); keep one.",
        f"{path}:14: auth.keys.0.tenant: duplicate key 'tenant' "
        "(first at line 13, again at line 14); keep one.",
        f"{path}:15: tasks: duplicate key 'tasks' (first at line 3, again at line 15); keep one.",
    ]
    assert main(["check-config", str(path)]) == 1
    assert "auth.keys.0.tenant: duplicate key" in capsys.readouterr().err


def test_a_duplicate_key_in_a_tasks_dir_file_is_refused(tmp_path: Path) -> None:
    data = good()
    del data["tasks"]
    data["tasks_dir"] = "tasks"
    (tmp_path / "tasks").mkdir()
    task = tmp_path / "tasks" / "triage.yaml"
    task.write_text(yaml.safe_dump(task_config()) + "deadline_s: 5\ndeadline_s: 6\n")
    with pytest.raises(ConfigError, match=rf"{task}:\d+: deadline_s: duplicate key"):
        load_config(write(tmp_path, data))


@pytest.mark.parametrize(
    ("key", "value", "refused"),
    [
        ("tasks.triage.variants.tuned.json_mode", "yes", 'valid boolean (got "yes")'),
        ("tasks.triage.cache", {"ttl_s": "3600"}, 'valid integer (got "3600")'),
        ("tasks.triage.deadline_s", "30", 'valid number (got "30")'),
        ("tasks.triage.routing.retries", 1.5, "valid integer (got 1.5)"),
        ("tasks.triage.variants.tuned.system", 42, "valid string (got 42)"),
        ("tasks.triage.variants.tuned.params", {"temperature": "0.2"}, 'a number (got "0.2")'),
        ("tasks.triage.variants.tuned.params", {"max_tokens": 6.5}, "an integer (got 6.5)"),
        ("tasks.triage.variants.tuned.params", {"seed": True}, "an integer (got true)"),
    ],
)
def test_values_are_never_coerced(tmp_path: Path, key: str, value: Any, refused: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, broken(key, value)))
    message = str(caught.value)
    assert refused in message and key in message


def test_numbers_may_be_integers_where_floats_are_expected(tmp_path: Path) -> None:
    data = broken("tasks.triage.deadline_s", 30)
    data["tasks"]["triage"]["routing"]["shadow"] = {"variant": "few_shot", "rate": 1}
    config = load_config(write(tmp_path, data))
    assert config.tasks["triage"].deadline_s == 30.0


def test_unknown_keys_and_cross_check_errors_name_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, broken("tasks.triage.routing.colour", "blue"))
    line = path.read_text().splitlines().index("      colour: blue") + 1
    with pytest.raises(ConfigError, match=rf"^{path}:{line}: tasks.triage.routing.colour: unknown"):
        load_config(path)
    path = write(tmp_path, broken("tasks.triage.routing.fallback", ["few_shot", "ghost"]))
    line = path.read_text().splitlines().index("      - ghost") + 1
    expected = rf"^{path}:{line}: tasks.triage.routing.fallback.1: no variant named 'ghost'"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_invalid_utf8_is_a_clean_message(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"upstreams:\n  sim: {base_url: 'http://h\xff/v1'}\n")
    done = subprocess.run(
        [sys.executable, "-m", "tunegate.commands.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"{path}:2: not valid UTF-8 (byte 0xff" in done.stderr
    assert "Traceback" not in done.stderr


def test_keys_file_adds_keys_and_names_its_own_problems(tmp_path: Path) -> None:
    data = good()
    data["auth"] = {"keys_file": "secret/keys.yaml"}
    (tmp_path / "secret").mkdir()
    keys = tmp_path / "secret" / "keys.yaml"
    digest = "a" * 64
    keys.write_text(yaml.safe_dump({"keys": [{"name": "svc", "sha256": digest, "tenant": "t"}]}))
    config = load_config(write(tmp_path, data))
    assert [key.sha256 for key in config.keys] == [digest]
    keys.write_text(yaml.safe_dump({"keys": [{"name": "svc", "sha256": "short", "tenant": "t"}]}))
    with pytest.raises(ConfigError, match=r"keys\.yaml:\d+: keys\.0\.sha256"):
        load_config(write(tmp_path, data))
    keys.unlink()
    with pytest.raises(ConfigError, match=r"auth\.keys_file: .*cannot read"):
        load_config(write(tmp_path, data))


def test_every_real_problem_is_reported_once_without_follow_on_errors(tmp_path: Path) -> None:
    data = good()
    triage = data["tasks"]["triage"]
    triage["variants"]["few_shot"]["upstream"] = "nope"
    triage["routing"]["shadow"] = {"variant": "ghost"}  # and no rate: a shape error
    data["tasks"]["other"] = task_config(weights={"tuned": 1, "fewshot": 1})
    data["auth"] = {
        "keys": [{"name": "k", "sha256": "ab" * 32, "tenant": "t", "tasks": ["triage"]}]
    }
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, data))
    found = sorted(line.split(": ", 1)[1] for line in str(caught.value).splitlines())
    assert found == [
        "tasks.other.routing.weights.fewshot: no variant named 'fewshot'; "
        "use one of: tuned, few_shot.",
        "tasks.triage.routing.shadow.rate: required key is missing: add it",
        "tasks.triage.routing.shadow.variant: no variant named 'ghost'; "
        "use one of: tuned, few_shot.",
        "tasks.triage.variants.few_shot.upstream: unknown upstream 'nope'; "
        "define it under `upstreams:` or use one of: sim.",
    ]


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("a: &a [*a]\nupstreams: {}\n", "an alias refers to the value that holds it"),
        (
            "x0: &x0 [a, a, a, a, a, a, a, a, a, a]\n"
            + "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]\n" for i in range(1, 9))
            + "upstreams: {}\n",
            "more than 100,000 values once aliases are expanded",
        ),
        ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ],
    ids=["recursive-alias", "billion-laughs", "deep"],
)
def test_hostile_yaml_is_refused_quickly_and_cleanly(
    tmp_path: Path, text: str, refused: str
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=refused):
        load_config(path)


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    text = yaml.safe_dump(good(), sort_keys=False)
    text = text.replace("      tuned:\n", "      tuned: &tuned\n", 1)
    text = text.replace("      few_shot:\n", "      few_shot:\n        <<: *tuned\n", 1)
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    few_shot = load_config(path).tasks["triage"].variants["few_shot"]
    assert few_shot.example_count == 1  # its own keys over the merged ones
    path.write_text(text + "x-unused: *tuned\n")
    with pytest.raises(ConfigError, match=r":\d+: x-unused: unknown key"):
        load_config(path)
