"""Experiment figures in the store: what each sample adds, the recorder that adds it, and
feedback scores (SPEC §4, §7 "Experiment samples").

Per task and variant one hash, `tunegate:exp:{<task>}:<variant>`, of counters and sums only
(bounded memory, shared by every instance). Fields, for the samples the variant was
chosen for (the `Outcome.sample` requests, rejected ones excluded):

    n            samples                      ok         answered by the chosen variant
    first_valid  first JSON check `valid`     repaired   repaired or re-asked
    calls        the variant's answered calls pt, ct     their prompt/completion tokens
    lat, lat_sq  request seconds, squared     h:<i>      latency histogram (stats buckets)
    cost, cost_sq  the chosen variant's own upstream cost (fallbacks' cost is theirs)
    cost_ok      cost of the samples that got a valid answer (for the delta method)
    first_ts, last_ts  unix time of the first and the latest sample
    fb_n, fb_s, fb_ss     feedback on samples (count, sum, sum of squares)
    fbx_n, fbx_s, fbx_ss  feedback on answers that were no sample (shown, not compared)
    chk_n, chk_first  samples whose first answer was checked; those that passed every check
    chkf:<kind>  samples whose first answer failed that kind of check
    js_n, js_s, js_ss     judge scores of samples (score/10: count, sum, sum of squares)

The hash expires `AGGREGATE_TTL_S` after its latest sample or score, so every key the
experiments write has a TTL. A request that got an answer also leaves
`tunegate:req:<id>` (task, tenant, served, chosen, sample) for `REQUEST_TTL_S`, so
feedback can find the serving variant; `tunegate:fb:<id>` marks a scored request.

Shadow calls (`shadow.py`) add to `tunegate:pair:{<task>}:<primary>:<shadow>`: `n` calls,
`answered`, `invalid`, `agree` (parsed outputs equal), `dl`/`dl_sq` and `dc`/`dc_sq`
(shadow minus primary latency and cost, over answered calls) and `cost` (the shadow's);
pairwise judgements add `jp_n` judged pairs, `jp_ties` and `jp_primary` (primary better).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import orjson

from tunegate.config.compiled import Task
from tunegate.experiments import fields as f
from tunegate.experiments.capture import dataset_cost, dataset_key
from tunegate.experiments.document import ExperimentsDocument
from tunegate.experiments.report import build_document
from tunegate.experiments.stats import bucket_of
from tunegate.records import JudgeOutcome, Outcome, ShadowOutcome
from tunegate.state.store import Store, StoreFailure

log = logging.getLogger("tunegate.experiments")

REQUEST_TTL_S = 7 * 86400
# Every key expires: an experiment's sums go this long after its latest sample or score.
AGGREGATE_TTL_S = 90 * 86400
MAX_PENDING = 10_000  # samples gathered and not yet written
FLUSH_S = 0.02
RETRY_S = 1.0  # a failed batch write is tried again this long after, with newer samples

# One task's sums of a batch (its keys share the hash tag `{task}`: one cluster slot).
# KEYS: the aggregate hashes. ARGV[1]: JSON {"sums": [[{field: int}, {field: float}]...],
# "now": unix time, "aggregate_ttl": s, "first_ts"/"last_ts": the names of those fields};
# every number but the counts and TTLs is a string, so no float is rounded through Lua.
_RECORD = """-- tunegate:experiments.sums:v2
local batch = cjson.decode(ARGV[1])
for j, sums in ipairs(batch.sums) do
    local key = KEYS[j]
    for field, n in pairs(sums[1]) do redis.call("HINCRBY", key, field, n) end
    for field, x in pairs(sums[2]) do redis.call("HINCRBYFLOAT", key, field, x) end
    redis.call("HSETNX", key, batch.first_ts, batch.now)
    redis.call("HSET", key, batch.last_ts, batch.now)
    redis.call("EXPIRE", key, batch.aggregate_ttl)
