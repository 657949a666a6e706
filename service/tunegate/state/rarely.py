"""Log lines that would otherwise repeat on every request (a store that is down fails
them all) at most once per interval for each kind: the store's transitions and errors,
the limits' fail-open and fail-closed notices."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RareLog:
    """`rare(level, kind, message, *args)` logs `message` unless a line of the same `kind`
    was logged less than `interval_s` ago (by `clock`). With `event_field`, each line
    carries its kind in that log field (e.g. `store_event`)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        event_field: str | None = None,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._event_field = event_field
        self._last: dict[str, float] = {}

    def __call__(self, level: int, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            return
        self._last[kind] = now
        extra = {self._event_field: kind} if self._event_field else None
        self._logger.log(level, message, *args, extra=extra)
