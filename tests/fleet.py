"""Several gateway processes on one store behind a real load balancer, for the tests of
SPEC §10 "Several instances".

with gateway_fleet(config_path, redis_url, directory) as fleet:
    httpx.post(fleet.url + "/v1/chat/completions", ...)   # HAProxy, round robin
    response.headers["x-served-by"]                        # g0, g1 or g2: which instance

Each instance is `tunegate serve` in its own process (its own session, stopped by its own
id); HAProxy from PATH (scripts/ensure-haproxy installs it) balances every request anew,
keep-alive or not, and names the instance that answered in `x-served-by`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness import free_port

SERVE = [sys.executable, "-m", "tunegate.commands.cli", "serve"]

HAPROXY_CONFIG = """\
global
    maxconn 2048
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend gateways
    bind 127.0.0.1:{port}
    default_backend gateways
backend gateways
    balance roundrobin
    http-response set-header x-served-by %[srv_name]
{servers}
"""


@dataclass
class Fleet:
    url: str  # the balancer
    instances: list[str]  # each instance's own URL, in the order of its name (g0, g1, ...)


def haproxy_or_skip() -> str:
    found = shutil.which("haproxy")
    if found is None:
        pytest.skip("haproxy is not on PATH (scripts/ensure-haproxy installs it)")
    return found


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} was not ready within 60 s:\n{log.read_text()}")
        time.sleep(0.05)


def _start(argv: list[str], log: Path, environ: Mapping[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(environ),
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def gateway_fleet(
    config_path: Path,
    redis_url: str,
    directory: Path,
    count: int = 3,
    environ: Mapping[str, str] | None = None,
) -> Iterator[Fleet]:
    """`count` gateways serving `config_path` on the store at `redis_url`, behind HAProxy."""
    haproxy = haproxy_or_skip()
    env = {**os.environ, "REDIS_URL": redis_url, "SIM_KEY": "sk-upstream-secret"}
    env.update(environ or {})
    processes: list[subprocess.Popen[bytes]] = []
    try:
        ports = [free_port() for _ in range(count)]
        for i, port in enumerate(ports):
            argv = [*SERVE, "--config", str(config_path), "--port", str(port)]
            processes.append(_start(argv, directory / f"g{i}.log", env))
        instances = [f"http://127.0.0.1:{port}" for port in ports]
        for i, (url, process) in enumerate(zip(instances, processes, strict=True)):
            _wait_ready(url, process, directory / f"g{i}.log")
        port = free_port()
        servers = "\n".join(f"    server g{i} 127.0.0.1:{p}" for i, p in enumerate(ports))
        cfg = directory / "haproxy.cfg"
        cfg.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
        balancer = _start([haproxy, "-db", "-f", str(cfg)], directory / "haproxy.log", env)
        processes.append(balancer)
        _wait_ready(f"http://127.0.0.1:{port}", balancer, directory / "haproxy.log")
        yield Fleet(url=f"http://127.0.0.1:{port}", instances=instances)
    finally:
        for process in reversed(processes):
            _stop(process)