end
return 1
"""

_READ = """-- tunegate:experiments.read:v1
local result = {}
for i, key in ipairs(KEYS) do
    result[i] = redis.call("HGETALL", key)
end
return result
"""

# Feedback in two steps, since a script never mixes per-request and per-task keys (SPEC
# §12): the marker claims the request (1, or 0 when it already had feedback), then the
# score goes to the task's hash. KEYS: [feedback marker]. ARGV: [marker value, ttl].
_FEEDBACK_MARK = """-- tunegate:experiments.feedback-mark:v1
if redis.call("SET", KEYS[1], ARGV[1], "NX", "EX", tonumber(ARGV[2])) then return 1 end
return 0
"""
# KEYS: [aggregate hash]. ARGV: [score, score squared, aggregate ttl, the count, sum and
# sum-of-squares fields].
_FEEDBACK_SUMS = """-- tunegate:experiments.feedback-sums:v1
redis.call("HINCRBY", KEYS[1], ARGV[4], 1)
redis.call("HINCRBYFLOAT", KEYS[1], ARGV[5], ARGV[1])
redis.call("HINCRBYFLOAT", KEYS[1], ARGV[6], ARGV[2])
redis.call("EXPIRE", KEYS[1], tonumber(ARGV[3]))
return 1
"""


def aggregate_key(task: str, variant: str) -> str:
    return f"tunegate:exp:{{{task}}}:{variant}"


def pair_key(task: str, primary: str, shadow: str) -> str:
    return f"tunegate:pair:{{{task}}}:{primary}:{shadow}"


def request_key(request_id: str) -> str:
    return f"tunegate:req:{request_id}"


def feedback_key(request_id: str) -> str:
    return f"tunegate:fb:{request_id}"


@dataclass(frozen=True, slots=True)
class SampleFields:
    """What one sample adds to its chosen variant's hash."""

    ints: Mapping[str, int]
    floats: Mapping[str, float]


def sample_fields(outcome: Outcome) -> SampleFields | None:
    """The increments for `outcome`, or None when it is no experiment sample."""
    chosen = outcome.chosen
    if not outcome.sample or outcome.status == "rejected" or chosen is None:
        return None
    ok = int(outcome.status == "ok" and outcome.served == chosen)
    checks = [status for variant, status in outcome.json_results if variant == chosen]
    own = [c for c in outcome.calls if c.variant == chosen]
    answered = [c for c in own if c.error is None]
    cost = sum(c.cost_usd for c in own)
    ints = {
        f.N: 1,
        f.OK: ok,
        f.FIRST_VALID: int(bool(checks) and checks[0] == "valid"),
        f.REPAIRED: int("repaired" in checks or len(checks) > 1),
        f.CALLS: len(answered),
        f.PROMPT_TOKENS: sum(c.prompt_tokens for c in answered),
        f.COMPLETION_TOKENS: sum(c.completion_tokens for c in answered),
        f.histogram(bucket_of(outcome.seconds)): 1,
    }
    floats = {
        f.LATENCY: outcome.seconds,
        f.squared(f.LATENCY): outcome.seconds**2,
        f.COST: cost,
        f.squared(f.COST): cost * cost,
        f.COST_OK: cost * ok,
    }
    first = next((v for name, v in outcome.check_results if name == chosen), None)
    if first is not None:
        ints |= {f.CHECKED: 1, f.CHECKS_PASSED_FIRST: int(first.passed)}
        ints |= {f.check_failure(failed.kind): 1 for failed in first.failures}
    return SampleFields(ints, floats)


def judgement_fields(outcome: JudgeOutcome) -> tuple[str, SampleFields] | None:
    """The hash and increments of one judgement; None unless the judge answered."""
    if outcome.status != "ok":
        return None
    if outcome.kind == "point" and outcome.score is not None:
        score = outcome.score / 10
        n, total, total_sq = f.feedback(f.JUDGE_SCORE)
        fields = SampleFields({n: 1}, {total: score, total_sq: score * score})
        return aggregate_key(outcome.task, outcome.variant), fields
    if outcome.kind == "pair" and outcome.shadow is not None:
        ints = {
            f.JUDGED_PAIRS: 1,
            f.JUDGED_TIES: int(outcome.winner == "tie"),
            f.JUDGED_PRIMARY_WINS: int(outcome.winner == outcome.variant),
        }
        return pair_key(outcome.task, outcome.variant, outcome.shadow), SampleFields(ints, {})
    return None


