"""The coalescer on its own (no server): what one event-loop turn submits goes to `send`
as one batch, in order; each command gets its own reply or failure; a batch that fails
fails each of its commands; a caller that stops waiting leaves the others theirs."""

from __future__ import annotations

import asyncio

import pytest

from tunegate.state.coalesce import Coalescer

pytestmark = pytest.mark.anyio


class Refused(Exception):
    """A command the server refused (as redis-py's `ResponseError`)."""


class Echo:
    """A `send` that answers each command with its upper case, `Refused` for "bad",
    after one turn of the loop (the round trip), or blocks until `release` is set."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_with: Exception | None = None

    async def __call__(self, commands: list[str]) -> list[object]:
        self.batches.append(commands)
        await asyncio.sleep(0)
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [Refused(c) if c == "bad" else c.upper() for c in commands]


async def test_one_turns_commands_are_one_batch_in_order_each_with_its_reply() -> None:
    send = Echo()
    pipe = Coalescer(send)
    first = [pipe.submit(c) for c in ("a", "b", "c")]
    assert await asyncio.gather(*first) == ["A", "B", "C"]
    assert await pipe.submit("d") == "D"  # a later turn: a batch of its own
    assert send.batches == [["a", "b", "c"], ["d"]]


async def test_concurrent_callers_share_the_turns_batch() -> None:
    send = Echo()
    pipe = Coalescer(send)

    async def caller(n: int) -> object:
        return await pipe.submit(f"c{n}")

    replies = await asyncio.gather(*(caller(n) for n in range(32)))
    assert replies == [f"C{n}" for n in range(32)]
    assert len(send.batches) == 1


async def test_a_refused_command_fails_alone() -> None:
    pipe = Coalescer(Echo())
    good, bad, other = pipe.submit("a"), pipe.submit("bad"), pipe.submit("b")
    assert await good == "A"
    with pytest.raises(Refused):
        await bad
    assert await other == "B"


async def test_a_failed_batch_fails_each_command() -> None:
    send = Echo()
    send.fail_with = ConnectionError("reset")
    pipe = Coalescer(send)
    futures = [pipe.submit(c) for c in ("a", "b")]
    for future in futures:
        with pytest.raises(ConnectionError, match="reset"):
            await future
    send.fail_with = None
    assert await pipe.submit("c") == "C"  # the next batch is sent anew


async def test_a_caller_that_stops_waiting_leaves_the_others_their_replies() -> None:
    send = Echo()
    send.release.clear()
    pipe = Coalescer(send)
    leaving = asyncio.ensure_future(pipe.submit("a"))
    staying = pipe.submit("b")
    await asyncio.sleep(0.01)  # the batch is under way
    leaving.cancel()
    send.release.set()
    assert await staying == "B"
    assert leaving.cancelled()


async def test_aclose_waits_for_the_batches_under_way() -> None:
    send = Echo()
    send.release.clear()
    pipe = Coalescer(send)
    future = pipe.submit("a")
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(pipe.aclose())
    await asyncio.sleep(0.01)
    assert not closing.done()
    send.release.set()
    await closing
    assert future.result() == "A"
