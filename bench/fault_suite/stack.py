"""The processes a fault scenario runs against, all on loopback: the simulated upstream
(`tunegate simulate`), a Valkey server (killed, frozen and restarted at will) and gateways
(`tunegate serve`), each with its config in the suite's temporary directory and its output
captured in a log file the secrets scenarios read at the end."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.processes import Server, free_port, start_server
from tests.testkit.configs import BASE, TUNED, task_config
from tests.testkit.redis_server import RedisServer
from tunegate.auth import hash_key
from tunegate.state.embedded import EmbeddedServer

# The upstream key the gateway sends; the simulator refuses any other (401).
UPSTREAM_KEY = "sk-sim-" + os.urandom(12).hex()
# A well-formed caller key that the gateway does not know.
WRONG_KEY = "tg-fault-" + os.urandom(16).hex()
REPLY_SYSTEM = "Antworte dem Kunden auf Deutsch."


def tuned(name: str) -> str:
    """The name of a tuned model with one fault profile in the simulator's scenario."""
    return f"ft:gpt-3.5-turbo-0613:acme::{name}"


# Per simulated model: its behaviour in the simulator's scenario file. Each upstream
# scenario points a task's tuned variant at one of these; the few-shot variant always
# uses the healthy BASE model, so a fallback can always succeed.
HEALTHY = {"latency_ms": 15, "jitter_ms": 10}
MODELS: dict[str, dict[str, Any]] = {
    TUNED: HEALTHY,
    BASE: HEALTHY,
    tuned("storm429"): {**HEALTHY, "retry_after_s": 1, "faults": {"429": 0.6}},
    tuned("quota"): {**HEALTHY, "faults": {"quota": 1.0}},
    tuned("flaky"): {**HEALTHY, "faults": {"500": 0.1, "503": 0.1}},
    tuned("hang"): {**HEALTHY, "faults": {"hang": 0.3}},
    tuned("drip"): {**HEALTHY, "slow_chunk_ms": 40, "faults": {"slow": 1.0}},
    tuned("drop"): {**HEALTHY, "faults": {"drop": 0.3}},
    tuned("badjson"): {
        **HEALTHY,
        "faults": {"invalid_json": 0.1, "missing_field": 0.1, "wrong_enum": 0.1},
    },
    tuned("client4xx"): {**HEALTHY, "faults": {"400": 0.5, "401": 0.5}},
    tuned("huge"): {**HEALTHY, "faults": {"huge": 0.3}},
    tuned("slow"): {"latency_ms": 1500},
    tuned("never"): {**HEALTHY, "faults": {"503": 1.0}},
    # Broken beyond repair, every time.
    tuned("nonsense"): {
        **HEALTHY,
        "quality": {"valid": 0.0, "breakages": {"missing_field": 1, "wrong_enum": 1}},
    },
    # tuned("gone") is absent: the simulator answers 404 model_not_found for it.
}


def simulator_scenario() -> dict[str, Any]:
    return {"seed": 11, "api_key": UPSTREAM_KEY, "models": MODELS}


@dataclass(frozen=True)
class CallerKey:
    name: str
    key: str
    tenant: str
    tasks: tuple[str, ...] = ("*",)
    rpm: int | None = None
    daily_budget_usd: float | None = None
    admin: bool = False

    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "sha256": hash_key(self.key),
            "tenant": self.tenant,
            "tasks": list(self.tasks),
            "admin": self.admin,
        }
        if self.rpm is not None:
            entry["rpm"] = self.rpm
        if self.daily_budget_usd is not None:
            entry["daily_budget_usd"] = self.daily_budget_usd
        return entry


def _new_key() -> str:
    return "tg-fault-" + os.urandom(16).hex()


@dataclass(frozen=True)
class Keys:
    """Every caller key the suite uses; all of them are searched for at the end."""

    main: CallerKey = field(default_factory=lambda: CallerKey("main", _new_key(), "acme"))
    admin: CallerKey = field(
        default_factory=lambda: CallerKey("ops", _new_key(), "ops", admin=True)
    )
    tenant_a: CallerKey = field(
        default_factory=lambda: CallerKey("a", _new_key(), "tenant-a", ("shared", "a-only"))
    )
    tenant_b: CallerKey = field(
        default_factory=lambda: CallerKey("b", _new_key(), "tenant-b", ("shared", "b-only"))
    )
    limited: CallerKey = field(
        default_factory=lambda: CallerKey("limited", _new_key(), "acme", rpm=120)
    )
    budget: CallerKey = field(
        default_factory=lambda: CallerKey("budget", _new_key(), "acme", daily_budget_usd=0.02)
    )
    revoked: CallerKey = field(default_factory=lambda: CallerKey("revoked", _new_key(), "acme"))

    def all(self) -> list[CallerKey]:
        return [
            self.main,
            self.admin,
            self.tenant_a,
            self.tenant_b,
            self.limited,
            self.budget,
            self.revoked,
        ]