def shadow_fields(outcome: ShadowOutcome) -> SampleFields | None:
    """What one shadow call adds to its pair's hash; None for a skipped one. Differences
    are shadow minus primary, over the calls the shadow answered (`ok`)."""
    if outcome.status == "skipped":
        return None
    answered = outcome.status == "ok"
    ints = {
        f.N: 1,
        f.ANSWERED: int(answered),
        f.INVALID: int(outcome.status == "invalid"),
        f.AGREE: int(bool(outcome.agree)),
    }
    floats = {f.COST: outcome.cost_usd}
    if answered:
        d_lat = outcome.seconds - outcome.primary_seconds
        d_cost = outcome.cost_usd - outcome.primary_cost_usd
        floats |= {
            f.D_LATENCY: d_lat,
            f.squared(f.D_LATENCY): d_lat * d_lat,
            f.D_COST: d_cost,
            f.squared(f.D_COST): d_cost * d_cost,
        }
    return SampleFields(ints, floats)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What feedback needs to know about an answered request."""

    task: str
    tenant: str
    served: str
    chosen: str | None
    sample: bool


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    recorded: bool
    record: RequestRecord


_Sums = tuple[dict[str, int], dict[str, float]]


class _Batch:
    """Samples waiting to be written: request records and per-hash sums, merged."""

    __slots__ = ("records", "size", "sums")

    def __init__(self) -> None:
        self.records: dict[str, str] = {}
        self.sums: dict[str, tuple[dict[str, int], dict[str, float]]] = {}
        self.size = 0

    def add(self, aggregate: str, fields: SampleFields) -> None:
        ints, floats = self.sums.setdefault(aggregate, ({}, {}))
        for name, n in fields.ints.items():
            ints[name] = ints.get(name, 0) + n
        for name, x in fields.floats.items():
            floats[name] = floats.get(name, 0.0) + x


class Experiments:
    """The recorder and the reads and writes of experiment figures (through `Store`).

    `record` never waits on the store: samples gather for `flush_s` and go in the
    background, one Lua script per task (sums merged per variant, keys under the task's
    hash tag) and one pipeline of SETs for the answered requests' records. `settle` writes
    what is gathered and waits for this process's writes (read-your-writes), `drain` at
    shutdown. A process killed outright loses at most its last `flush_s` of samples."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        request_ttl_s: int = REQUEST_TTL_S,
        flush_s: float = FLUSH_S,
    ) -> None:
        self._store = store
        self._clock = clock
        self._request_ttl_s = request_ttl_s
        self._flush_s = flush_s
        self._record_script = store.register(_RECORD)
        self._read_script = store.register(_READ)
        self._feedback_mark = store.register(_FEEDBACK_MARK)
        self._feedback_sums = store.register(_FEEDBACK_SUMS)
        self._batch = _Batch()
        self._timer: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[object]] = set()

    def record(self, outcome: Outcome) -> None:
        """The recorder: adds the sample to the batch; never waits."""
        fields = sample_fields(outcome)
        answered = outcome.served is not None and outcome.status in ("ok", "fallback")
        if fields is None and not answered:
            return
        if not self._room("a sample", outcome.request_id, outcome.task):
            return
        batch = self._batch
        if answered:
            batch.records[request_key(outcome.request_id)] = orjson.dumps(
                {
                    "task": outcome.task,
                    "tenant": outcome.tenant or "open",
                    "served": outcome.served,
                    "chosen": outcome.chosen,
                    # Feedback counts in the comparison only for the variant's own
                    # samples: a fallback's answer is no sample of the serving variant.
                    "sample": fields is not None and outcome.served == outcome.chosen,
                }
            ).decode()
        if fields is not None:
            assert outcome.chosen is not None
            batch.add(aggregate_key(outcome.task, outcome.chosen), fields)

    def record_shadow(self, outcome: ShadowOutcome) -> None:
        """The shadow recorder: adds the paired figures to the batch; never waits."""
        fields = shadow_fields(outcome)
        if fields is None or not self._room("a shadow pair", outcome.request_id, outcome.task):
            return
        self._batch.add(pair_key(outcome.task, outcome.primary, outcome.shadow), fields)

    def record_judgement(self, outcome: JudgeOutcome) -> None:
        """The judge recorder: adds a score or a preference to the batch; never waits."""
        found = judgement_fields(outcome)
        if found is None or not self._room("a judgement", outcome.request_id, outcome.task):
            return
        self._batch.add(*found)

    def _room(self, what: str, request_id: str, task: str) -> bool:
        """Count one more entry in the batch and have it written within `flush_s`; False
        (and a log line naming the request) when the batch is full."""
        if self._batch.size >= MAX_PENDING:
            log.warning(
                "experiments: the store is not keeping up; dropping %s",
                what,
                extra={"request_id": request_id, "task": task},
            )
            return False
        self._batch.size += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._flush)
        return True

    def _flush(self) -> None:
        """Start writing the gathered batch."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, _Batch()
        if not batch.size:
            return
        now = repr(self._clock())
        writes = [self._write_sums(sums, now) for sums in _by_task(batch.sums).values()]
        if batch.records:
            writes.append(self._write_records(batch.records))
        loop = asyncio.get_running_loop()
        for write in writes:
            task = loop.create_task(write)
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _write_records(self, records: dict[str, str]) -> None:
        encoded = {key: value.encode() for key, value in records.items()}
        if not await self._store.set_many(encoded, self._request_ttl_s):
            self._keep(records, {})

    async def _write_sums(self, sums: dict[str, _Sums], now: str) -> None:
        plan = {
            "sums": [
                [ints, {name: repr(x) for name, x in floats.items()}]
                for ints, floats in sums.values()
            ],
            "now": now,
            "aggregate_ttl": AGGREGATE_TTL_S,
            "first_ts": f.FIRST_TS,
            "last_ts": f.LAST_TS,
        }
        if await self._store.run(self._record_script, list(sums), [orjson.dumps(plan)]) is None:
            self._keep({}, sums)

    def _keep(self, records: dict[str, str], sums: dict[str, _Sums]) -> None:
        """A failed write goes back into the batch (SPEC §10: batches are kept and retried
        during an outage), written again `RETRY_S` later at the latest. A write that timed
        out after the server ran it is counted twice: at least once, never lost while the
        batch has room."""
        batch = self._batch
        if batch.size >= MAX_PENDING:
            log.warning("experiments: the store is not keeping up; dropping a sample")
            return
        batch.size += 1
        batch.records.update(records)
        for key, (ints, floats) in sums.items():
            batch.add(key, SampleFields(ints, floats))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(RETRY_S, self._flush)

    async def settle(self, timeout_s: float = 1.0) -> None:
        """Write what is gathered and wait (at most `timeout_s`) for this process's writes."""
        self._flush()
        pending = set(self._pending)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def drain(self) -> None:
        await self.settle(timeout_s=5.0)

    async def document(self, task: Task) -> ExperimentsDocument | StoreFailure:
        """`task`'s experiments document as the store has it now (this process's gathered
        samples written first), or the store's failure: no figures, not zeros."""
        await self.settle()
        sums = await self.read(task.name, task.variants)
        if isinstance(sums, StoreFailure):
            return sums
        pairs = await self.read_pairs(task.name, task.variants)
        if isinstance(pairs, StoreFailure):
            return pairs
        dataset = await self._store.get_checked(dataset_key(task.name))
        if isinstance(dataset, StoreFailure):
            return dataset
        return build_document(task, sums, pairs=pairs, dataset_cost_usd=dataset_cost(dataset))

    async def read(
        self, task: str, variants: Iterable[str]
    ) -> dict[str, dict[str, float]] | StoreFailure:
        """The hash of each variant of `task`, field -> number (empty when absent), or the
        store's failure."""
        names = list(variants)
        hashes = await self._read_hashes([aggregate_key(task, v) for v in names])
        if isinstance(hashes, StoreFailure):
            return hashes
        return dict(zip(names, hashes, strict=True))

    async def read_pairs(
        self, task: str, variants: Iterable[str]
    ) -> dict[tuple[str, str], dict[str, float]] | StoreFailure:
        """The shadow pair hashes of `task`, by (primary, shadow), for every ordered pair
        of `variants` (empty when absent), or the store's failure."""
        names = list(variants)
        pairs = [(a, b) for a in names for b in names if a != b]
        hashes = await self._read_hashes([pair_key(task, a, b) for a, b in pairs])
        if isinstance(hashes, StoreFailure):
            return hashes
        return dict(zip(pairs, hashes, strict=True))

    async def _read_hashes(self, keys: list[str]) -> list[dict[str, float]] | StoreFailure:
        """Each hash at `keys` in one script call, field -> number (empty when absent)."""
        reply = await self._store.run_checked(self._read_script, keys)
        if isinstance(reply, StoreFailure):
            return reply
        if not isinstance(reply, list) or len(reply) != len(keys):
            return StoreFailure("error")  # not what the script answers
        return [_parse_hash(flat) if isinstance(flat, list) else {} for flat in reply]

    async def request(self, request_id: str) -> RequestRecord | StoreFailure | None:
        """The stored record of an answered request (None: no such request), or the
        store's failure; this process's pending writes are waited for once when it is not
        found yet."""
        raw = await self._store.get_checked(request_key(request_id))
        if raw is None and (self._pending or self._batch.size):
            await self.settle()
            raw = await self._store.get_checked(request_key(request_id))
        if raw is None or isinstance(raw, StoreFailure):
            return raw
        data = orjson.loads(raw)
        return RequestRecord(
            task=str(data["task"]),
            tenant=str(data["tenant"]),
            served=str(data["served"]),
            chosen=data.get("chosen"),
            sample=bool(data.get("sample")),
        )

    async def add_feedback(
        self, record: RequestRecord, request_id: str, score: float, comment: str | None
    ) -> bool | None:
        """Count `score` for the variant that served the request (in the compared sums
        when it was a sample); False when it already had feedback, None when the store
        failed."""
        marker = orjson.dumps({"score": score, "comment": comment, "at": self._clock()})
        reply = await self._store.run(
            self._feedback_mark, [feedback_key(request_id)], [marker, self._request_ttl_s]
        )
        if reply is None:
            return None
        if reply != 1:
            return False
        await self._store.run(
            self._feedback_sums,
            [aggregate_key(record.task, record.served)],
            [
                repr(score),
                repr(score * score),
                AGGREGATE_TTL_S,
                *f.feedback(f.FEEDBACK if record.sample else f.FEEDBACK_NOT_SAMPLED),
            ],
        )
        return True


def _by_task(sums: dict[str, _Sums]) -> dict[str, dict[str, _Sums]]:
    """`sums` grouped by their keys' hash tag (`{task}`): one script call per slot."""
    groups: dict[str, dict[str, _Sums]] = {}
    for key, value in sums.items():
        tag = key[key.index("{") : key.index("}") + 1]
        groups.setdefault(tag, {})[key] = value
    return groups


def _parse_hash(flat: list[object]) -> dict[str, float]:
    fields: dict[str, float] = {}
    for name, value in zip(flat[::2], flat[1::2], strict=False):
        if isinstance(name, bytes) and isinstance(value, bytes):
            try:
                fields[name.decode()] = float(value)
            except ValueError:
                continue
    return fields
