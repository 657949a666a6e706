"""The gateway against a direct call, Portkey's gateway and LiteLLM's proxy, on loopback:
`bench/run`.

One fast upstream (the project's simulator when a direct call to it reaches at least 3x
the gateway's best throughput, else `mock_upstream.py`), then each target in turn:
direct calls, a bare openai-SDK pass-through (`passthrough.py`: the floor the SDK sets),
`tunegate serve` with 1 and 2 workers (embedded store, one JSON task with
one variant, so routing, the JSON guard, the Redis cache and metrics all run), Portkey's
open-source gateway (npm `@portkey-ai/gateway`, pinned in `PORTKEY_VERSION`, on node, the
upstream named in its headers) and LiteLLM's proxy (one model on the same upstream, no
retries). wrk drives each with unique prompts (no cache can answer) and one repeated
prompt, at each concurrency, plain and streamed, and with a 32 KB few-shot prompt (2 KB
answers); `streamtiming.py` times streamed answers to their first and last byte, one at a
time; the gateway's resident memory is read as started and over `--soak-requests`
unique-prompt requests. Before each run a sample request checks the answer (and for the gateway that
it was a miss or a hit); after it the gateway's metrics say how many lookups hit.

Writes `bench/results/<UTC time>.json` and `.md`: per scenario req/s, p50, p99, errors
and CPU per process group; the issue's ratios against their targets; the top functions
of py-spy profiles of the 1-worker gateway's miss path at each concurrency.

Run through `bench/run`, which installs what this needs; `--help` lists the options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import folded
from bench.figures import (
    MIB,
    TARGETS,
    CacheMode,
    Measurement,
    MemoryGrowth,
    PromptKind,
    Scenario,
    StreamTiming,
    Target,
    find,
    markdown,
    ratios,
)
from bench.processes import (
    Server,
    cpu_percent,
    cpu_snapshot,
    free_port,
    start_server,
    wait_for_quiet,
    wait_until_idle,
)
from bench.streamtiming import time_streams
from bench.targets import (
    UPSTREAM_KEY,
    body_template,
    cache_lookups,
    check_sample,
    gateway_config,
    litellm_config,
    portkey_headers,
)
from bench.wrk import Load, Mode, run_wrk, wrk_binary

ROOT = Path(__file__).resolve().parent.parent
PROBE_S = 3.0
WARMUP_S = 3.0
HEADROOM = 3.0
NOISY_PERCENT = 15.0  # of one core, taken by processes outside the benchmark
PORTKEY_VERSION = "1.15.2"  # bench/run installs it into bench/node_modules
PORTKEY_DIR = ROOT / "bench" / "node_modules" / "@portkey-ai" / "gateway"
# The order targets run in: the fastest peer right after the direct call and beside the
# 1-worker gateway, so the ratios the targets are set on come from minutes close together.
RUN_ORDER: tuple[Target, ...] = ("direct", "portkey", "tunegate-1", "sdk", "tunegate-2", "litellm")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="The gateway against direct calls and LiteLLM's proxy, on loopback only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of discarded load before each"
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated, of {','.join(TARGETS)}"
    )
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--no-long", action="store_true", help="leave out the 32 KB few-shot prompt's rows"
    )
    parser.add_argument(
        "--soak-requests",
        type=int,
        default=100_000,
        help="unique-prompt requests the 1-worker gateway's memory is read over (0: none)",
    )
    parser.add_argument("--cache", default="miss,hit", help="miss (unique prompts), hit")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated connections")
    parser.add_argument("--stream", default="plain,streamed", help="plain, streamed")
    parser.add_argument(
        "--upstream",
        choices=("auto", "simulator", "mock"),
        default="auto",
        help="auto: the simulator if it has 3x the gateway's throughput, else the mock",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=180.0,
        help="seconds in all to wait, before runs, for other processes to leave the cores",
    )
    parser.add_argument(
        "--results", type=Path, default=Path("bench/results"), help="where results go"
    )
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if args.no_litellm:
        targets = [t for t in targets if t != "litellm"]
    unknown = set(targets) - set(TARGETS)
    if unknown or not targets:
        parser.error(f"--targets: unknown {sorted(unknown)}; use {','.join(TARGETS)}")
    args.targets = [t for t in RUN_ORDER if t in targets]
    args.cache = [c for c in ("miss", "hit") if c in args.cache.split(",")]
    args.stream = [s == "streamed" for s in ("plain", "streamed") if s in args.stream.split(",")]
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c})
    if not (args.cache and args.stream and args.concurrency):
        parser.error("--cache, --stream and --concurrency each need at least one value")
    return args


# -- the run ------------------------------------------------------------------------------


@dataclass
class Run:
    """One invocation: settings, the servers it runs, what it measured."""

    args: argparse.Namespace
    work_dir: Path
    stamp: str  # the UTC time the run started, naming its result files
    run_id: str
    upstream: Server | None = None
    upstream_kind: str = ""
    probe: dict[str, Any] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    streams: list[StreamTiming] = field(default_factory=list)
    memory: list[MemoryGrowth] = field(default_factory=list)
    load_average: list[tuple[float, float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    waited_s: float = 0.0  # for other processes to go quiet, in all

    def say(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    # -- servers

    def start_upstream(self, kind: str) -> Server:
        port = free_port()
        if kind == "simulator":
            argv = [sys.executable, "-m", "tunegate.simulator", "--port", str(port)]
            ready = "/v1/models"
        else:
            argv = [sys.executable, "-m", "bench.mock_upstream", str(port)]
            ready = "/"
        server = start_server(
            kind, argv, port=port, ready_path=ready, log_dir=self.work_dir, environ=_env()
        )
        self.upstream, self.upstream_kind = server, kind
        return server

    def start_gateway(self, workers: int) -> Server:
        assert self.upstream is not None
        config_path = self.work_dir / f"gateway-{workers}.yaml"
        config_path.write_text(yaml.safe_dump(gateway_config(self.upstream.url), sort_keys=False))
        port = free_port()
        environ = _env(TUNEGATE_LOG_LEVEL="warning", BENCH_UPSTREAM_KEY=UPSTREAM_KEY)
        for name in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "TUNEGATE_CONFIG", "PORT"):
            environ.pop(name, None)  # an embedded store, a fresh metrics directory
        tunegate = str(Path(sys.executable).with_name("tunegate"))
        argv = [tunegate, "serve", "--config", str(config_path), "--port", str(port)]
        argv += ["--workers", str(workers)]
        server = start_server(
            f"tunegate-{workers}",
            argv,
            port=port,
            ready_path="/healthz",
            log_dir=self.work_dir,
            environ=environ,
        )
        # /healthz answers once one worker is up; the others may still be importing.
        wait_until_idle(server.process.pid, timeout_s=60)
        return server

    def start_passthrough(self) -> Server:
        assert self.upstream is not None
        port = free_port()
        return start_server(
            "sdk",
            [sys.executable, "-m", "bench.passthrough", str(port)],
            port=port,
            ready_path="/healthz",
            log_dir=self.work_dir,
            environ=_env(UPSTREAM_URL=f"{self.upstream.url}/v1"),
        )

    def start_litellm(self) -> tuple[Server, str]:
        assert self.upstream is not None
        master_key = "sk-bench-" + secrets.token_hex(16)
        config_path = self.work_dir / "litellm.yaml"
        config = litellm_config(self.upstream.url, master_key)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        environ = _env(
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            DISABLE_ADMIN_UI="True",
            LITELLM_MODE="PRODUCTION",
            LITELLM_LOG="WARNING",  # no access log line per request, as for the gateway
        )
        for name in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST"):
            environ.pop(name, None)
        argv = [str(litellm_binary()), "--config", str(config_path), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--num_workers", "1"]
        server = start_server(
            "litellm",
            argv,
            port=port,
            ready_path="/health/liveliness",
            log_dir=self.work_dir,
            environ=environ,
            timeout_s=180,
        )
        return server, master_key

    def start_portkey(self) -> Server:
        entry = PORTKEY_DIR / "build" / "start-server.js"
        if portkey_version() != PORTKEY_VERSION:
            raise RuntimeError(
                f"Portkey's gateway {PORTKEY_VERSION} is not in bench/node_modules; "
                "bench/run installs it"
            )
        port = free_port()
        shim = ROOT / "bench" / "portkey_node20.cjs"
        argv = [node_binary(), "--require", str(shim), str(entry), f"--port={port}", "--headless"]
        return start_server(
            "portkey", argv, port=port, ready_path="/", log_dir=self.work_dir, environ=_env()
        )

    def headers_for(self, target: Target) -> dict[str, str]:
        assert self.upstream is not None
        return portkey_headers(self.upstream.url) if target == "portkey" else {}

    @contextlib.contextmanager
    def target(self, target: Target) -> Iterator[tuple[Server | None, str]]:
        """The server of `target` (None for direct calls) and its bearer key, running."""
        server: Server | None = None
        bearer = ""
        if target == "tunegate-1":
            server = self.start_gateway(1)
        elif target == "tunegate-2":
            server = self.start_gateway(2)
        elif target == "litellm":
            server, bearer = self.start_litellm()
        elif target == "sdk":
            server = self.start_passthrough()
        elif target == "portkey":
            server = self.start_portkey()
        try:
            yield server, bearer
        finally:
            if server is not None:
                server.stop()

    # -- measuring

    def url_of(self, server: Server | None) -> str:
        assert self.upstream is not None
        return f"{(server or self.upstream).url}/v1/chat/completions"

    def load(
        self, scenario: Scenario, server: Server | None, nonce: str, seconds: float, bearer: str
    ) -> Load:
        mode: Mode = "repeat" if scenario.cache == "hit" else "unique"
        return run_wrk(
            self.url_of(server),
            body_template(scenario.target, scenario.stream, scenario.prompt),
            mode,
            nonce,
            concurrency=scenario.concurrency,
            duration_s=seconds,
            bearer=bearer,
            headers=self.headers_for(scenario.target),
        )

    def measure(self, scenario: Scenario, server: Server | None, bearer: str) -> Measurement:
        left = self.args.quiet_wait - self.waited_s
        if left > 0:
            self.waited_s += wait_for_quiet(min(left, 30.0))
        nonce = f"{self.run_id}-{len(self.measurements)}"
        template = body_template(scenario.target, scenario.stream, scenario.prompt)
        headers = self.headers_for(scenario.target)
        sample = check_sample(scenario, self.url_of(server), template, nonce, bearer, headers)
        if self.args.warmup > 0:
            warm_nonce = nonce if scenario.cache == "hit" else nonce + "-warm"
            self.load(scenario, server, warm_nonce, self.args.warmup, bearer)
        gateway = server is not None and scenario.target.startswith("tunegate")
        lookups_before = cache_lookups(server.url) if gateway and server else {}
        roots = {"upstream": self._upstream_pid()}
        if server is not None:
            roots["server"] = server.process.pid
        before = cpu_snapshot(roots)
        load = self.load(scenario, server, nonce, self.args.duration, bearer)
        after = cpu_snapshot(roots)
        lookups = None
        if gateway and server:
            if scenario.target == "tunegate-2":
                time.sleep(1.5)  # workers copy their metrics to the shared files within 1 s
            now = cache_lookups(server.url)
            lookups = {
                k: now.get(k, 0) - lookups_before.get(k, 0) for k in ("hit", "miss", "error")
            }
        measurement = Measurement(
            scenario=scenario,
            requests=load.requests,
            rps=load.rps,
            p50_ms=load.p50_ms,
            p99_ms=load.p99_ms,
            status_errors=load.status_errors,
            socket_errors=load.socket_errors,
            cpu_percent=cpu_percent(before, after, {"wrk": load.cpu_seconds}),
            cache_lookups=lookups,
            sample=sample,
        )
        self.measurements.append(measurement)
        self.say(
            f"{scenario.label}: {load.rps:,.0f} req/s, p50 {load.p50_ms:.3f} ms, "
            f"p99 {load.p99_ms:.3f} ms, errors {load.status_errors}/{load.socket_errors}"
            + (f", lookups {lookups}" if lookups is not None else "")
        )
        return measurement

    def _upstream_pid(self) -> int:
        assert self.upstream is not None
        return self.upstream.process.pid

    def warm(self, target: Target, server: Server | None, bearer: str) -> None:
        """Discarded load right after a server starts: connection pools, lazy imports."""
        scenario = Scenario(target, "miss", max(self.args.concurrency), False)
        self.load(scenario, server, f"{self.run_id}-{target}-start", WARMUP_S, bearer)

    # -- the upstream choice

    def choose_upstream(self) -> None:
        """The simulator when a direct call to it reaches HEADROOM x the gateway's best
        throughput (2 workers, cache hits, highest concurrency), else the mock."""
        wanted = self.args.upstream
        if wanted == "mock":
            self.start_upstream("mock")
            return
        simulator = self.start_upstream("simulator")
        if wanted == "simulator":
            return
        c = max(self.args.concurrency)
        direct = self.load(
            Scenario("direct", "miss", c, False), None, self.run_id + "-probe", PROBE_S, ""
        )
        with self.target("tunegate-2") as (gateway, _):
            hit = Scenario("tunegate-2", "hit", c, False)
            nonce = self.run_id + "-probe"
            template = body_template("tunegate-2", False)
            check_sample(hit, self.url_of(gateway), template, nonce, "")
            best = self.load(hit, gateway, nonce, PROBE_S, "")
        self.probe = {
            "direct_rps": round(direct.rps),
            "gateway_best_rps": round(best.rps),
            "scenario": f"c={c}, plain; gateway with 2 workers, cache hits",
        }
        if direct.rps >= HEADROOM * best.rps:
            self.say(f"upstream: the simulator ({direct.rps:,.0f} req/s vs {best.rps:,.0f})")
            return
        self.say(
            f"upstream: the mock (the simulator's {direct.rps:,.0f} req/s < 3x {best.rps:,.0f})"
        )
        simulator.stop()
        self.start_upstream("mock")

    # -- the profile

    def profile_miss_path(self, server: Server, bearer: str, concurrency: int) -> None:
        """py-spy samples the 1-worker gateway (uvicorn serves in its main process) under
        unique prompts, plain, at `concurrency`."""
        py_spy = ROOT / "bench" / ".venv-tools" / "bin" / "py-spy"
        scenario = Scenario("tunegate-1", "miss", concurrency, False)
        if not py_spy.exists():
            self.profiles.append({"scenario": scenario.label, "skipped": "py-spy is missing"})
            return
        seconds = max(4.0, self.args.duration)
        output = self.work_dir / f"profile-c{concurrency}.folded"
        loads: list[Load] = []
        driver = threading.Thread(
            target=lambda: loads.append(
                self.load(scenario, server, f"{self.run_id}-profile-{concurrency}", seconds, bearer)
            )
        )
        driver.start()
        time.sleep(1.0)
        argv = [str(py_spy), "record", "--pid", str(server.process.pid), "--format", "raw"]
        # --gil: only samples holding the GIL, i.e. the Python CPU time of this one-loop
        # process, not idle pool threads (which py-spy's idle check misses).
        argv += ["--gil", "--rate", "200", "--duration", str(int(seconds - 2))]
        argv += ["--output", str(output)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        driver.join()
        if result.returncode != 0 or not output.exists():
            skipped = f"py-spy failed: {result.stderr.strip()[-300:]}"
            self.profiles.append({"scenario": scenario.label, "skipped": skipped})
            return
        summary = folded.summarize(output.read_text().splitlines())
        self.args.results.mkdir(parents=True, exist_ok=True)
        kept = self.args.results / f"{self.stamp}-profile-c{concurrency}.folded.tmp"
        shutil.copy(output, kept)
        self.profiles.append(
            {
                "scenario": scenario.label,
                "rps_while_profiled": round(loads[0].rps) if loads else None,
                **asdict(summary),
            }
        )
        self.say(f"profile at c={concurrency}: {summary.samples} samples, kept in {kept.name}")

    # -- everything

    def scenarios_for(self, target: Target) -> list[Scenario]:
        caches: list[CacheMode] = (
            ["miss"] if target in ("direct", "sdk", "portkey") else list(self.args.cache)
        )
        found = [
            Scenario(target, cache, c, stream)
            for cache in caches
            for stream in self.args.stream
            for c in self.args.concurrency
        ]
        if not self.args.no_long and "miss" in self.args.cache:
            long: PromptKind = "long"
            found += [Scenario(target, "miss", c, False, long) for c in self.args.concurrency]
        return found

    def time_streams(self, target: Target, server: Server | None, bearer: str) -> None:
        """Streamed misses one at a time, timed to their first and last byte."""
        template = body_template(target, True)
        headers = self.headers_for(target)
        if bearer:
            headers["authorization"] = f"Bearer {bearer}"
        nonce = f"{self.run_id}-{target}-streams"
        found = time_streams(
            self.url_of(server), template, nonce, duration_s=self.args.duration, headers=headers
        )
        timing = StreamTiming(
            target,
            found.requests,
            round(found.first_byte_ms, 4),
            round(found.first_event_ms, 4),
            round(found.last_byte_ms, 4),
            found.errors,
        )
        self.streams.append(timing)
        self.say(
            f"{target} streamed c=1: first byte {timing.first_byte_ms:.3f} ms, first event "
            f"{timing.first_event_ms:.3f} ms, last byte {timing.last_byte_ms:.3f} ms "
            f"({timing.requests} requests, {timing.errors} errors)"
        )

    def soak(self, server: Server, bearer: str, started_mib: float) -> None:
        """`--soak-requests` unique-prompt requests at the highest concurrency, the
        gateway's resident memory read before and after."""
        c = max(self.args.concurrency)
        scenario = Scenario("tunegate-1", "miss", c, False)
        measured = find(self.measurements, "tunegate-1", "miss", c, False)
        rate_guess = measured.rps if measured and measured.rps > 0 else 500.0
        seconds = min(600.0, 1.1 * self.args.soak_requests / rate_guess)
        before = rss_mib(server.process.pid)
        load = self.load(scenario, server, f"{self.run_id}-soak", seconds, bearer)
        time.sleep(1.0)
        after = rss_mib(server.process.pid)
        grown = MemoryGrowth("tunegate-1", load.requests, started_mib, before, after)
        self.memory.append(grown)
        self.say(
            f"soak: {load.requests:,} requests in {load.seconds:.0f} s, RSS {before:.1f} -> "
            f"{after:.1f} MiB (as started {started_mib:.1f} MiB)"
        )

    def execute(self) -> None:
        self.load_average.append(os.getloadavg())
        self.choose_upstream()
        for target in self.args.targets:
            self.say(f"== {target}")
            with self.target(target) as (server, bearer):
                started_mib = rss_mib(server.process.pid) if server else 0.0
                self.warm(target, server, bearer)
                before_mib = rss_mib(server.process.pid) if server else 0.0
                done = len(self.measurements)
                for scenario in self.scenarios_for(target):
                    self.measure(scenario, server, bearer)
                if True in self.args.stream:
                    self.time_streams(target, server, bearer)
                # tunegate-2's own process is the supervisor; its workers are children.
                if server is not None and target not in ("tunegate-1", "tunegate-2"):
                    requests = sum(m.requests for m in self.measurements[done:])
                    after_mib = rss_mib(server.process.pid)
                    self.memory.append(
                        MemoryGrowth(target, requests, started_mib, before_mib, after_mib)
                    )
                if target == "tunegate-1" and server and self.args.soak_requests > 0:
                    self.soak(server, bearer, started_mib)
                if target == "tunegate-1" and not self.args.no_profile and server:
                    for concurrency in self.args.concurrency:
                        self.profile_miss_path(server, bearer, concurrency)
        self.load_average.append(os.getloadavg())
        self.check_headroom()
        self.check_noise()

    def check_noise(self) -> None:
        """Name the runs during which other processes took cores from this benchmark."""
        noisy = [
            f"{m.scenario.label} ({m.cpu_percent['other']:.0f}%)"
            for m in self.measurements
            if m.cpu_percent.get("other", 0.0) > NOISY_PERCENT
        ]
        if noisy:
            self.notes.append(
                f"other processes took more than {NOISY_PERCENT:g}% of a core during: "
                + ", ".join(noisy)
            )
        if self.waited_s >= 1.5:
            self.notes.append(f"waited {self.waited_s:.0f} s in all for the cores to go quiet")

    def check_headroom(self) -> None:
        """The direct call must stay far ahead of the gateway, or the upstream limits it."""
        c = max(self.args.concurrency)
        direct = find(self.measurements, "direct", "miss", c, False)
        gateway = [m.rps for m in self.measurements if m.scenario.target.startswith("tunegate")]
        if direct and gateway and direct.rps < HEADROOM * max(gateway):
            self.notes.append(
                f"the direct call ({direct.rps:,.0f} req/s) is under {HEADROOM:g}x the "
                f"gateway's best ({max(gateway):,.0f} req/s): the upstream may limit the gateway"
            )

    def document(self) -> dict[str, Any]:
        found = ratios(self.measurements, self.streams, self.memory)
        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "settings": {
                "duration_s": self.args.duration,
                "warmup_s": self.args.warmup,
                "upstream": self.upstream_kind,
                "upstream_probe": self.probe,
                "task": "one JSON task, one variant (weight 100), cache on, embedded store",
                "portkey": PORTKEY_VERSION,
            },
            "load_average": " -> ".join(
                ", ".join(f"{v:.2f}" for v in one) for one in self.load_average
            ),
            "measurements": [asdict(m) for m in self.measurements],
            "streams": [asdict(s) for s in self.streams],
            "memory": [asdict(m) for m in self.memory],
            "ratios": [asdict(r) for r in found],
            "profiles": self.profiles,
            "notes": self.notes,
        }


