"""What a `REDIS_URL` names (SPEC §10), parsed without I/O and without the redis client.

    redis://, rediss://, unix://                        one server (redis-py's own parsing)
    redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB][?sentinel_password=P]
    redis+cluster://[user:password@]host:port[,host:port...]

With Sentinel, `user:password@` authenticate the data nodes and `sentinel_password` the
sentinels (SPEC §12). A malformed URL is a `ConfigError` naming what is wrong and never
the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote

from tunegate.errors import ConfigError

SENTINEL = "redis+sentinel://"
CLUSTER = "redis+cluster://"
SINGLE = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class StoreUrl:
    kind: Literal["single", "sentinel", "cluster"]
    url: str = field(repr=False)  # as given (the single server's URL for redis-py)
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def parse_store_url(url: str) -> StoreUrl:
    """The parts of `url`; `ConfigError` for a scheme or shape SPEC §10 does not list."""
    if url.startswith(SINGLE):
        return StoreUrl("single", url)
    if url.startswith(SENTINEL):
        return _parse_multi(url, url[len(SENTINEL) :], "sentinel")
    if url.startswith(CLUSTER):
        return _parse_multi(url, url[len(CLUSTER) :], "cluster")
    scheme = url.split("://", 1)[0] if "://" in url else "(none)"
    raise ConfigError(
        f"REDIS_URL: unknown scheme {scheme!r}; use redis://, rediss://, unix://, "
        "redis+sentinel:// or redis+cluster://."
    )


def _parse_multi(url: str, rest: str, kind: Literal["sentinel", "cluster"]) -> StoreUrl:
    rest, _, query = rest.partition("?")
    userinfo, at, rest = rest.rpartition("@") if "@" in rest else ("", "", rest)
    location, _, path = rest.partition("/")
    username, password = _credentials(userinfo) if at else (None, None)
    hosts = tuple(_host(part) for part in location.split(","))
    params = parse_qs(query, keep_blank_values=True)
    unknown = set(params) - ({"sentinel_password"} if kind == "sentinel" else set())
    if unknown:
        raise ConfigError(f"REDIS_URL: unknown parameter(s) {', '.join(sorted(unknown))}.")
    if kind == "cluster":
        if path:
            raise ConfigError("REDIS_URL: a redis+cluster:// URL names no service or database.")
        return StoreUrl("cluster", url, hosts, username=username, password=password)
    service, _, db = path.partition("/")
    if not service:
        raise ConfigError("REDIS_URL: a redis+sentinel:// URL must name its service: .../SERVICE")
    if db and not db.isdigit():
        raise ConfigError(f"REDIS_URL: the database must be a number, not {db!r}.")
    sentinel_password = params.get("sentinel_password", [None])[-1]
    return StoreUrl(
        "sentinel",
        url,
        hosts,
        service=unquote(service),
        db=int(db or 0),
        username=username,
        password=password,
        sentinel_password=sentinel_password or None,
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None)


def _host(part: str) -> tuple[str, int]:
    host, colon, port = part.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"REDIS_URL: {part!r} is not host:port.")
    return host.strip("[]"), int(port)
