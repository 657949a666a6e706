"""Oversized upstream answers are cut at `max_response_bytes` while they are read, so a
gateway process under answers of several MiB keeps its memory flat (issue 16, item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from tests.harness import TUNED, Simulator, free_port, gateway_config, task_config, wait_for_http

SERVE = [sys.executable, "-m", "tunegate.commands.cli", "serve"]
CONCURRENCY = 20
REQUESTS = 60


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (the peak resident size so far) of a process, in MiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0]) / 1024
    return figures


@pytest.fixture
def gateway(sim: Simulator, tmp_path: Path) -> Iterator[tuple[str, int]]:
    config = tmp_path / "gateway.yaml"
    tasks = {"triage": task_config(), "reply": task_config(output={"type": "text"})}
    config.write_text(yaml.safe_dump(gateway_config(sim.url, tasks)))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["SIM_KEY"] = "sk-not-used"
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [*SERVE, "--config", str(config), "--port", str(port)],
            stdout=log,
            stderr=log,
            env=env,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout_s=30)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)


def ask(url: str, i: int) -> int:
    body = {"model": "triage", "messages": [{"role": "user", "content": f"ticket {i}"}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code


def ask_streamed(url: str, i: int) -> int:
    body = {
        "model": "reply",
        "messages": [{"role": "user", "content": f"ticket {i}"}],
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as answer:
        text = answer.read().decode()
    # Text streams fall back before their first chunk: every answer is whole and ends.
    assert text.rstrip().endswith("data: [DONE]"), text[-300:]
    return answer.status_code


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("ask", [ask, ask_streamed], ids=["plain", "streamed"])
def test_answers_of_several_mib_leave_the_gateway_memory_flat(
    sim: Simulator, gateway: tuple[str, int], ask: Callable[[str, int], int]
) -> None:
    url, pid = gateway
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        assert set(pool.map(ask, [url] * CONCURRENCY, range(CONCURRENCY))) == {200}  # warm
        before = memory_mib(pid)
        sim.script(TUNED, *["huge"] * REQUESTS)  # 4 MiB answers, whatever max_tokens says
        statuses = list(pool.map(ask, [url] * REQUESTS, range(100, 100 + REQUESTS)))
    after = memory_mib(pid)
    assert len(sim.requests(TUNED)) >= REQUESTS  # every huge answer was sent
    sim.reset()
    assert statuses == [200] * REQUESTS  # each huge answer is a failed attempt; fallback
    grown = after["VmHWM"] - before["VmHWM"]
    # Read whole, 20 answers of 4 MiB in flight take 80 MiB and more; cut, a few KiB each.
    print(f"peak RSS grew {grown:.1f} MiB ({before} -> {after})")
    assert grown < 40, f"peak RSS grew {grown:.0f} MiB ({before} -> {after})"
