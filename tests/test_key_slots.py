"""Redis keys and slots (SPEC §12): every key one Lua script touches shares a hash tag, so
on a Redis Cluster each script runs on one slot: `{sha256}` for a key's limits, `{digest}`
for a cache entry and its single-flight lock, `{task}` for a task's experiment sums."""

from __future__ import annotations

from redis.crc import key_slot

from tunegate.auth import hash_key
from tunegate.config.compiled import ApiKey
from tunegate.experiments.recorder import aggregate_key, pair_key
from tunegate.state.cache import KEY_PREFIX, LOCK_PREFIX, cache_key_for
from tunegate.state.limits import budget_key, window_key


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def api_key(secret: str) -> ApiKey:
    return ApiKey(
        name=secret,
        sha256=hash_key(secret),
        tenant="t",
        tasks=frozenset({"*"}),
        rpm=60,
        daily_budget_usd=1.0,
        admin=False,
    )


def test_a_keys_limits_share_its_digests_slot() -> None:
    key = api_key("k")
    days = [budget_key(key, day * 86_400.0) for day in range(5)]
    assert {slot(window_key(key)), *map(slot, days)} == {slot("{" + key.sha256 + "}")}
    other = api_key("other")
    assert slot(window_key(other)) != slot(window_key(key))  # spread over the cluster


def test_a_cache_entry_and_its_lock_share_a_slot() -> None:
    slots = set()
    for n in range(50):
        key = cache_key_for(
            tenant="t", task="x", fingerprint="f", messages=[{"content": str(n)}], params={}
        )
        lock = LOCK_PREFIX + key.removeprefix(KEY_PREFIX)
        assert slot(key) == slot(lock)
        slots.add(slot(key))
    assert len(slots) > 40  # entries spread over the slots


def test_a_tasks_experiment_sums_share_a_slot() -> None:
    keys = [aggregate_key("triage", v) for v in ("tuned", "few_shot", "candidate")]
    keys += [pair_key("triage", "tuned", "few_shot"), pair_key("triage", "few_shot", "tuned")]
    assert {slot(k) for k in keys} == {slot("{triage}")}
    assert slot(aggregate_key("reply-de", "tuned")) != slot(keys[0])
