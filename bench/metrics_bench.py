"""Microbenchmark of metrics recording: what `Metrics.record(outcome)` costs per request,
in one process and in multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, as under `tunegate
serve --workers N`), beside the gateway's own time per request.

Run: .venv/bin/python -m bench.metrics_bench [--overhead-ms 1.7]

Each mode is measured in a fresh process, as prometheus-client picks its storage when it is
imported. Recording runs inside an event loop, as in a worker: in multiprocess mode it adds
to dicts and schedules one flush, and the flush (the dicts copied into the memory-mapped
files, at most once per `FLUSH_DELAY_S`) is timed apart and spread over the requests of
that interval.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tests.testkit.outcomes import served
from tunegate.observability.metrics import FLUSH_DELAY_S, Metrics
from tunegate.records import Outcome, UpstreamCall, rejected

ROOT = Path(__file__).resolve().parent.parent
TUNED = "ft:gpt-3.5-turbo-0613:acme::7qTVM5AR"
BASE = "gpt-3.5-turbo"
TASK = "ticket-triage"
# The gateway's overhead per request: a cache miss's p50 minus the direct call's, c=1,
# one worker (`bench/run`, bench/results/2026-11-25T1022Z.md).
OVERHEAD_MS = 3.34
# Requests per second for spreading a flush's cost: light traffic, and one worker's most.
RATES = (100, 500)


def _served(**fields: object) -> Outcome:
    return served(
        request_id="0123456789abcdef0123456789abcdef", task=TASK, store_seconds=0.0003, **fields
    )


OUTCOMES = {
    "miss (1 call, JSON)": _served(),
    "hit": _served(cache="hit", cache_lookup="hit", calls=(), json_results=(), saved_usd=0.000432),
    "stream (TTFT)": _served(ttft_seconds=0.004, json_results=()),
    "fallback (3 calls)": _served(
        status="fallback",
        served="few_shot",
        served_model=BASE,
        calls=(
            UpstreamCall("tuned", TUNED, 0.5, error="server_error"),
            UpstreamCall("tuned", TUNED, 0.5, error="server_error"),
            UpstreamCall("few_shot", BASE, 0.01, 300, 9, 0.0002),
        ),
        fallbacks=(("tuned", "few_shot", "server_error"),),
        json_results=(("few_shot", "valid"),),
    ),
    "rejected (4xx)": rejected("0123456789abcdef0123456789abcdef", None, 0.0002),
}


def per_call_us(run: Callable[[], None], rounds: int = 15, batch: int = 2000) -> float:
    """Median µs per `run()` over `rounds` batches."""
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(batch):
            run()
        timings.append((time.perf_counter() - started) / batch * 1e6)
    return statistics.median(timings)


def per_call_ms(run: Callable[[], None], rounds: int = 15) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        timings.append((time.perf_counter() - started) * 1e3)
    return statistics.median(timings)


async def measure(multiprocess_dir: str | None) -> dict[str, float]:
    """This process's figures: µs per record by outcome and for a request's whole metrics
    path (in-flight gauge and record); ms per flush of a second's traffic and per scrape.
    A coroutine that never awaits: it runs in a loop so that, as in a worker, recording
    schedules its flush on the loop instead of flushing at once."""
    metrics = Metrics(multiprocess_dir)
    figures: dict[str, float] = {}
    for name, outcome in OUTCOMES.items():
        figures[name] = per_call_us(partial(metrics.record, outcome))
        metrics.flush()  # what a worker's loop does between requests, off the timing

    miss = OUTCOMES["miss (1 call, JSON)"]
    in_flight = metrics.track_in_flight()

    def request() -> None:
        with in_flight:
            metrics.record(miss)

    figures["request path (in-flight + miss)"] = per_call_us(request)
    metrics.flush()

    def second_of_traffic() -> None:
        for _ in range(100):
            for outcome in OUTCOMES.values():
                metrics.record(outcome)

    def flush_after_a_second() -> None:
        second_of_traffic()
        started = time.perf_counter()
        metrics.flush()
        flushes.append((time.perf_counter() - started) * 1e3)

    flushes: list[float] = []
    for _ in range(15):
        flush_after_a_second()
    figures["flush ms"] = statistics.median(flushes)

    def scrape() -> None:
        metrics.render()

    figures["render ms"] = per_call_ms(scrape)
    return figures


def run_mode(multiprocess: bool) -> dict[str, float]:
    """`measure` in a fresh process, with a fresh multiprocess directory if asked."""
    argv = [sys.executable, "-m", "bench.metrics_bench", "--child"]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as directory:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        done = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=600
        )
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--overhead-ms",
        type=float,
        default=OVERHEAD_MS,
        help="the gateway's own time per request, to compare with (default %(default)s)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        print(json.dumps(asyncio.run(measure(directory))))
        return

    single, multi = run_mode(multiprocess=False), run_mode(multiprocess=True)
    overhead_us = args.overhead_ms * 1e3
    print(f"Metrics recording per request, median µs (vs {args.overhead_ms:g} ms of overhead)")
    print(f"{'':<34}{'one process':>12}{'multiprocess':>14}{'% of overhead':>15}")
    for name in (*OUTCOMES, "request path (in-flight + miss)"):
        worst = max(single[name], multi[name])
        print(f"{name:<34}{single[name]:>12.2f}{multi[name]:>14.2f}{worst / overhead_us:>14.2%}")
    flush_ms = multi["flush ms"]
    spread = ", ".join(
        f"{flush_ms * 1e3 / (rate * FLUSH_DELAY_S):.1f} µs at {rate} req/s" for rate in RATES
    )
    print(
        f"multiprocess flush: {flush_ms:.2f} ms, at most once per {FLUSH_DELAY_S:g} s "
        f"per worker ({spread})"
    )
    print(
        f"a scrape (render): {single['render ms']:.2f} ms in one process, "
        f"{multi['render ms']:.2f} ms in multiprocess mode"
    )


if __name__ == "__main__":
    main()
