"""RareLog (state/rarely.py): a kind of line at most once per interval, on a fake clock."""

from __future__ import annotations

import logging

import pytest

from tunegate.state.rarely import RareLog


def test_a_kind_is_logged_once_per_interval_and_other_kinds_apart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    rare = RareLog(logging.getLogger("test.rarely"), 10.0, clock=lambda: now[0], event_field="ev")
    with caplog.at_level(logging.INFO, logger="test.rarely"):
        rare(logging.WARNING, "down", "store down %s", 1)
        now[0] = 109.9
        rare(logging.WARNING, "down", "store down %s", 2)  # within the interval: dropped
        rare(logging.INFO, "ok", "store ok")  # another kind: logged
        now[0] = 110.0
        rare(logging.WARNING, "down", "store down %s", 3)  # the interval passed
    lines = [(r.levelno, r.getMessage(), getattr(r, "ev", None)) for r in caplog.records]
    assert lines == [
        (logging.WARNING, "store down 1", "down"),
        (logging.INFO, "store ok", "ok"),
        (logging.WARNING, "store down 3", "down"),
    ]
