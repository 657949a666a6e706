"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin; one
simulated upstream and one real Redis-protocol server per test module that asks for `sim`
or `server` (a module may define its own, e.g. a simulator with a scenario)."""

from collections.abc import Iterator

import pytest

from tests.harness import Simulator
from tests.testkit.redis_server import RedisServer, redis_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = Simulator()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running
