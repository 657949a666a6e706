"""The response cache (SPEC §3 Cache, §7 Cache hits): keys, entries, single-flight.

A key is a digest of a canonical encoding of everything that decides an answer: the key
format version, the tenant (unless the task's scope is `shared`), the task, the variant's
fingerprint (model, prompt, examples, parameters, schema) and the caller's messages and
applied parameters. `user`, `metadata` and `stream` are not part of it. Lookups happen
after the variant is chosen, so variants never share entries.

The cache fails open through the store: an unreachable, frozen or garbled Redis is a miss.
Concurrent identical misses share one upstream call: in one process through a future the
followers await; across instances through a short lock whose followers poll for the
leader's entry, for a bounded time, before going upstream on their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

from tunegate.store import Store

KEY_PREFIX = "tunegate:cache:"
LOCK_PREFIX = "tunegate:lock:"
KEY_VERSION = 1

Lookup = Literal["hit", "miss", "error"]


def cache_key_for(
    *,
    tenant: str | None,
    task: str,
    fingerprint: str,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
) -> str:
    """The cache key of a request served by the variant with `fingerprint`; `tenant`
    None for a task whose cache scope is `shared`."""
    canonical = orjson.dumps(
        [KEY_VERSION, tenant, task, fingerprint, messages, params], option=orjson.OPT_SORT_KEYS
    )
    return KEY_PREFIX + hashlib.blake2b(canonical, digest_size=20).hexdigest()


_MISSING = object()
# The JSON type of each stored field but `parsed` (any JSON value).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "variant": str,
    "content": str,
    "finish_reason": str,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cost_usd": (int, float),
    "json_status": (str, type(None)),
}


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored answer: what a hit replays, and what it saved."""

    variant: str
    content: str
    parsed: Any
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    json_status: str | None

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        """The entry in `raw`, or None for anything that is not one: not JSON, a field
        missing or of the wrong type. Garbage is a miss, never a 500 or a wrong answer."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or "parsed" not in data:
            return None
        for name, types in _FIELD_TYPES.items():
            value = data.get(name, _MISSING)
            # No conversions: str(None) would serve "None", a number as json_status a 500.
            if isinstance(value, bool) or not isinstance(value, types):
                return None
        return cls(
            variant=data["variant"],
            content=data["content"],
            parsed=data["parsed"],
            finish_reason=data["finish_reason"],
            prompt_tokens=data["prompt_tokens"],
            completion_tokens=data["completion_tokens"],
            cost_usd=float(data["cost_usd"]),
            json_status=data["json_status"],
        )


class Cache:
    """Cache reads, writes and single-flight over a `Store`. Each call returns the seconds
    it spent waiting on the store, for the overhead metric."""

    def __init__(
        self,
        store: Store,
        *,
        follower_wait_s: float = 2.0,
        poll_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._follower_wait_s = follower_wait_s
        self._poll_s = poll_s
        self._clock = clock
        self._leaders: dict[str, asyncio.Future[Entry | None]] = {}

    async def lookup(self, key: str) -> tuple[Entry | None, Lookup, float]:
        started = self._clock()
        raw = await self._store.get(key)
        waited = self._clock() - started
        if raw is None:
            return None, "error" if self._store.state == "degraded" else "miss", waited
        entry = Entry.decode(raw)
        return entry, "hit" if entry else "error", waited

    async def save(self, key: str, entry: Entry, ttl_s: int) -> float:
        started = self._clock()
        await self._store.set(key, entry.encode(), ttl_s)
        return self._clock() - started

    async def single_flight(
        self,
        key: str,
        lock_ttl_s: float,
        compute: Callable[[], Awaitable[Entry | None]],
    ) -> tuple[Entry | None, bool]:
        """Run `compute` once for concurrent callers of `key`: returns (entry, followed),
        `followed` True when the entry came from another caller's computation. A leader
        that fails gives its followers None, and they compute on their own."""
        leader = self._leaders.get(key)
        if leader is not None:
            entry = await asyncio.shield(leader)
            if entry is not None:
                return entry, True
            return await compute(), False
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self._leaders[key] = future
        lock = LOCK_PREFIX + key.removeprefix(KEY_PREFIX)
        token = None
        try:
            token = await self._store.acquire_lock(lock, max(1, int(lock_ttl_s * 1000)))
            if token is None and self._store.state == "ok":
                entry = await self._wait_for_other_instance(key)
                if entry is not None:
                    future.set_result(entry)
                    return entry, True
            entry = await compute()
            future.set_result(entry)
            return entry, False
        finally:
            if not future.done():
                future.set_result(None)
            del self._leaders[key]
            if token is not None:
                await self._store.release_lock(lock, token)

    async def _wait_for_other_instance(self, key: str) -> Entry | None:
        """Another instance leads on `key`: poll for its entry, for a bounded time."""
        deadline = self._clock() + self._follower_wait_s
        while self._clock() < deadline:
            await asyncio.sleep(self._poll_s)
            raw = await self._store.get(key)
            if raw is not None:
                return Entry.decode(raw)
        return None