# -- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on; no host name, no paths."""
    cores = os.cpu_count() or 0
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = 0
    with contextlib.suppress(OSError, ValueError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gib = round(int(first.split()[1]) / 2**20)
    wrk = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True, check=False)
    return {
        "cores": cores,
        "cpu": model,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr).split(" [")[0].strip(),
        "litellm": litellm_version(),
        "portkey": portkey_version(),
        "node": node_version(),
        "description": (
            f"{cores} cores ({model}), {memory_gib} GiB; wrk, the upstream, the gateway "
            "and its store (or LiteLLM, or Portkey's gateway) all share these cores"
        ),
    }


def rss_mib(pid: int) -> float:
    """The resident memory of process `pid` in MiB (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MIB
    return 0.0


def portkey_version() -> str | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        version = json.loads((PORTKEY_DIR / "package.json").read_text())["version"]
        return str(version)
    return None


def node_binary() -> str:
    found = shutil.which("node")
    if found is None:
        raise RuntimeError("node is not installed; Portkey's gateway needs it")
    return found


def node_version() -> str | None:
    with contextlib.suppress(OSError, RuntimeError):
        done = subprocess.run(
            [node_binary(), "--version"], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() or None
    return None


def litellm_binary() -> Path:
    return ROOT / "bench" / ".venv-litellm" / "bin" / "litellm"


def litellm_version() -> str | None:
    found = sorted(
        (ROOT / "bench" / ".venv-litellm").glob("lib/python*/site-packages/litellm-*.dist-info")
    )
    return found[0].name.removeprefix("litellm-").removesuffix(".dist-info") if found else None


def _env(**extra: str) -> dict[str, str]:
    environ = dict(os.environ)
    environ.update(extra)
    return environ


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds, so every server started is stopped


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    args = parse_args(argv)
    if "litellm" in args.targets and not litellm_binary().exists():
        print(
            "bench: LiteLLM is not installed; run bench/run, or pass --no-litellm", file=sys.stderr
        )
        return 1
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%MZ")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-") as work:
        run = Run(args, Path(work), stamp, f"{stamp}-{secrets.token_hex(3)}")
        try:
            run.execute()
        except RuntimeError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            if run.upstream is not None:
                run.upstream.stop()
    document = run.document()
    args.results.mkdir(parents=True, exist_ok=True)
    base = args.results / stamp
    base.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    report = markdown(document, run.measurements)
    base.with_suffix(".md").write_text(report)
    print(report)
    run.say(
        f"done in {time.monotonic() - started:.0f} s: {base.name}.json and .md in bench/results"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
