"""The response cache (SPEC §3 Cache, §7 Cache hits): keys, entries, single-flight.

A key is a digest of a canonical encoding of everything that decides an answer: the key
format version, the tenant (unless the task's scope is `shared`), the task, the variant's
fingerprint (model, prompt, examples, parameters, schema) and the caller's messages and
applied parameters. `user`, `metadata` and `stream` are not part of it. Lookups happen
after the variant is chosen, so variants never share entries.

Hot entries are also kept in each process's memory for the task's `local_ttl_s` (1 s by
default; at most `LOCAL_ENTRIES`, least recently used first out): a repeated request then
costs no round trip, and Redis sees one read per hot key per second per process. An entry
never changes under its key (the key covers everything that decides the answer), so the
only staleness is an entry outliving its Redis TTL, or a Redis fault, by that second.

The cache fails open through the store: an unreachable, frozen or garbled Redis is a miss.
Concurrent identical misses share one upstream call: in one process through a future the
followers await; across instances through a short lock whose followers poll for the
leader's entry, for a bounded time, before going upstream on their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from tunegate.state.store import Store, StoreFailure

KEY_PREFIX = "tunegate:cache:"
LOCK_PREFIX = "tunegate:lock:"
KEY_VERSION = 1
LOCAL_ENTRIES = 4096

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
    # The digest is the key's hash tag: the entry and its lock share one cluster slot.
    return KEY_PREFIX + "{" + hashlib.blake2b(canonical, digest_size=20).hexdigest() + "}"


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
        return orjson.dumps(self)  # orjson writes dataclasses natively (asdict: 10x slower)

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


@dataclass(frozen=True, slots=True)
class Write:
    """What a computation wants stored: `entry` at `key` for `ttl_s` seconds. The key
    can differ from the one read (a fallback's answer goes under its own variant's)."""

    key: str
    entry: Entry
    ttl_s: int


@dataclass(frozen=True, slots=True)
class Read:
    """What `Cache.read_through` found or made. `entry` is None when the computation
    stored nothing; `waited` is the time spent on the store."""

    entry: Entry | None
    lookup: Lookup
    waited: float


@dataclass(slots=True)
class _Lock:
    """A key's single-flight lock across instances: `held` once claimed, until released."""

    key: str
    token: str
    held: bool = False


# One round trip for a lookup that, on a miss, claims the key's single-flight lock.
_LOOKUP_OR_CLAIM = """-- tunegate:cache.lookup-or-claim:v2
local value = redis.call("GET", KEYS[1])
if value then return {1, value} end
if redis.call("SET", KEYS[2], ARGV[1], "NX", "PX", ARGV[2]) then return {0, 1} end
return {0, 0}
"""
# One round trip for the leader's save and the release of its lock (if still its own).
_SAVE_AND_RELEASE = """-- tunegate:cache.save-and-release:v2
redis.call("SET", KEYS[1], ARGV[1], "EX", ARGV[2])
if redis.call("GET", KEYS[2]) == ARGV[3] then redis.call("DEL", KEYS[2]) end
return 1
"""
_RELEASE = """-- tunegate:cache.release:v2
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"""


