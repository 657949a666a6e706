"""What tracing costs on the miss path: the gateway's overhead per request with tracing
off and on (every request sampled, spans exported over OTLP/HTTP), measured in one run.

    python -m bench.tracing_bench [--rounds 500] [--warmup 100]

The fast mock upstream, an OTLP/HTTP sink in this process (it counts the spans it is
sent) and two `tunegate serve` processes on the same config, one without `OTEL_*`
variables and one with `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_TRACES_SAMPLER=always_on`.
Each round sends one request with a new prompt (a cache miss) to the upstream directly,
to the untraced gateway and to the traced one, in a shuffled order, one at a time; the
gateway's overhead is its p50 latency minus the direct call's, and its CPU time per request
(its process, the exporter's thread included; less disturbed by a busy machine than
latency) is read from /proc. The traced gateway is then
stopped (its exporter flushes) and the spans it sent are counted: three per request
(server, cache lookup, upstream attempt). Also measured: the per-request cost of the
no-op hooks the flow calls with tracing off.

Writes bench/results/tracing-<UTC time>.{json,md} and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.processes import Server, cpu_snapshot, free_port, start_server, wait_until_idle
from bench.targets import MODEL, PARAMS, SYSTEM, TASK, UPSTREAM_KEY, gateway_config
from tunegate.config.compiled import load_config
from tunegate.spans import NO_SPANS

RESULTS = Path(__file__).resolve().parent / "results"
SPANS_PER_MISS = 3
TARGETS = ("direct", "off", "on")


class Sink:
    """An OTLP/HTTP endpoint that keeps what it is sent, to count the spans afterwards."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                sink.bodies.append(self.rfile.read(int(self.headers["content-length"])))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def spans(self) -> int:
        count = 0
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            count += sum(
                len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
            )
        return count

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _environ(**extra: str) -> dict[str, str]:
    drop = ("REDIS_URL", "TUNEGATE_CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("OTEL_")}
    return {**env, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY, "TUNEGATE_LOG_LEVEL": "warning", **extra}


def start_gateway(name: str, config: Path, work: Path, environ: Mapping[str, str]) -> Server:
    port = free_port()
    tunegate = str(Path(sys.executable).with_name("tunegate"))
    argv = [tunegate, "serve", "--config", str(config), "--port", str(port)]
    server = start_server(
        name, argv, port=port, ready_path="/healthz", log_dir=work, environ=environ
    )
    wait_until_idle(server.process.pid, timeout_s=60)
    return server


@contextmanager
def stack(work: Path, sink: Sink) -> Iterator[dict[str, Server]]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.mock_upstream", str(port)]
    servers = {"direct": start_server("mock", argv, port=port, ready_path="/", log_dir=work)}
    try:
        config = work / "gateway.yaml"
        config.write_text(yaml.safe_dump(gateway_config(servers["direct"].url), sort_keys=False))
        servers["off"] = start_gateway("off", config, work, _environ())
        traced = _environ(
            OTEL_EXPORTER_OTLP_ENDPOINT=sink.url,
            OTEL_TRACES_SAMPLER="always_on",
            OTEL_SERVICE_NAME="tunegate-bench",
        )
        servers["on"] = start_gateway("on", config, work, traced)
        yield servers
    finally:
        for server in reversed(servers.values()):
            server.stop()


def request(client: httpx.Client, target: str, server: Server) -> float:
    """One cache miss: a new prompt. Returns its latency in ms."""
    user = {"role": "user", "content": f"I was charged twice (ticket {secrets.token_hex(8)})"}
    if target == "direct":
        system = {"role": "system", "content": SYSTEM}
        body = {"model": MODEL, "messages": [system, user], **PARAMS}
    else:
        body = {"model": TASK, "messages": [user]}
    started = time.perf_counter()
    response = client.post(f"{server.url}/v1/chat/completions", json=body)
    elapsed = (time.perf_counter() - started) * 1e3
    if response.status_code != 200:
        raise RuntimeError(f"{target}: {response.status_code} {response.text[:200]}")
    return elapsed


def measure(
    servers: Mapping[str, Server], rounds: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Latencies (ms) by target, and each gateway's CPU ms per request, after `warmup`."""
    latencies: dict[str, list[float]] = {target: [] for target in TARGETS}
    order = list(TARGETS)
    shuffle = random.Random(0).shuffle
    gateways = {name: servers[name].process.pid for name in ("off", "on")}
    with httpx.Client(timeout=10) as client:
        for number in range(warmup + rounds):
            if number == warmup:
                before = cpu_snapshot(gateways)
            shuffle(order)
            for target in order:
                elapsed = request(client, target, servers[target])
                if number >= warmup:
                    latencies[target].append(elapsed)
    after = cpu_snapshot(gateways)
    cpu = {g: (after.roles[g] - before.roles[g]) / rounds * 1e3 for g in gateways}
    return latencies, cpu


def hooks_off_us(config_path: Path) -> float:
    """µs per miss for the no-op hooks the flow calls with tracing off: a cache lookup's
    span and one attempt's."""
    task = load_config(config_path).tasks[TASK]
    variant = task.variants["tuned"]
    messages = ({"role": "user", "content": "hello"},)

    def one_miss() -> None:
        NO_SPANS.cache_lookup().found("miss")
        NO_SPANS.attempt(task, variant, messages, "first").answered(MODEL, "stop", 42, 12, "")

    timings = []
    for _ in range(15):
        started = time.perf_counter()
        for _ in range(10_000):
            one_miss()
        timings.append((time.perf_counter() - started) / 10_000 * 1e6)
    return statistics.median(timings)


def report(figures: Mapping[str, Any]) -> str:
    p50 = figures["p50_ms"]
    overhead = figures["overhead_ms"]
    cpu = figures["cpu_ms"]
    lines = [
        f"# Tracing overhead, miss path ({figures['when']})",
        "",
        f"{figures['rounds']} rounds of sequential cache misses, one request per target per "
        f"round in shuffled order; {figures['machine']}.",
        "",
        "| target | p50 ms | overhead ms (p50 minus direct p50) | gateway CPU ms per request |",
        "|---|---|---|---|",
        f"| upstream directly | {p50['direct']:.2f} | | |",
        f"| gateway, tracing off | {p50['off']:.2f} | {overhead['off']:.2f} | {cpu['off']:.2f} |",
        f"| gateway, tracing on (always sampled) | {p50['on']:.2f} | {overhead['on']:.2f} "
        f"| {cpu['on']:.2f} |",
        "",
        f"Tracing on adds {figures['added_ms']:.2f} ms per request at p50, "
        f"{figures['added_pct']:+.1f}% of the untraced overhead, and "
        f"{figures['cpu_added_pct']:+.1f}% CPU per request; "
        f"{figures['spans']} spans exported for {figures['requests_on']} traced requests "
        f"(expected {SPANS_PER_MISS} each). With tracing off the flow's no-op hooks cost "
        f"{figures['hooks_off_us']:.2f} µs per miss.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    sink = Sink()
    with tempfile.TemporaryDirectory(prefix="tracing-bench-") as directory:
        work = Path(directory)
        with stack(work, sink) as servers:
            latencies, cpu = measure(servers, args.rounds, args.warmup)
            servers["on"].stop()  # the exporter flushes what is queued
        hooks = hooks_off_us(work / "gateway.yaml")
    sink.stop()
    p50 = {target: statistics.median(values) for target, values in latencies.items()}
    overhead = {target: p50[target] - p50["direct"] for target in ("off", "on")}
    added = overhead["on"] - overhead["off"]
    figures = {
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H%MZ"),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "rounds": args.rounds,
        "p50_ms": p50,
        "overhead_ms": overhead,
        "added_ms": added,
        "added_pct": added / overhead["off"] * 100,
        "cpu_ms": cpu,
        "cpu_added_pct": (cpu["on"] - cpu["off"]) / cpu["off"] * 100,
        "spans": sink.spans(),
        "requests_on": args.rounds + args.warmup,
        "hooks_off_us": hooks,
    }
    markdown = report(figures)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"tracing-{figures['when'].replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
