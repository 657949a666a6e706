"""Capacity figures for deploy/capacity.md, measured on this machine (loopback only):

    python -m bench.capacity [--duration 8] [--concurrency 16] [--sample 40]

One Redis-protocol server (the embedded store's binary), the fast mock upstream and one
`tunegate serve` process on that store, with an API key that has an rpm limit and a daily
budget (so every request runs the limit script and is charged). For each path — miss
(unique prompts), hit (one hot prompt: answered from the process's 1 s local cache) and
stream (unique prompts, streamed) — wrk loads the gateway for `--duration` seconds and
the run records requests/s, the gateway's and Redis's CPU seconds (so requests per
gateway core-second, and Redis cores busy per 1,000 requests/s) and Redis's command
counts (INFO commandstats, commands run inside scripts included). Then `--sample`
sequential requests per path (and a "Redis hit" path: cached prompts asked again after
the local cache expired) run under MONITOR, which tells the round trips (commands a
client sent) from the commands scripts ran. From these, bench/capacity_model.py sizes pods
and shards for 1k, 10k and 100k requests/s.

Writes bench/results/capacity-<UTC time>.{json,md} and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from bench.capacity_model import PathFigures, plans
from bench.processes import Server, cpu_snapshot, free_port, start_server, wait_until_idle
from bench.targets import MODEL, UPSTREAM_KEY, body_template, gateway_config
from bench.wrk import PROMPT, Load, Mode, repeated_prompt, run_wrk
from tunegate.auth import hash_key
from tunegate.state.embedded import EmbeddedServer

RESULTS = Path(__file__).resolve().parent / "results"
RATES = (1_000, 10_000, 100_000)
BEARER = "tg-capacity-" + secrets.token_hex(8)
PATHS: dict[str, tuple[Mode, bool]] = {
    "miss": ("unique", False),
    "hit": ("repeat", False),
    "stream": ("unique", True),
}


def capacity_config(upstream_url: str) -> dict[str, Any]:
    config = gateway_config(upstream_url)
    config["pricing"] = {MODEL: {"input": 3.0, "output": 6.0}}
    key = {"name": "bench", "sha256": hash_key(BEARER), "tenant": "bench"}
    config["auth"] = {"keys": [{**key, "rpm": 10_000_000, "daily_budget_usd": 1e9}]}
    return config


def start(work: Path, store_url: str) -> tuple[Server, Server]:
    port = free_port()
    upstream = start_server(
        "mock",
        [sys.executable, "-m", "bench.mock_upstream", str(port)],
        port=port,
        ready_path="/",
        log_dir=work,
    )
    config = work / "gateway.yaml"
    config.write_text(yaml.safe_dump(capacity_config(upstream.url), sort_keys=False))
    port = free_port()
    environ = {
        **_environ(),
        "REDIS_URL": store_url,
        "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
        "TUNEGATE_LOG_LEVEL": "warning",
    }
    tunegate = str(Path(sys.executable).with_name("tunegate"))
    argv = [tunegate, "serve", "--config", str(config), "--port", str(port)]
    gateway = start_server(
        "tunegate", argv, port=port, ready_path="/healthz", log_dir=work, environ=environ
    )
    wait_until_idle(gateway.process.pid, timeout_s=60)
    return upstream, gateway


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TUNEGATE_CONFIG")}


def command_calls(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def load_path(
    path: str, gateway: Server, store: EmbeddedServer, client: redis.Redis, args: argparse.Namespace
) -> dict[str, Any]:
    mode, stream = PATHS[path]
    template = body_template("tunegate-1", stream)
    nonce = secrets.token_hex(4)
    url = f"{gateway.url}/v1/chat/completions"
    roots = {"gateway": gateway.process.pid, "store": store.pid}
    calls_before = command_calls(client)
    before = cpu_snapshot(roots)
    load: Load = run_wrk(
        url,
        template,
        mode,
        nonce,
        concurrency=args.concurrency,
        duration_s=args.duration,
        bearer=BEARER,
    )
    after = cpu_snapshot(roots)
    calls = command_calls(client) - calls_before
    calls.pop("info", None)
    gateway_s = after.roles["gateway"] - before.roles["gateway"]
    store_s = after.roles.get("store", 0.0) - before.roles.get("store", 0.0)
    done = max(1, load.requests)
    return {
        "path": path,
        "requests": load.requests,
        "seconds": load.seconds,
        "rps": load.rps,
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "errors": load.status_errors + load.socket_errors,
        "gateway_cpu_s": gateway_s,
        "store_cpu_s": store_s,
        "rps_per_core": load.requests / gateway_s if gateway_s else 0.0,
        "redis_cores_per_1k_rps": store_s / done * 1000,
        "commands_per_request": sum(calls.values()) / done,
        "commands": dict(calls.most_common()),
    }


def monitored(store_url: str, send: Any, requests: int) -> dict[str, float]:
    """Run `send()` `requests` times under MONITOR: round trips (commands clients sent,
    our marker aside) and script commands per request."""
    marker = "capacity-marker-" + secrets.token_hex(4)
    seen: Counter[str] = Counter()
    ready = threading.Event()

    def watch() -> None:
        monitor = redis.Redis.from_url(store_url).monitor()  # type: ignore[no-untyped-call]
        with monitor:
            ready.set()
            for event in monitor.listen():
                command = str(event.get("command", ""))
                if marker in command:
                    return
                seen["script" if event.get("client_type") == "lua" else "client"] += 1

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.2)  # MONITOR is registered once the server answered it
    for i in range(requests):
        send(i)
    time.sleep(0.5)  # batched experiment writes (20 ms) and budget charges land
    with redis.Redis.from_url(store_url) as client:
        client.echo(marker)
    thread.join(10)
    return {
        "round_trips_per_request": seen["client"] / requests,
        "script_commands_per_request": seen["script"] / requests,
    }


def sample_paths(gateway: Server, store_url: str, n: int) -> dict[str, dict[str, float]]:
    url = f"{gateway.url}/v1/chat/completions"
    headers = {"authorization": f"Bearer {BEARER}", "content-type": "application/json"}
    nonce = secrets.token_hex(4)
    results: dict[str, dict[str, float]] = {}
    with httpx.Client(timeout=15, headers=headers) as http:

        def send(template: str, prompt: str) -> None:
            response = http.post(url, content=template.replace(PROMPT, prompt))
            response.raise_for_status()

        plain, streamed = body_template("tunegate-1", False), body_template("tunegate-1", True)
        results["miss"] = monitored(store_url, lambda i: send(plain, f"m {nonce} {i}"), n)
        send(plain, repeated_prompt(nonce))
        results["hit"] = monitored(store_url, lambda i: send(plain, repeated_prompt(nonce)), n)
        results["stream"] = monitored(store_url, lambda i: send(streamed, f"s {nonce} {i}"), n)
        time.sleep(1.2)  # the local cache (cache.local_ttl_s, 1 s) forgets the misses
        results["redis-hit"] = monitored(store_url, lambda i: send(plain, f"m {nonce} {i}"), n)
    return results


def markdown(document: dict[str, Any]) -> str:
    lines = [
        f"# Capacity figures, {document['when']}",
        "",
        f"Machine: {document['machine']}. wrk {document['concurrency']} connections, "
        f"{document['duration_s']:g} s per path; one `tunegate serve` process, one Redis.",
        "",
        "| path | req/s | p50 ms | p99 ms | gateway req/s per core | Redis cores per 1k req/s "
        "| Redis commands / request (under load) | round trips / request | script commands / "
        "request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in ("miss", "hit", "stream", "redis-hit"):
        load = document["load"].get(path)
        sample = document["sample"][path]
        cells = (
            [
                f"{load['rps']:.0f}",
                f"{load['p50_ms']:.1f}",
                f"{load['p99_ms']:.1f}",
                f"{load['rps_per_core']:.0f}",
                f"{load['redis_cores_per_1k_rps']:.3f}",
                f"{load['commands_per_request']:.2f}",
            ]
            if load
            else ["—"] * 6
        )
        lines.append(
            f"| {path} | "
            + " | ".join(cells)
            + f" | {sample['round_trips_per_request']:.2f}"
            + f" | {sample['script_commands_per_request']:.2f} |"
        )
    lines += [
        "",
        "| rate (req/s) | path | pods (1 core, 60 %) | Redis cores | shards (0.5 core each) "
        "| first limit |",
        "|---|---|---|---|---|---|",
    ]
    for p in document["plans"]:
        lines.append(
            f"| {p['rate']:,} | {p['path']} | {p['pods']} | {p['redis_cores']:.2f} "
            f"| {p['shards']} | {p['first_limit']} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per path")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sample", type=int, default=40, help="requests per path under MONITOR")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tunegate-capacity-") as tmp:
        store = EmbeddedServer().start()
        upstream = gateway = None
        try:
            upstream, gateway = start(Path(tmp), store.url)
            client = redis.Redis.from_url(store.url, decode_responses=True)
            loads = {path: load_path(path, gateway, store, client, args) for path in PATHS}
            sample = sample_paths(gateway, store.url, args.sample)
            client.close()
        finally:
            for server in (gateway, upstream):
                if server is not None:
                    server.stop()
            store.stop()
    figures = {
        path: PathFigures(
            path,
            loads[path]["rps_per_core"],
            loads[path]["redis_cores_per_1k_rps"],
            loads[path]["commands_per_request"],
            sample[path]["round_trips_per_request"],
        )
        for path in ("miss", "stream")
    }
    now = datetime.now(UTC)
    document = {
        "when": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), Python "
        f"{platform.python_version()}",
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "load": loads,
        "sample": sample,
        "plans": [asdict(p) for p in plans(RATES, figures)],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"capacity-{now.strftime('%Y%m%dT%H%M%SZ')}"
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    text = markdown(document)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
