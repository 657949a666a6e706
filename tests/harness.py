"""Real servers for integration tests: the simulator in a subprocess, the gateway under
real uvicorn on a free port (in a thread of the test process, so start-up is quick),
and helpers to write configs that point at them."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml
from starlette.routing import BaseRoute

from tests.testkit.configs import BASE as BASE
from tests.testkit.configs import TRIAGE_SCHEMA as TRIAGE_SCHEMA
from tests.testkit.configs import TUNED as TUNED
from tests.testkit.configs import gateway_config as gateway_config
from tests.testkit.configs import task_config as task_config
from tunegate.app import create_app
from tunegate.commands.protocol import gateway_protocol
from tunegate.config.settings import Settings, TracingSettings
from tunegate.state.embedded import free_port as free_port


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


class Gateway:
    """The gateway app from `create_app`, served by real uvicorn in a thread with the
    HTTP protocol `tunegate serve` runs."""

    def __init__(
        self,
        config_path: Path,
        environ: Mapping[str, str] | None = None,
        redis_url: str | None = None,
        tracing: TracingSettings | None = None,
        routes: Sequence[BaseRoute] = (),
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
        app = create_app(settings)
        app.router.routes.extend(routes)  # a test's own endpoints, after the gateway's
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            http=gateway_protocol(10.0),
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
    routes: Sequence[BaseRoute] = (),
) -> Iterator[Gateway]:
    """The gateway serving `config` (and `routes`, a test's own endpoints); on the Redis
    at `redis_url`, else an embedded one."""
    path = tmp_path / f"gateway-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    gateway = Gateway(path, environ, redis_url, tracing, routes)
    try:
        yield gateway
    finally:
        gateway.stop()


def metric(gw: Gateway, name: str, **labels: str) -> float:
    """The value of one series of `name` on the gateway's /metrics (0 when absent),
    matched on exactly `labels`, whatever order the exposition writes them in."""
    for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines():
        found = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if found and dict(re.findall(r'(\w+)="([^"]*)"', found.group(1))) == labels:
            return float(found.group(2))
    return 0.0
