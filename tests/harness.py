"""Real servers for integration tests: the simulator in a subprocess, the gateway under
real uvicorn on a free port (in a thread of the test process, so start-up is quick),
and helpers to write configs that point at them."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from tunegate.app import create_app
from tunegate.config.settings import Settings, TracingSettings

TUNED = "ft:gpt-3.5-turbo-0613:acme::7qTVM5AR"
BASE = "gpt-3.5-turbo"
TRIAGE_SCHEMA = {
    "type": "object",
    "required": ["category", "priority"],
    "additionalProperties": False,
    "properties": {
        "category": {"enum": ["billing", "bug", "account", "other"]},
        "priority": {"enum": ["low", "medium", "high"]},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(url: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll `condition` until it holds (True) or `timeout_s` passes (False): for what
    another process does in its own time. A bound to fail by, never a figure to assert."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Simulator:
    """`python -m tunegate.simulator` on a free port, with its control endpoints."""

    def __init__(self, scenario: Path | None = None, seed: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "tunegate.simulator", "--port", str(self.port)]
        argv += ["--seed", str(seed)]
        if scenario is not None:
            argv += ["--scenario", str(scenario)]
        self._process = subprocess.Popen(argv)
        wait_for_http(f"{self.url}/v1/models")

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)

    def script(self, model: str, *faults: str) -> None:
        """Queue faults for the next requests to `model` ("ok" = answer normally)."""
        response = httpx.post(f"{self.url}/_sim/script", json={"model": model, "faults": faults})
        response.raise_for_status()

    def reset(self) -> None:
        httpx.delete(f"{self.url}/_sim/script").raise_for_status()
        httpx.delete(f"{self.url}/_sim/requests").raise_for_status()

    def requests(self, model: str | None = None) -> list[dict[str, Any]]:
        params = {"model": model} if model else {}
        response = httpx.get(f"{self.url}/_sim/requests", params=params)
        response.raise_for_status()
        received: list[dict[str, Any]] = response.json()
        return received


@contextlib.contextmanager
def simulator_with(scenario: Mapping[str, Any], directory: Path) -> Iterator[Simulator]:
    """A simulator running `scenario` (written to `directory`), stopped on exit."""
    path = directory / "scenario.yaml"
    path.write_text(yaml.safe_dump(dict(scenario)))
    simulator = Simulator(path)
    try:
        yield simulator
    finally:
        simulator.stop()


def task_config(
    *,
    output: Mapping[str, Any] | None = None,
    weights: Mapping[str, float] | None = None,
    routing: Mapping[str, Any] | None = None,
    **task: Any,
) -> dict[str, Any]:
    """A `ticket-triage`-like task with a tuned and a few-shot variant."""
    return {
        "output": dict(output or {"type": "json", "schema": TRIAGE_SCHEMA}),
        "variants": {
            "tuned": {
                "upstream": "sim",
                "model": TUNED,
                "system": "Classify the support ticket as JSON.",
                "params": {"temperature": 0, "max_tokens": 64},
            },
            "few_shot": {
                "upstream": "sim",
                "model": BASE,
                "system": "You classify support tickets. Answer only with JSON.",
                "examples": [
                    {
                        "user": "I was charged twice.",
                        "assistant": '{"category": "billing", "priority": "high"}',
                    }
                ],
                "params": {"temperature": 0, "max_tokens": 64},
            },
        },
        "routing": {
            "weights": dict(weights or {"tuned": 100, "few_shot": 0}),
            "fallback": ["few_shot", "tuned"],
            "retries": 1,
            "json_retries": 1,
            **(routing or {}),
        },
        **task,
    }


def gateway_config(sim_url: str, tasks: Mapping[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "upstreams": {
            "sim": {"base_url": f"{sim_url}/v1", "api_key_env": "SIM_KEY", "timeout_s": 5}
        },
        "tasks": dict(tasks),
        **top,
    }


class Gateway:
    """The gateway app from `create_app`, served by real uvicorn in a thread."""

    def __init__(
        self,
        config_path: Path,
        environ: Mapping[str, str] | None = None,
        redis_url: str | None = None,
        tracing: TracingSettings | None = None,
    ) -> None:
        self.config_path = config_path  # rewrite it, then reload, to change the config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = Settings(
            config_path=config_path,
            redis_url=redis_url,
            port=self.port,
            environ=dict(environ or {"SIM_KEY": "sk-upstream-secret"}),
            tracing=tracing,
        )
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


@contextlib.contextmanager
def running_gateway(
    tmp_path: Path,
    config: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    redis_url: str | None = None,
    tracing: TracingSettings | None = None,
) -> Iterator[Gateway]:
    """The gateway serving `config`; on the Redis at `redis_url`, else an embedded one."""
    path = tmp_path / f"gateway-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    gateway = Gateway(path, environ, redis_url, tracing)
    try:
        yield gateway
    finally:
        gateway.stop()
