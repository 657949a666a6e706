"""Upstream faults: the model endpoint rate-limits, runs out of quota, fails, hangs,
drips, refuses, drops, answers broken JSON or megabytes, or loses the tuned model. Each
scenario points one task's tuned variant at a simulated model with that fault profile
(see `stack.MODELS`); the few-shot fallback stays healthy."""

from __future__ import annotations

import asyncio

from bench.fault_suite.core import Scenario, Suite, Verdict
from bench.fault_suite.load import Outcome, Tally, chat, run_load, ticket
from bench.fault_suite.stack import MODELS, process_figures, tuned

CONCURRENCY = 30
SECONDS = 8.0


async def _load(
    suite: Suite,
    task: str,
    *,
    seconds: float | None = SECONDS,
    total: int | None = None,
    stream: bool = False,
    json_task: bool = True,
    concurrency: int = CONCURRENCY,
) -> Tally:
    client = suite.client(suite.keys.main.key)
    await suite.sim_reset()

    async def one(index: int) -> Outcome:
        return await chat(client, task, ticket(index), stream=stream, json_task=json_task)

    return await run_load(one, concurrency=concurrency, duration_s=seconds, total=total)


def _fell_back(outcome: Outcome) -> bool:
    return outcome.headers.get("x-tunegate-fallback") == "tuned"


async def _attempts(suite: Suite, model: str) -> int:
    return len(await suite.sim_requests(model))


async def storm_429(suite: Suite) -> Verdict:
    tally = await _load(suite, "storm429")
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    attempts = await _attempts(suite, tuned("storm429"))
    # retries: 2, so at most three attempts on the tuned model per request.
    verdict.check("<= 3 upstream attempts per request", attempts <= 3 * tally.sent)
    retry_after = float(MODELS[tuned("storm429")]["retry_after_s"])
    fell_back = [o for o in tally.outcomes if _fell_back(o)]
    quickest = min((o.latency_s for o in fell_back), default=2 * retry_after)
    verdict.check(
        f"fallbacks waited Retry-After twice (>= {2 * retry_after:g} s)",
        quickest >= 2 * retry_after * 0.95,
    )
    verdict.note(f"{attempts} attempts on the tuned model, {len(fell_back)} fallbacks")
    verdict.note(f"quickest fallback {quickest:.2f} s")
    return verdict


async def insufficient_quota(suite: Suite) -> Verdict:
    tally = await _load(suite, "quota", seconds=None, total=600)
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    attempts = await _attempts(suite, tuned("quota"))
    verdict.check("never retried: 1 attempt per request", attempts == tally.sent)
    verdict.check("every answer fell back", all(_fell_back(o) for o in tally.with_status(200)))
    verdict.note(f"{attempts} attempts for {tally.sent} requests")
    return verdict


async def flaky_5xx(suite: Suite) -> Verdict:
    tally = await _load(suite, "flaky")
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    fell_back = sum(1 for o in tally.outcomes if _fell_back(o))
    verdict.note(f"{fell_back} fallbacks")
    return verdict


async def hangs(suite: Suite) -> Verdict:
    tally = await _load(suite, "hang")
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    # timeout_s 1, retries 1: two hung attempts, then the fallback.
    verdict.check("p99 < 3.5 s (2 x 1 s attempt timeout + fallback)", tally.latency(0.99) < 3.5)
    return verdict


async def slow_drip(suite: Suite) -> Verdict:
    tally = await _load(suite, "drip", stream=True, json_task=False, concurrency=20)
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    firsts = sorted(o.first_chunk_s for o in tally.outcomes if o.first_chunk_s is not None)
    first_p99 = firsts[int(0.99 * (len(firsts) - 1))] if firsts else 99.0
    verdict.check("no in-band errors", not any(o.stream_error for o in tally.outcomes))
    verdict.check("first chunk p99 < 0.5 s (passed through, not buffered)", first_p99 < 0.5)
    verdict.check("streams took >= 1 s (the drip is real)", tally.latency(0.5) >= 1.0)
    verdict.note(f"first chunk p99 {first_p99 * 1000:.0f} ms")
    return verdict


async def refused(suite: Suite) -> Verdict:
    tally = await _load(suite, "refused")
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    verdict.check("every answer fell back", all(_fell_back(o) for o in tally.outcomes))
    verdict.check("p99 < 1 s", tally.latency(0.99) < 1.0)
    return verdict


