"""Background (flow/background.py): bounded, never queued, finished or cancelled at close;
the lull wakes its waiters when the last request ends, or after their patience."""

from __future__ import annotations

import asyncio

import pytest

from tunegate.flow.background import Background, Lull


@pytest.mark.anyio
async def test_beyond_the_limit_work_is_refused_and_close_cancels_what_outlives_it() -> None:
    background = Background(limit=2)
    release = asyncio.Event()
    finished: list[str] = []

    async def work(name: str, wait: bool) -> None:
        if wait:
            await release.wait()
        finished.append(name)

    quick, stuck = work("quick", wait=False), work("stuck", wait=True)
    refused = work("refused", wait=False)
    assert background.start(quick) and background.start(stuck)
    assert background.start(refused) is False  # closed: no "never awaited" warning
    for _ in range(2):  # the quick one runs to its end, then its callback frees its place
        await asyncio.sleep(0)
    assert finished == ["quick"]
    assert background.start(work("later", wait=True))
    await background.aclose(timeout_s=0.01)  # nothing releases them: both cancelled
    assert finished == ["quick"]
    release.set()
    await asyncio.sleep(0)
    assert finished == ["quick"]


@pytest.mark.anyio
async def test_a_lull_wakes_its_waiters_when_the_last_request_ends() -> None:
    busy = [0]
    lull = Lull(lambda: busy[0])
    await lull.wait(patience_s=60)  # nothing being served: no wait at all
    busy[0] = 2
    waiters = [asyncio.create_task(lull.wait(patience_s=60)) for _ in range(3)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    busy[0] = 0
    lull.begin()
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
    lull.begin()  # nobody waits: nothing to do


@pytest.mark.anyio
async def test_under_steady_load_a_waiter_runs_after_its_patience_and_is_forgotten() -> None:
    lull = Lull(lambda: 1)  # a request is always being served
    waiter = asyncio.create_task(lull.wait(patience_s=0.01))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiter.done() and len(lull._waiters) == 1
    await asyncio.wait_for(waiter, timeout=5)  # the patience ran out: it goes on
    assert not lull._waiters  # nothing piles up while no lull comes


@pytest.mark.anyio
async def test_a_cancelled_waiter_is_forgotten() -> None:
    lull = Lull(lambda: 1)
    waiter = asyncio.create_task(lull.wait(patience_s=60))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not lull._waiters
