"""Work that runs after the caller has its answer (shadow calls, judgements): at most
`limit` at once per process, never queued (the caller counts what did not start), let
finish for a while at shutdown, then cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    """A bounded set of background tasks."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._running: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` as a task; False when `limit` tasks are running (then `work` is
        closed without running)."""
        if len(self._running) >= self._limit:
            work.close()
            return False
        task = asyncio.get_running_loop().create_task(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return True

    async def aclose(self, timeout_s: float) -> None:
        """Let the running tasks finish (at most `timeout_s`), then cancel the rest."""
        running = set(self._running)
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=timeout_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
