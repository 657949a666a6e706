"""Output check config: a check that cannot work, and `reasks` beside its old name, fail
`tunegate check-config` naming the file and the YAML path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import gateway_config, task_config
from tunegate.commands.cli import main
from tunegate.config.compiled import load_config
from tunegate.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "gateway.yaml"


def with_checks(checks: list[Any], **output: Any) -> dict[str, Any]:
    task = task_config(output={"type": "text", "checks": checks, **output})
    return gateway_config("http://127.0.0.1:1", {"reply": task})


BROKEN = [
    (with_checks([{"language": "xx"}]), "tasks.reply.output.checks.0.language", "ISO 639-1"),
    (
        with_checks([{"max_chars": 600}, {"regex": "(unclosed"}]),
        "tasks.reply.output.checks.1.regex",
        "not a valid regular expression",
    ),
    (with_checks([{"max_sentences": -1}]), "tasks.reply.output.checks.0.max_sentences", "least 1"),
    (with_checks([{"max_chars": 0}]), "tasks.reply.output.checks.0.max_chars", "at least 1"),
    (
        with_checks([{"contains": "Ihr Acme-Team"}, {"not_contains": ["Als KI", "Acme-Team"]}]),
        "tasks.reply.output.checks.1.not_contains",
        "no answer can pass",
    ),
    (
        with_checks([{"contains": "Ihr Acme-Team"}, {"max_chars": 4}]),
        "tasks.reply.output.checks.1.max_chars",
        "no answer can pass",
    ),
    (with_checks([{"spelling": "de"}]), "tasks.reply.output.checks.0.spelling", "unknown check"),
    (with_checks([], on_fail="shrug"), "tasks.reply.output.on_fail", "reask"),
]


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("data", "yaml_path", "fix"), BROKEN, ids=[b[1] for b in BROKEN])
def test_a_check_that_cannot_work_is_named_by_its_path(
    tmp_path: Path,
    data: dict[str, Any],
    yaml_path: str,
    fix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert yaml_path in str(caught.value)
    assert fix in str(caught.value)
    assert main(["check-config", str(path)]) == 1
    assert yaml_path in capsys.readouterr().err


def test_reasks_and_its_old_name_together_are_refused(tmp_path: Path) -> None:
    data = gateway_config(
        "http://127.0.0.1:1", {"t": task_config(routing={"reasks": 2, "json_retries": 1})}
    )
    with pytest.raises(ConfigError, match=r"tasks\.t\.routing\.json_retries"):
        load_config(write(tmp_path, data))


@pytest.mark.parametrize(
    ("routing", "expected"), [({"reasks": 3, "json_retries": None}, 3), ({"json_retries": 2}, 2)]
)
def test_reasks_or_json_retries_sets_the_reasks(
    tmp_path: Path, routing: dict[str, Any], expected: int
) -> None:
    task = task_config(routing=routing)
    task["routing"] = {k: v for k, v in task["routing"].items() if v is not None}
    data = gateway_config("http://127.0.0.1:1", {"t": task})
    assert load_config(write(tmp_path, data)).tasks["t"].routing.reasks == expected


def test_the_example_reply_de_has_its_six_checks_and_one_detector() -> None:
    config = load_config(EXAMPLE)
    checks = config.tasks["reply-de"].checks
    assert checks is not None and checks.reask
    assert [c.kind for c in checks.checks] == [
        "language",
        "max_sentences",
        "max_chars",
        "contains",
        "not_contains",
        "regex",
    ]
    assert config.tasks["ticket-triage"].checks is None


def test_changing_the_checks_changes_the_fingerprint(tmp_path: Path) -> None:
    first = load_config(write(tmp_path, with_checks([{"max_chars": 600}])))
    second = load_config(write(tmp_path, with_checks([{"max_chars": 300}])))
    one, two = (c.tasks["reply"].variants["tuned"].fingerprint for c in (first, second))
    assert one != two
