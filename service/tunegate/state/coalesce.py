"""Commands issued in one event-loop turn, sent together (automatic pipelining).

Under load many requests reach the store in the same turn of the event loop; each
round trip costs a pooled connection taken and given back, a socket write, a read and a
wake-up, whatever it carries. `Coalescer.submit` queues a command and returns its own
future; the first command of a turn starts one task, which runs in the next turn and
hands everything queued by then to `send` as one batch. Alone (one caller at a time) a
command costs that one task, which replaces the one redis-py starts for every write
with a socket timeout; at concurrency 32 the round trip is shared.

Each command keeps its own outcome: `send` answers one reply per command, an exception
instance standing for a command the server refused (a script error), and raises when
the whole batch failed (refused, reset, timed out), which every command of the batch
then raises. A caller that stops waiting (cancelled) cancels only its own future: the
batch still reads every reply, so the connection stays in step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

C = TypeVar("C")

Send = Callable[[list[C]], Awaitable[Sequence[object]]]


class Coalescer(Generic[C]):
    """Batches of the commands submitted within one event-loop turn, each sent by `send`."""

    def __init__(self, send: Send[C]) -> None:
        self._send = send
        self._queued: list[tuple[C, asyncio.Future[object]]] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def submit(self, command: C) -> asyncio.Future[object]:
        """Queue `command` for this turn's batch; its reply, or its error, in the future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        if self._queued is None:
            self._queued = []
            task = loop.create_task(self._flush())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._queued.append((command, future))
        return future

    async def aclose(self) -> None:
        """Wait for the batches under way (each is bounded by the store's timeouts)."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _flush(self) -> None:
        queued, self._queued = self._queued or [], None
        try:
            replies = await self._send([command for command, _ in queued])
        except BaseException as exc:
            # Cancelled (the loop is closing): the callers fail open, they are not cancelled.
            error = exc if isinstance(exc, Exception) else ConnectionError("store closed")
            for _, future in queued:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(queued, replies, strict=True):
            if future.done():  # its caller stopped waiting
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
