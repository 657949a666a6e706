"""Work that runs after the caller has its answer (shadow calls, judgements): at most
`limit` at once per process, never queued (the caller counts what did not start), let
finish for a while at shutdown, then cancelled.

`Lull` tells such work when the process serves no caller request: a judgement's CPU
steps wait for one (at most a patience), so on a cache miss they run between requests
instead of in the middle of the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
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


class Lull:
    """The moments when no caller request is being served, for background work to use.

    `busy()` counts the requests being served (the in-flight gauge's count); whoever
    keeps that count calls `begin()` when it drops to zero. A waiter resumes on the loop
    iteration after that: the request that ended has had its answer written by then (its
    task writes the response in the same step that ends it). Under steady load there may
    be no lull at all, so a waiter gives up after its `patience_s` and runs anyway; what
    waits is bounded by whoever starts it (`Background`'s limit), never queued here."""

    __slots__ = ("_busy", "_waiters")

    def __init__(self, busy: Callable[[], int]) -> None:
        self._busy = busy
        self._waiters: set[asyncio.Future[None]] = set()

    def begin(self) -> None:
        """No request is being served now: wake every waiter (cheap when none waits)."""
        if self._waiters:
            waiters, self._waiters = self._waiters, set()
            for waiter in waiters:
                _wake(waiter)

    async def wait(self, patience_s: float) -> None:
        """Return at once when no request is being served, else at the next lull or
        after `patience_s`, whichever comes first."""
        if not self._busy():
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        timer = loop.call_later(patience_s, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


NEVER_BUSY = Lull(lambda: 0)
