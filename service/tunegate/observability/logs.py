"""Logs as JSON lines (SPEC §3 Privacy): one object per record with its `extra` fields.
Prompts, outputs and keys are never passed to a logger by the gateway."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

import orjson

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The HTTP clients log every request at INFO: a line per upstream call, no news.
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class _Stamp(logging.Filter):
    def __init__(self, fields: Callable[[], Mapping[str, str]]) -> None:
        super().__init__()
        self._fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self._fields().items():
            setattr(record, key, value)
        return True


def stamp_log_lines(fields: Callable[[], Mapping[str, str]]) -> Callable[[], None]:
    """From now on, every line the root handlers write carries `fields()` taken where it
    is logged (tracing's `trace_id` and `span_id`); returns the undo."""
    stamp = _Stamp(fields)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(stamp)

    def undo() -> None:
        for handler in handlers:
            handler.removeFilter(stamp)

    return undo


_NOISY = ("httpx", "httpx2", "openai", "aiohttp")
