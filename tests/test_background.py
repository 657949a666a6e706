"""Background (flow/background.py): bounded, never queued, finished or cancelled at close."""

from __future__ import annotations

import asyncio

import pytest

from tunegate.flow.background import Background


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
