"""Sentinel credentials (SPEC §12): `user:password@` in a `redis+sentinel://` URL
authenticate the data nodes, `?sentinel_password=` the sentinels; a wrong or missing one
is a failed store call (fail open), never a crash, and never names the password."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.redis_topologies import SentinelGroup, redis_sentinel
from tunegate.state.store import Store

DATA_PASSWORD = "data-secret-7"
SENTINEL_PASSWORD = "sentinel-secret-9"


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    directory = tmp_path_factory.mktemp("sentinel-auth")
    with redis_sentinel(
        directory, password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD
    ) as running:
        yield running


async def works(url: str, timeout_ms: int = 2000) -> bool:
    store = Store(url, socket_timeout_ms=timeout_ms, connect_timeout_ms=timeout_ms)
    try:
        return await store.set("tunegate:auth-probe", b"1", 10) and (
            await store.get("tunegate:auth-probe") == b"1"
        )
    finally:
        await store.close()


@pytest.mark.anyio
async def test_both_passwords_reach_the_primary(group: SentinelGroup) -> None:
    assert SENTINEL_PASSWORD in group.url and DATA_PASSWORD in group.url
    assert await works(group.url)


@pytest.mark.anyio
async def test_a_wrong_or_missing_password_fails_without_naming_it(
    group: SentinelGroup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    no_sentinel_password = group.url.split("?")[0]
    wrong_data_password = group.url.replace(DATA_PASSWORD, "wrong-data")
    no_data_password = group.url.replace(f":{DATA_PASSWORD}@", "")
    for url in (no_sentinel_password, wrong_data_password, no_data_password):
        assert not await works(url, timeout_ms=300), url
    assert DATA_PASSWORD not in caplog.text and SENTINEL_PASSWORD not in caplog.text
    assert "wrong-data" not in caplog.text
