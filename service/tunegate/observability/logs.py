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


def stamp_log_lines(fields: Callable[[], Mapping[str, str]]) -> Callable[[], None]:
    """From now on, every log record carries `fields()`, taken where it is made (tracing's
    `trace_id` and `span_id`), whichever handler writes it; returns the undo."""
    previous = logging.getLogRecordFactory()

    def stamped(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.__dict__.update(fields())
        return record

    logging.setLogRecordFactory(stamped)

    def undo() -> None:
        if logging.getLogRecordFactory() is stamped:
            logging.setLogRecordFactory(previous)

    return undo


_NOISY = ("httpx", "httpx2", "openai", "aiohttp")