def json_task(model: str, upstream: str = "sim", **routing: Any) -> dict[str, Any]:
    """A triage task whose tuned variant calls `model`, with a healthy few-shot fallback
    (the tests' task, `tests.harness.task_config`)."""
    task = task_config(routing={"fallback": ["few_shot"], **routing})
    task["variants"]["tuned"].update(model=model, upstream=upstream)
    return task


def text_task(model: str, upstream: str = "sim", **routing: Any) -> dict[str, Any]:
    """A German reply task (text output) whose tuned variant calls `model`."""
    return {
        "output": {"type": "text"},
        "variants": {
            "tuned": {"upstream": upstream, "model": model, "system": REPLY_SYSTEM},
            "few_shot": {"upstream": "sim", "model": BASE, "system": REPLY_SYSTEM},
        },
        "routing": {
            "weights": {"tuned": 100, "few_shot": 0},
            "fallback": ["few_shot"],
            "retries": 1,
            **routing,
        },
    }


def gateway_config(sim_url: str, keys: Keys, dead_url: str, **server: Any) -> dict[str, Any]:
    """The config every gateway of the suite serves (process scenarios vary `server`)."""
    upstream = {"base_url": f"{sim_url}/v1", "api_key_env": "SIM_KEY", "timeout_s": 5}
    tasks: dict[str, Any] = {
        "triage": json_task(TUNED),
        "reply": text_task(TUNED),
        "storm429": json_task(tuned("storm429"), retries=2),
        "quota": json_task(tuned("quota")),
        "flaky": json_task(tuned("flaky"), retries=2),
        "hang": json_task(tuned("hang"), upstream="sim-short"),
        "drip": text_task(tuned("drip")),
        "refused": json_task(TUNED, upstream="dead"),
        "drop-json": json_task(tuned("drop"), retries=2),
        "drop-text": text_task(tuned("drop"), retries=2),
        "badjson": json_task(tuned("badjson")),
        "client4xx": json_task(tuned("client4xx"), retries=2),
        "huge": json_task(tuned("huge")),
        "gone": json_task(tuned("gone"), retries=2),
        "slow": json_task(tuned("slow")),
        "never": json_task(tuned("never"), fallback=[]),
        "nonsense": {
            **json_task(tuned("nonsense"), fallback=[]),
        },
        "shared": json_task(TUNED),
        "a-only": json_task(TUNED),
        "b-only": json_task(TUNED),
    }
    prices = {"input": 3.0, "output": 6.0}
    return {
        "upstreams": {
            "sim": upstream,
            "sim-short": {**upstream, "timeout_s": 1},
            "dead": {**upstream, "base_url": f"{dead_url}/v1"},
        },
        "pricing": {model: prices for model in [*MODELS, tuned("gone")]},
        "defaults": {"cache": {"ttl_s": 600, "scope": "tenant"}, "deadline_s": 20},
        "tasks": tasks,
        "auth": {"keys": [k.entry() for k in keys.all()]},
        "server": {"max_in_flight": 1024, **server},
    }


def start_valkey() -> RedisServer:
    """One Valkey server with the faults store scenarios inject (the tests' own wrapper):
    its port survives kill and restart, so gateways reconnect to the same URL."""
    return RedisServer(EmbeddedServer().start())


@dataclass
class Gateway:
    """A `tunegate serve` process."""

    name: str
    server: Server
    config_path: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.process.pid


def start_gateway(name: str, config: Mapping[str, Any], redis_url: str, workdir: Path) -> Gateway:
    """Write `config` and start `tunegate serve` on it; return once /readyz says 200."""
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    port = free_port()
    environ = {
        **os.environ,
        "SIM_KEY": UPSTREAM_KEY,
        "REDIS_URL": redis_url,
        "TUNEGATE_LOG_LEVEL": "info",
    }
    argv = [sys.executable, "-m", "tunegate.commands.cli", "serve", "--config", str(config_path)]
    argv += ["--port", str(port)]
    server = start_server(
        name, argv, port=port, ready_path="/healthz", log_dir=workdir, environ=environ
    )
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/readyz", timeout=2).status_code != 200:
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} never became ready:\n{server.log_tail()}")
        time.sleep(0.1)
    return Gateway(name, server, config_path)


def start_simulator(workdir: Path) -> Server:
    scenario_path = workdir / "simulator.yaml"
    scenario_path.write_text(yaml.safe_dump(simulator_scenario(), sort_keys=False))
    port = free_port()
    argv = [sys.executable, "-m", "tunegate.commands.cli", "simulate", "--port", str(port)]
    argv += ["--scenario", str(scenario_path)]
    return start_server("simulator", argv, port=port, ready_path="/v1/models", log_dir=workdir)


def process_figures(pid: int) -> tuple[float, int]:
    """Resident memory (MiB) and open file descriptors of a process (its children's
    not included)."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kib / 1024, fds
