"""Experiment batches during a store outage (SPEC §10): a batch whose write fails is kept
and written with the next one, sums and request records alike, on a real server that is
killed and restarted."""

from __future__ import annotations

import uuid

import pytest

from tests.testkit.outcomes import sample
from tests.testkit.redis_server import RedisServer
from tunegate.experiments.recorder import Experiments
from tunegate.state.store import Store, StoreFailure


@pytest.mark.anyio
async def test_a_failed_batch_is_kept_and_written_once_the_store_is_back(
    server: RedisServer,
) -> None:
    store = Store(server.url, socket_timeout_ms=1000)
    experiments = Experiments(store, flush_s=60.0)  # only a settle writes
    task = f"outage-{uuid.uuid4().hex[:8]}"
    try:
        server.kill()
        outcomes = [sample(task) for _ in range(3)]
        for outcome in outcomes:
            experiments.record(outcome)
        await experiments.settle()  # every write fails: kept
        server.restart()
        experiments.record(sample(task))
        await experiments.settle()
        sums = await experiments.read(task, ["tuned"])
        assert not isinstance(sums, StoreFailure) and sums["tuned"]["n"] == 4
        for outcome in outcomes:
            assert await experiments.request(outcome.request_id) is not None
    finally:
        await store.close()
