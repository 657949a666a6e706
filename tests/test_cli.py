"""`tunegate serve` as a process: it starts its embedded store, drains on SIGTERM and
stops the store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

from tests.harness import (
    TUNED,
    Simulator,
    free_port,
    gateway_config,
    task_config,
    wait_for_http,
    wait_until,
)
from tunegate.state.embedded import answers_ping

SERVE = [sys.executable, "-m", "tunegate.commands.cli", "serve"]
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gateway.yaml"


def test_sigterm_stops_the_gateway_and_its_embedded_store(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["OPENAI_API_KEY"] = "sk-not-used"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*SERVE, "--config", str(EXAMPLE), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout_s=30)
        found = re.search(r"redis://127\.0\.0\.1:(\d+)", log.read_text())
        assert found, log.read_text()
        store_port = int(found.group(1))
        assert answers_ping(store_port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert wait_until(lambda: not answers_ping(store_port), timeout_s=2)
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones_with_503(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({"models": {TUNED: {"latency_ms": 1500}, "*": {}}}))
    sim = Simulator(scenario)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_config(sim.url, {"slow": task_config()})))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["SIM_KEY"] = "sk-not-used"
    with (tmp_path / "serve.log").open("wb") as out:
        process = subprocess.Popen(
            [*SERVE, "--config", str(config), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for_http(f"{url}/readyz", timeout_s=30)
        body = {"model": "slow", "messages": [{"role": "user", "content": "My bill is wrong."}]}
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=20)
            assert wait_until(lambda: len(sim.requests(TUNED)) == 1)  # the slow one is in flight
            process.send_signal(signal.SIGTERM)
            assert wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 503)
            refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5)
            ready = httpx.get(f"{url}/readyz", timeout=5)
            assert slow.result().status_code == 200  # finished after the signal
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["x-should-retry"] == "true"
        assert refused.json()["error"]["code"] == "overloaded"
        assert ready.status_code == 503
        assert ready.json()["status"] == "draining"
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        sim.stop()
