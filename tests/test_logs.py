"""The log format: one JSON object per line, and no line per upstream call."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import redirect_stderr

import pytest

from tunegate.observability.logs import configure_logging


@pytest.fixture
def restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("httpx2", "openai")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def test_lines_are_json_and_http_clients_log_warnings_only(restored: None) -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        configure_logging("info")
        logging.getLogger("tunegate.test").info("hello", extra={"request_id": "r1"})
        logging.getLogger("httpx2").info("HTTP Request: POST ...")
        logging.getLogger("openai").warning("retrying")
    lines = [json.loads(line) for line in err.getvalue().splitlines()]
    assert [(line["logger"], line["msg"]) for line in lines] == [
        ("tunegate.test", "hello"),
        ("openai", "retrying"),
    ]
    assert lines[0]["request_id"] == "r1"
