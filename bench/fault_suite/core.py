"""What a scenario is, what it returns, and the running system it is handed (`Suite`)."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from bench.fault_suite.load import Tally, sdk_client
from bench.fault_suite.stack import (
    Gateway,
    Keys,
    gateway_config,
    start_gateway,
    start_simulator,
    start_valkey,
)
from bench.processes import Server, free_port


@dataclass
class Verdict:
    """A scenario's load figures and its checks: (what is promised, whether it held)."""

    tally: Tally
    checks: list[tuple[str, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, promise: str, held: bool) -> None:
        self.checks.append((promise, bool(held)))

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def passed(self) -> bool:
        return all(held for _, held in self.checks) and bool(self.checks)

    def standard(self, *, allowed: set[int] | None = None, max_lost: int = 0) -> None:
        """The checks every scenario makes: nothing lost, no wrong 200, and only the
        statuses the scenario allows."""
        self.check(f"lost <= {max_lost}", self.tally.lost <= max_lost)
        if self.tally.lost:
            causes = Counter(
                o.note or "?" for o in self.tally.outcomes if o.status is None and not o.refused
            )
            self.note(f"lost: {dict(causes)}")
        self.check("0 wrong answers", self.tally.wrong == 0)
        if allowed is not None:
            seen = {o.status for o in self.tally.outcomes if o.status is not None}
            names = "/".join(str(s) for s in sorted(allowed))
            self.check(f"only {names}", seen <= allowed)


@dataclass(frozen=True)
class Scenario:
    name: str
    group: str
    summary: str
    run: Callable[[Suite], Awaitable[Verdict]]


class Suite:
    """The system under test, started once and shared by every scenario: the simulator,
    one Valkey, two gateway instances on it (the second started when first needed)."""

    def __init__(self, soak_seconds: float) -> None:
        self.soak_seconds = soak_seconds
        self._tmp = tempfile.TemporaryDirectory(prefix="tunegate-faults-")
        self.workdir = Path(self._tmp.name)
        self.keys = Keys()
        self.dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        self.simulator: Server = start_simulator(self.workdir)
        self.valkey = start_valkey()
        self.gateways: list[Gateway] = []
        self.stopped_logs: list[Path] = []
        self._second: Gateway | None = None
        self._clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}
        self.http = httpx.AsyncClient(timeout=30)
        try:
            self._main = self.start_gateway("gateway-1", self.config())
        except BaseException:
            self.stop()
            raise

    def config(self, **server: Any) -> dict[str, Any]:
        return gateway_config(self.simulator.url, self.keys, self.dead_url, **server)

    @property
    def main(self) -> Gateway:
        return self._main

    @property
    def second(self) -> Gateway:
        """A second instance on the same store, for limits shared across instances."""
        if self._second is None:
            self._second = self.start_gateway("gateway-2", self.config())
        return self._second

    def start_gateway(
        self, name: str, config: dict[str, Any], redis_url: str | None = None
    ) -> Gateway:
        gateway = start_gateway(name, config, redis_url or self.valkey.url, self.workdir)
        self.gateways.append(gateway)
        return gateway

    def client(self, key: str, gateway: Gateway | None = None) -> openai.AsyncOpenAI:
        """A shared SDK client (retries off) for `key` against `gateway` (the main one)."""
        url = (gateway or self.main).url
        found = self._clients.get((url, key))
        if found is None:
            found = self._clients[(url, key)] = sdk_client(url, key)
        return found

    def log_paths(self) -> list[Path]:
        return sorted(self.workdir.glob("*.log"))

    async def sim_requests(self, model: str) -> list[dict[str, Any]]:
        response = await self.http.get(
            f"{self.simulator.url}/_sim/requests", params={"model": model}
        )
        response.raise_for_status()
        received: list[dict[str, Any]] = response.json()
        return received

    async def sim_reset(self) -> None:
        await self.http.delete(f"{self.simulator.url}/_sim/requests")

    async def metrics_text(self, gateway: Gateway | None = None) -> str:
        response = await self.http.get(f"{(gateway or self.main).url}/metrics")
        return response.text

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        await self.http.aclose()

    def stop(self) -> None:
        for gateway in self.gateways:
            gateway.server.stop()
        self.simulator.stop()
        self.valkey.stop()

    def cleanup(self) -> None:
        self._tmp.cleanup()