async def dropped(suite: Suite) -> Verdict:
    plain = await _load(suite, "drop-json", seconds=SECONDS / 2)
    streams = await _load(suite, "drop-text", seconds=SECONDS / 2, stream=True, json_task=False)
    tally = Tally()
    tally.extend(plain)
    tally.extend(streams)
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    verdict.check("plain answers: none failed", not any(o.stream_error for o in plain.outcomes))
    in_band = sum(1 for o in streams.outcomes if o.stream_error)
    truncated = sum(1 for o in streams.outcomes if o.note == "truncated")
    verdict.check("no stream cut silently (error event or [DONE])", truncated == 0)
    verdict.note(
        f"{plain.sent} plain, {streams.sent} streams, "
        f"{in_band} streams ended with an in-band error event"
    )
    return verdict


async def invalid_json(suite: Suite) -> Verdict:
    tally = await _load(suite, "badjson")
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    repaired = sum(1 for o in tally.outcomes if o.headers.get("x-tunegate-json") == "repaired")
    verdict.note(f"{repaired} repaired")
    return verdict


async def never_retried_4xx(suite: Suite) -> Verdict:
    tally = await _load(suite, "client4xx", seconds=None, total=600)
    verdict = Verdict(tally)
    verdict.standard(allowed={200, 400})
    attempts = await _attempts(suite, tuned("client4xx"))
    verdict.check("400/401 never retried: 1 attempt per request", attempts == tally.sent)
    # The simulator's 400 is `context_length_exceeded`: the caller's input, which no
    # variant would take, is the caller's 400 (SPEC §12); a 401 falls back.
    refused = [o for o in tally.outcomes if o.status == 400]
    served = [o for o in tally.outcomes if o.status == 200]
    verdict.check(
        "input 400s passed on as 400 context_length_exceeded",
        bool(refused) and all(o.code == "context_length_exceeded" for o in refused),
    )
    verdict.check("every 200 fell back", bool(served) and all(_fell_back(o) for o in served))
    return verdict


async def oversized(suite: Suite) -> Verdict:
    """4 MiB answers to one task, while 5 other callers use a healthy task: the big
    bodies must not stall them."""
    before_mib, _ = process_figures(suite.main.pid)
    huge, healthy = await asyncio.gather(
        _load(suite, "huge", concurrency=20), _load(suite, "triage", concurrency=5)
    )
    after_mib, _ = process_figures(suite.main.pid)
    verdict = Verdict(huge)
    verdict.standard(allowed={200})
    verdict.check("p99 < 5 s", huge.latency(0.99) < 5.0)
    verdict.check("gateway RSS grew < 300 MiB", after_mib - before_mib < 300)
    verdict.check(
        "healthy task beside it: p99 < 1 s, all 200",
        healthy.latency(0.99) < 1.0 and healthy.count(200) == healthy.sent,
    )
    verdict.note(f"gateway RSS {before_mib:.0f} -> {after_mib:.0f} MiB")
    verdict.note(
        f"healthy task beside it: {healthy.sent} sent, p50 {healthy.latency(0.5) * 1000:.0f} ms,"
        f" p99 {healthy.latency(0.99) * 1000:.0f} ms"
    )
    costs = [float(o.headers.get("x-tunegate-cost-usd", 0)) for o in huge.outcomes]
    verdict.note(f"highest x-tunegate-cost-usd {max(costs, default=0):.2f}")
    return verdict


async def model_not_found(suite: Suite) -> Verdict:
    tally = await _load(suite, "gone", seconds=None, total=600)
    verdict = Verdict(tally)
    verdict.standard(allowed={200})
    attempts = await _attempts(suite, tuned("gone"))
    verdict.check("never a 404 to callers", tally.count(404) == 0)
    verdict.check("every answer fell back", all(_fell_back(o) for o in tally.outcomes))
    verdict.check("model_not_found never retried", attempts == tally.sent)
    return verdict


GROUP = "upstream"
SCENARIOS = [
    Scenario("upstream-429-storm", GROUP, "60% 429 with Retry-After: 1", storm_429),
    Scenario("upstream-quota", GROUP, "every call 429 insufficient_quota", insufficient_quota),
    Scenario("upstream-flaky-5xx", GROUP, "20% 500/503", flaky_5xx),
    Scenario("upstream-hang", GROUP, "30% hang past the 1 s attempt timeout", hangs),
    Scenario("upstream-slow-drip", GROUP, "text streams, one chunk per 40 ms", slow_drip),
    Scenario("upstream-refused", GROUP, "tuned upstream refuses connections", refused),
    Scenario("upstream-dropped", GROUP, "30% connections dropped mid-answer", dropped),
    Scenario("upstream-invalid-json", GROUP, "30% broken JSON answers", invalid_json),
    Scenario(
        "upstream-4xx",
        GROUP,
        "400/401 answers, never retried; input 400s to the caller",
        never_retried_4xx,
    ),
    Scenario("upstream-oversized", GROUP, "30% 4 MiB answers", oversized),
    Scenario("upstream-model-gone", GROUP, "tuned model 404 model_not_found", model_not_found),
]
