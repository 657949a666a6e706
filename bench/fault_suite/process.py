"""Process faults: SIGTERM under load, load past the in-flight limit, and a soak with the
gateway's memory and open file descriptors reported at its start and end."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time
from dataclasses import replace

from bench.fault_suite.core import Scenario, Suite, Verdict
from bench.fault_suite.load import Outcome, chat, run_load, sdk_client, ticket
from bench.fault_suite.stack import process_figures
from tunegate.api.drain import DRAIN_TIMEOUT_S, MIN_DRAIN_S


async def sigterm(suite: Suite) -> Verdict:
    """30 callers on a task whose upstream takes 1.5 s; SIGTERM after 2 s; callers keep
    sending until the process has exited."""
    gateway = await asyncio.to_thread(suite.start_gateway, "gateway-drain", suite.config())
    client = sdk_client(gateway.url, suite.keys.main.key)
    signalled = time.monotonic() + 3600
    exited_after: float | None = None

    async def one(index: int) -> Outcome:
        outcome = await chat(client, "slow", ticket(index))
        if outcome.status is None:
            await asyncio.sleep(0.05)  # a refused connection comes back at once
        return outcome

    async def timeline() -> None:
        nonlocal signalled, exited_after
        await asyncio.sleep(2)
        signalled = time.monotonic()
        gateway.server.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(gateway.server.process.wait, DRAIN_TIMEOUT_S + 10)
            exited_after = time.monotonic() - signalled
        await asyncio.sleep(0.5)

    try:
        tally = await run_load(one, concurrency=30, during=timeline())
    finally:
        await client.close()
        await asyncio.to_thread(gateway.server.stop)
    # After the drain (at least MIN_DRAIN_S), uvicorn closes its socket and the process
    # exits: a connection refused from then on, or one reset as the socket closes with it
    # still in the accept queue, fails at once and tells the client; it is no lost request.
    drained = signalled + MIN_DRAIN_S
    at_close = ("ConnectError", "ReadError", "RemoteProtocolError")
    tally.outcomes = [
        replace(o, refused=True)
        if o.status is None
        and any(kind in o.note for kind in at_close)
        and o.at - o.latency_s >= drained
        else o
        for o in tally.outcomes
    ]
    started_before = [o for o in tally.outcomes if o.at - o.latency_s < signalled]
    started_after = [o for o in tally.outcomes if o.at - o.latency_s >= signalled]
    verdict = Verdict(tally)
    verdict.check(
        "started before SIGTERM: all 200",
        bool(started_before) and all(o.status == 200 for o in started_before),
    )
    verdict.check(
        f"exit within the drain timeout ({DRAIN_TIMEOUT_S:g} s)",
        exited_after is not None and exited_after <= DRAIN_TIMEOUT_S + 1,
    )
    answered = [o for o in started_after if o.status is not None]
    verdict.check(
        "sent after SIGTERM: 503 with Retry-After while draining, refused or reset only after",
        any(o.status == 503 for o in started_after)
        and all(
            o.refused or (o.status == 503 and "retry-after" in o.headers) for o in started_after
        ),
    )
    causes: dict[str, int] = {}
    for o in started_after:
        if o.status is None:
            causes[o.note] = causes.get(o.note, 0) + 1
    verdict.note(
        f"{len(started_before)} started before SIGTERM; exited after "
        f"{exited_after if exited_after is None else round(exited_after, 1)} s; "
        f"{len(started_after)} sent after it: {len(answered)} answered "
        f"({', '.join(sorted({str(o.status) for o in answered})) or '-'}), "
        f"without an answer: {causes or 0}"
    )
    return verdict


async def shedding(suite: Suite) -> Verdict:
    """50 callers against `max_in_flight: 10`, upstream 1.5 s: the excess gets 503
    `overloaded` at once."""
    config = suite.config(max_in_flight=10)
    gateway = await asyncio.to_thread(suite.start_gateway, "gateway-shed", config)
    client = sdk_client(gateway.url, suite.keys.main.key)

    async def one(index: int) -> Outcome:
        outcome = await chat(client, "slow", ticket(index))
        if outcome.status == 503:
            await asyncio.sleep(0.1)  # as a client that read Retry-After would, roughly
        return outcome

    try:
        tally = await run_load(one, concurrency=50, duration_s=8)
    finally:
        await client.close()
        await asyncio.to_thread(gateway.server.stop)
    verdict = Verdict(tally)
    verdict.standard(allowed={200, 503})
    shed = tally.with_status(503)
    verdict.check("some shed", bool(shed))
    verdict.check(
        "503 overloaded, x-should-retry: true, Retry-After",
        all(
            o.code == "overloaded"
            and o.headers.get("x-should-retry") == "true"
            and "retry-after" in o.headers
            for o in shed
        ),
    )
    # The bench's own clients share the machine's cores: its event loop adds its lag.
    verdict.check(
        "shed at once: 503 p99 < 0.5 s (upstream takes 1.5 s)", tally.latency(0.99, 503) < 0.5
    )
    verdict.check("admitted ones unharmed: 200 p99 < 2.5 s", tally.latency(0.99, 200) < 2.5)
    verdict.note(
        f"200 p50 {tally.latency(0.5, 200) * 1000:.0f} ms; 503 p50 "
        f"{tally.latency(0.5, 503) * 1000:.0f} ms, p99 {tally.latency(0.99, 503) * 1000:.0f} ms"
    )
    return verdict


async def soak(suite: Suite) -> Verdict:
    """Mixed traffic (hits, misses, text streams, refused requests) for --soak-seconds."""
    client = suite.client(suite.keys.main.key)
    pool = [ticket(i) for i in range(500)]

    async def one(index: int) -> Outcome:
        draw = random.random()
        if draw < 0.5:
            return await chat(client, "triage", random.choice(pool))
        if draw < 0.8:
            return await chat(client, "triage", ticket(index))
        if draw < 0.9:
            return await chat(client, "reply", ticket(index), stream=True, json_task=False)
        outcome = await chat(client, "triage", ticket(index), temperature=1.9)
        return replace(outcome, wrong=False)

    warm = await run_load(one, concurrency=30, duration_s=5)
    pid = suite.main.pid
    start_mib, start_fds = process_figures(pid)
    tally = await run_load(one, concurrency=30, duration_s=suite.soak_seconds)
    end_mib, end_fds = process_figures(pid)
    verdict = Verdict(tally)
    verdict.standard(allowed={200, 400})
    grew = end_mib - start_mib
    verdict.check("RSS grew < 10% + 10 MiB", grew < 0.1 * start_mib + 10)
    verdict.check("open fds grew <= 10", end_fds - start_fds <= 10)
    verdict.note(
        f"{suite.soak_seconds:g} s after a {warm.sent}-request warm-up: RSS {start_mib:.1f} -> "
        f"{end_mib:.1f} MiB, open fds {start_fds} -> {end_fds}"
    )
    return verdict


GROUP = "process"
SCENARIOS = [
    Scenario("process-sigterm", GROUP, "SIGTERM with 30 requests in flight", sigterm),
    Scenario("process-shedding", GROUP, "50 callers, max_in_flight 10", shedding),
    Scenario("process-soak", GROUP, "mixed traffic for --soak-seconds", soak),
]
