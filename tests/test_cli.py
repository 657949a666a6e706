"""`tunegate serve` as a process: it starts its embedded store, drains on SIGTERM and
stops the store."""

from __future__ import annotations

import os
import re
import signal
import socket
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


def serve_and_wait(
    tmp_path: Path, *argv: str, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run `tunegate serve ARGV` to its exit (it must exit by itself): code and stderr."""
    environ = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run(
        [*SERVE, *argv],
        capture_output=True,
        text=True,
        env={**environ, **(env or {})},
        timeout=60,
        cwd=tmp_path,
    )
    return done.returncode, done.stderr


def test_a_taken_port_is_one_line_and_exit_1_with_nothing_left_running(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = serve_and_wait(
            tmp_path, "--config", str(EXAMPLE), "--port", str(port), env={"OPENAI_API_KEY": "x"}
        )
    assert code == 1
    assert err.splitlines() == [
        f"tunegate serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_a_bad_config_or_a_missing_secret_is_exit_1_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text() + "tasks: {}\n")
    code, err = serve_and_wait(tmp_path, "--config", str(bad), env={"OPENAI_API_KEY": "x"})
    assert code == 1
    assert err.startswith(f"tunegate: invalid config: {bad}:") and "duplicate key 'tasks'" in err
    assert "Traceback" not in err and "{" not in err
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run(
        [*SERVE, "--config", str(EXAMPLE)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert "OPENAI_API_KEY is not set" in done.stderr and "Traceback" not in done.stderr


def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    code, err = serve_and_wait(tmp_path, "--config", str(EXAMPLE), "--port", "99999")
    assert code == 2 and "not a port number" in err
    code, err = serve_and_wait(tmp_path, "--config", str(EXAMPLE), env={"PORT": "99999"})
    assert code == 2 and "PORT='99999' is not a port" in err


def test_a_client_that_never_finishes_its_headers_is_dropped(tmp_path: Path) -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["server"] = {"header_timeout_s": 0.5}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["OPENAI_API_KEY"] = "sk-not-used"
    with (tmp_path / "serve.log").open("wb") as out:
        process = subprocess.Popen(
            [*SERVE, "--config", str(path), "--port", str(port)], stdout=out, stderr=out, env=env
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout_s=30)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: unfinished
            assert slow.recv(1024) == b""  # closed by the server, no answer
        with socket.create_connection(("127.0.0.1", port), timeout=20) as idle:
            assert idle.recv(1024) == b""  # connected and silent: closed too
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
