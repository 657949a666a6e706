"""REDIS_URL's forms (SPEC §10, §12 Sentinel credentials), parsed without a server."""

from __future__ import annotations

import pytest

from tunegate.errors import ConfigError
from tunegate.state.store_url import StoreUrl, parse_store_url


def test_single_server_urls_pass_through() -> None:
    for url in ("redis://h:6379/0", "rediss://:pw@h:6380", "unix:///run/redis.sock"):
        assert parse_store_url(url) == StoreUrl("single", url)


def test_sentinel_url_names_hosts_service_db_and_both_credentials() -> None:
    url = "redis+sentinel://app:s%40cret@s1:26379,s2:26380/mymaster/2?sentinel_password=sp"
    parsed = parse_store_url(url)
    assert parsed.kind == "sentinel"
    assert parsed.hosts == (("s1", 26379), ("s2", 26380))
    assert (parsed.service, parsed.db) == ("mymaster", 2)
    assert (parsed.username, parsed.password, parsed.sentinel_password) == ("app", "s@cret", "sp")
    assert "s@cret" not in repr(parsed) and "sp" not in repr(parsed).replace("sentinel", "")


def test_sentinel_url_without_credentials_or_db() -> None:
    parsed = parse_store_url("redis+sentinel://127.0.0.1:26379/tunegate")
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == (
        "tunegate",
        0,
        None,
        None,
    )


def test_cluster_url_names_its_seed_nodes() -> None:
    parsed = parse_store_url("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001")
    assert parsed.kind == "cluster"
    assert parsed.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (parsed.username, parsed.password) == (None, "pw")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:1", "unknown scheme 'http'"),
        ("localhost:6379", "unknown scheme '(none)'"),
        ("redis+sentinel://s1:26379", "must name its service"),
        ("redis+sentinel://s1:26379/m/x", "database must be a number"),
        ("redis+sentinel://s1/m", "'s1' is not host:port"),
        ("redis+sentinel://:hunter2@s1:99999/m", "'s1:99999' is not host:port"),
        ("redis+cluster://c1:7000/0", "names no service or database"),
        ("redis+cluster://c1:7000?sentinel_password=x", "unknown parameter(s) sentinel_password"),
    ],
)
def test_malformed_urls_are_refused_without_the_password(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_store_url(url)
    assert says in str(caught.value)
    assert "hunter2" not in str(caught.value)
