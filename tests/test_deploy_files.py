"""The Dockerfile and compose file, checked without a Docker engine: everything they
name exists, and their commands are commands this package really has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunegate.commands.cli import _parser

ROOT = Path(__file__).resolve().parent.parent


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_dockerfile_copies_paths_that_exist_and_runs_as_non_root() -> None:
    instructions = dockerfile()
    for op, args in instructions:
        if op == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source
    assert any(op == "USER" and args != "root" for op, args in instructions)
    assert any(op == "HEALTHCHECK" and "/healthz" in args for op, args in instructions)


def test_dockerfile_command_and_config_path_are_real() -> None:
    instructions = dict(dockerfile())
    command = shlex.split(instructions["CMD"].strip("[]").replace('", "', " ").replace('"', ""))
    assert command[0] == "tunegate"
    _parser().parse_args(command[1:])  # exits (SystemExit) on an unknown command or flag
    env = instructions["ENV"]
    config = re.search(r"TUNEGATE_CONFIG=/app/(\S+)", env)
    assert config is not None and (ROOT / config.group(1)).is_file()


def container_path(path: str) -> Path:
    assert path.startswith("/app/"), path
    return ROOT / path.removeprefix("/app/")


@pytest.mark.parametrize("service", ["gateway", "simulator"])
def test_compose_commands_refer_to_real_commands_and_files(service: str) -> None:
    spec = compose()["services"][service]
    command = spec.get("command") or ["tunegate", "serve"]
    assert command[0] == "tunegate"
    _parser().parse_args(command[1:])
    for arg in command:
        if arg.startswith("/app/"):
            assert container_path(arg).exists(), arg
    for value in (spec.get("environment") or {}).values():
        if isinstance(value, str) and value.startswith("/app/"):
            assert container_path(value).exists(), value


def test_compose_mounts_exist() -> None:
    for name, spec in compose()["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"
        if spec.get("build"):
            assert (ROOT / spec["build"] / "Dockerfile").is_file()