class Cache:
    """Cache reads, writes and single-flight over a `Store`. Each call returns the seconds
    it spent waiting on the store, for the overhead metric.

    A miss costs two round trips to Redis, a hit one: the lookup claims the lock, and the
    leader's save releases it (each shared with the commands other requests issue in the
    same event-loop turn: the store pipelines them). Both keys of a script share the hash
    tag `{digest}`, so on a Redis Cluster they live in one slot.

    When it serves no other request (`busy()`, the in-flight count, is 1 at most), the
    leader answers without waiting for its save (`Store.run_later`): the answer leaves
    while the save is on the wire. Meanwhile the entry is in this process's memory (for
    `local_ttl_s`) and the lock is held until the save lands, so another instance's
    identical request waits for the entry rather than computing it again; a failed save
    counts as a store failure like any. With other requests in flight the leader waits:
    its answer then leaves with theirs when the batch's replies arrive (bench at c=32:
    0.43 ms of gateway CPU per miss waiting, 0.49 ms not; at c=1 not waiting cut the
    miss p50 by 0.1 ms). Other saves (streams, write-only calls) are never waited for."""

    def __init__(
        self,
        store: Store,
        *,
        follower_wait_s: float = 2.0,
        poll_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        busy: Callable[[], int] = lambda: 0,
    ) -> None:
        self._store = store
        self._busy = busy
        self._follower_wait_s = follower_wait_s
        self._poll_s = poll_s
        self._clock = clock
        # Keys being looked up or computed here, and what their leader found or made.
        self._leaders: dict[str, asyncio.Future[tuple[Entry | None, Lookup]]] = {}
        self._recent = _Recent(LOCAL_ENTRIES, clock)
        self._lookup_or_claim = store.register(_LOOKUP_OR_CLAIM)
        self._save_and_release = store.register(_SAVE_AND_RELEASE)
        self._release = store.register(_RELEASE)

    async def lookup(
        self, key: str, local_ttl_s: float = 0.0
    ) -> tuple[Entry | None, Lookup, float]:
        entry = self._recent.get(key)
        if entry is not None:
            return entry, "hit", 0.0
        started = self._clock()
        raw = await self._store.get_checked(key)
        waited = self._clock() - started
        if isinstance(raw, StoreFailure):
            return None, "error", waited
        if raw is None:
            return None, "miss", waited
        entry = Entry.decode(raw)
        if entry is not None:
            self._recent.put(key, entry, local_ttl_s)
        return entry, "hit" if entry else "error", waited

    def save(self, write: Write, local_ttl_s: float = 0.0) -> None:
        """Store `write` (sent, not waited for)."""
        self._recent.put(write.key, write.entry, local_ttl_s)
        self._store.set_later(write.key, write.entry.encode(), write.ttl_s)

    async def read_through(
        self,
        key: str,
        lock_ttl_s: float,
        compute: Callable[[], Awaitable[Write | None]],
        local_ttl_s: float = 0.0,
    ) -> Read:
        """The entry at `key`, or else `compute`'s, run once for concurrent callers of
        `key`: in this process, followers await the leader's future (and count its
        lookup, a hit when the leader found the entry); across instances,
        the leader holds a lock and others poll for its entry, for a bounded time. A
        leader that fails or stores nothing gives its followers None, and they compute
        on their own. `compute` raising propagates to its caller only."""
        entry = self._recent.get(key)
        if entry is not None:
            return Read(entry, "hit", waited=0.0)
        leader = self._leaders.get(key)
        if leader is not None:
            return await self._follow(leader, compute, local_ttl_s)
        future: asyncio.Future[tuple[Entry | None, Lookup]] = (
            asyncio.get_running_loop().create_future()
        )
        self._leaders[key] = future
        lock = _Lock(LOCK_PREFIX + key.removeprefix(KEY_PREFIX), secrets.token_hex(16))
        try:
            read, shared = await self._lead(key, lock, lock_ttl_s, compute, local_ttl_s)
            if shared is not None:
                future.set_result((read.entry, shared))
            return read
        finally:
            if not future.done():
                future.set_result((None, "miss"))  # the followers compute on their own
            del self._leaders[key]
            if lock.held:
                await self._store.run(self._release, keys=(lock.key,), args=(lock.token,))

    async def _follow(
        self,
        leader: asyncio.Future[tuple[Entry | None, Lookup]],
        compute: Callable[[], Awaitable[Write | None]],
        local_ttl_s: float,
    ) -> Read:
        """Another caller in this process leads on the key: its entry, else our own."""
        entry, lookup = await asyncio.shield(leader)
        if entry is not None:
            return Read(entry, lookup, waited=0.0)
        return await self._compute_alone(compute, "miss", 0.0, local_ttl_s)

    async def _lead(
        self,
        key: str,
        lock: _Lock,
        lock_ttl_s: float,
        compute: Callable[[], Awaitable[Write | None]],
        local_ttl_s: float,
    ) -> tuple[Read, Lookup | None]:
        """Look the key up and claim its lock in one round trip; then the stored entry,
        another instance's, or our computation's. Also what this process's followers
        get: the lookup they count with the entry, or None (they compute on their own)."""
        started = self._clock()
        reply = await self._store.run(
            self._lookup_or_claim,
            keys=(key, lock.key),
            args=(lock.token, max(1, int(lock_ttl_s * 1000))),
        )
        waited = self._clock() - started
        if reply is None:  # the store failed: a miss that counts as an error
            return await self._compute_alone(compute, "error", waited, local_ttl_s), None
        found, lock.held = _parse_claim(reply)
        if found is not None:
            entry = Entry.decode(found)
            if entry is None:  # garbage under the key
                return await self._compute_alone(compute, "error", waited, local_ttl_s), None
            self._recent.put(key, entry, local_ttl_s)
            return Read(entry, "hit", waited), "hit"
        if not lock.held:
            entry = await self._wait_for_other_instance(key)
            if entry is not None:
                return Read(entry, "miss", waited), "miss"
            return await self._compute_alone(compute, "miss", waited, local_ttl_s), None
        return await self._compute_and_release(lock, compute, waited, local_ttl_s), "miss"

    async def _compute_and_release(
        self,
        lock: _Lock,
        compute: Callable[[], Awaitable[Write | None]],
        waited: float,
        local_ttl_s: float,
    ) -> Read:
        """The lock's holder: compute, then save and release in one command, sent."""
        write = await compute()
        if write is None:
            return Read(None, "miss", waited)
        self._recent.put(write.key, write.entry, local_ttl_s)
        keys, args = (write.key, lock.key), (write.entry.encode(), write.ttl_s, lock.token)
        if self._busy() > 1:
            started = self._clock()
            await self._store.run(self._save_and_release, keys=keys, args=args)
            waited += self._clock() - started
        else:
            self._store.run_later(self._save_and_release, keys=keys, args=args)
        lock.held = False  # released by the save
        return Read(write.entry, "miss", waited)

    async def _compute_alone(
        self,
        compute: Callable[[], Awaitable[Write | None]],
        lookup: Lookup,
        waited: float,
        local_ttl_s: float,
    ) -> Read:
        write = await compute()
        if write is None:
            return Read(None, lookup, waited)
        self.save(write, local_ttl_s)
        return Read(write.entry, lookup, waited)

    async def _wait_for_other_instance(self, key: str) -> Entry | None:
        """Another instance leads on `key`: poll for its entry, for a bounded time."""
        deadline = self._clock() + self._follower_wait_s
        while self._clock() < deadline:
            await asyncio.sleep(self._poll_s)
            raw = await self._store.get(key)
            if raw is not None:
                return Entry.decode(raw)
        return None


class _Recent:
    """Entries seen lately, each until its own expiry; the least recently used goes first
    when `size` are held."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Entry]] = OrderedDict()

    def get(self, key: str) -> Entry | None:
        held = self._entries.get(key)
        if held is None:
            return None
        if held[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return held[1]

    def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        self._entries[key] = (self._clock() + ttl_s, entry)
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


def _parse_claim(reply: object) -> tuple[bytes | None, bool]:
    """(the stored value, or None; whether the lock was claimed) from `_LOOKUP_OR_CLAIM`."""
    if isinstance(reply, list) and len(reply) == 2:
        flag, value = reply
        if flag == 1 and isinstance(value, bytes):
            return value, False
        return None, value == 1
    return None, False
