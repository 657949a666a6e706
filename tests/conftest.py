"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin; one
simulated upstream per test module that asks for `sim`."""

from collections.abc import Iterator

import pytest

from tests.harness import Simulator


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = Simulator()
    yield simulator
    simulator.stop()
