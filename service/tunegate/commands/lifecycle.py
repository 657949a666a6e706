"""`tunegate demo --lifecycle`: from few-shot to tuned on this machine, no key needed.

The simulator (`config/simulator/lifecycle.yaml`), an embedded store and the gateway (real
processes), then the story in five steps, each running the command a person would:

1. a few-shot-only task with `capture:` serves traffic; callers give feedback;
2. `tunegate dataset export` writes the dataset and its check (tokens, estimated cost);
3. `tunegate tune start`, then `tunegate tune status --follow` until the model exists;
4. the candidate YAML it printed goes into the config (reload): served as the shadow;
5. the candidate gets half the traffic, and `tunegate report` gives the decision with
   its intervals and the break-even on the dataset's estimated training cost.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from tunegate.commands.demo import ROOT, TICKETS, _gateway_argv, _process
from tunegate.simulator.answers import triage
from tunegate.state.embedded import EmbeddedServer

SCENARIO = ROOT / "config" / "simulator" / "lifecycle.yaml"
TASK = "ticket-triage"
EXAMPLES = [
    ("I was charged twice this month.", "billing", "high"),
    ("The export button crashes the app every time.", "bug", "high"),
    ("How do I change the email on my account?", "account", "low"),
    ("Do you have a dark mode?", "other", "low"),
    ("My invoice shows the wrong VAT number.", "billing", "medium"),
    ("The search page shows an error after the update.", "bug", "medium"),
    ("I cannot log in since yesterday, urgent!", "account", "high"),
    ("Can I get a printed catalogue when you can?", "other", "low"),
    ("Please refund the duplicate payment from last week.", "billing", "medium"),
    ("Uploading a photo fails with error 413 every time.", "bug", "medium"),
    ("How do I add a colleague to my account?", "account", "low"),
    ("Our whole team is locked out of the account, we are down!", "account", "high"),
    ("Is there an API for exporting reports?", "other", "low"),
    ("The app crashed and lost my draft, please fix asap.", "bug", "high"),
]
SHORT_SYSTEM = "Classify the support ticket."


def run_lifecycle(seed: int = 7, concurrency: int = 8) -> int:
    started = time.monotonic()
    rng = random.Random(seed)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tunegate-life-")))
        store = stack.enter_context(EmbeddedServer())
        print("tunegate demo --lifecycle: simulator, store and gateway starting...", flush=True)
        sim_argv = [sys.executable, "-m", "tunegate.simulator", "--scenario", str(SCENARIO)]
        sim_url = stack.enter_context(_process("simulator", sim_argv, workdir, "/v1/models"))
        config = workdir / "gateway.yaml"
        _write(config, _config())
        env = {
            "OPENAI_BASE_URL": f"{sim_url}/v1",
            "OPENAI_API_KEY": "demo-key-not-secret",
            "REDIS_URL": store.url,
            "TUNEGATE_CONFIG": str(config),
        }
        url = stack.enter_context(
            _process("gateway", _gateway_argv(config), workdir, "/readyz", env)
        )
        print(f"  logs and files in {workdir}\n", flush=True)
        story = Story(url, config, workdir, env, rng, concurrency)
        code = story.play()
    print(f"\nthe whole lifecycle took {time.monotonic() - started:.0f} s")
    return code


class Story:
    def __init__(
        self,
        url: str,
        config: Path,
        workdir: Path,
        env: Mapping[str, str],
        rng: random.Random,
        concurrency: int,
    ) -> None:
        self.url, self.config, self.workdir = url, config, workdir
        self.env = {**os.environ, **env}
        self.rng = rng
        self.concurrency = concurrency
        self.sent = 0

    def play(self) -> int:
        step("1/5", "few-shot only, capture on: 160 tickets, each scored by its caller")
        self.traffic(160)
        print(f"  captured: {self.metric('tunegate_capture_total', 'result')}")
        step("2/5", "tunegate dataset export ticket-triage --validation-share 0.1 --min-score 1")
        dataset = self.workdir / "triage.jsonl"
        exported = self.run(
            "dataset", "export", TASK, "--out", str(dataset),
            "--validation-share", "0.1", "--min-score", "1",
        )  # fmt: skip
        if exported.returncode != 0:
            return 1
        step("3/5", "tunegate tune start, then tune status --follow")
        started = self.run(
            "tune", "start", TASK, "--dataset", str(dataset), "--suffix", "triage",
            "--validation", str(self.workdir / "triage.validation.jsonl"),
        )  # fmt: skip
        if started.returncode != 0:
            return 1
        job = started.stdout.strip()
        if self.run("tune", "status", job, "--follow", "--interval", "0.5", live=True).returncode:
            return 1
        status = self.run("tune", "status", job, show=False)  # the YAML it printed, again
        yaml_text = status.stdout[status.stdout.index("# Add to your config") :]
        step("4/5", "the candidate as the shadow: merged into the config, POST /admin/reload")
        overlay = yaml.safe_load(yaml_text)
        data = _merge(yaml.safe_load(self.config.read_text()), overlay)
        self.reload(data)
        self.traffic(120)
        print(f"  shadow calls: {self.metric('tunegate_shadow_requests_total', 'result')}")
        print(self.shadow_figures())
        step("5/5", "the candidate as an arm: weights few_shot 50, candidate 50; the report")
        routing = data["tasks"][TASK]["routing"]
        candidate = routing["shadow"]["variant"]
        routing["weights"] = {"few_shot": 50, candidate: 50}
        routing.pop("shadow")
        self.reload(data)
        self.traffic(700)
        return self.run("report", TASK, "--url", self.url).returncode

    def run(
        self, *argv: str, show: bool = True, live: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """A `tunegate` command as a person runs it; its output shown."""
        command = [sys.executable, "-m", "tunegate.commands.cli", *argv]
        if live:  # on a terminal, `tune status --follow` draws its progress line
            return subprocess.run(command, env=self.env, text=True, check=False)
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, check=False)
        if show and done.stdout.strip():
            print(done.stdout.rstrip())
        if done.stderr.strip() and (show or done.returncode):
            print(done.stderr.rstrip(), flush=True)
        return done

    def reload(self, data: dict[str, Any]) -> None:
        _write(self.config, data)
        response = httpx.post(f"{self.url}/admin/reload", timeout=30)
        response.raise_for_status()

    def traffic(self, requests: int) -> None:
        tickets = [f"{self.rng.choice(TICKETS)} (#{self.sent + i})" for i in range(requests)]
        self.sent += requests
        asyncio.run(_send(self.url, tickets, self.concurrency))

    def shadow_figures(self) -> str:
        """The report's paired figures of the candidate and the serving variant."""
        from tunegate.experiments.document import document_from_json

        reply = httpx.get(f"{self.url}/v1/experiments/{TASK}", timeout=30).json()
        shadow = document_from_json(reply).shadow
        if not shadow:
            return "  no shadow pairs yet"
        agreement = shadow.agreement
        latency = shadow.latency_s_difference
        cost = shadow.cost_usd_difference
        return (
            f"  on the same inputs ({shadow.answered} answered): agreement "
            f"{_number(agreement.value, 2)} {_interval(agreement.ci95)}; candidate - few_shot "
            f"latency {_number(latency.mean, 4, '+')} s {_interval(latency.ci95)}, cost "
            f"{_number(cost.mean, 7, '+')} USD {_interval(cost.ci95, 7)}"
        )

    def metric(self, name: str, label: str) -> str:
        counts: dict[str, float] = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(name + "{") and f'task="{TASK}"' in line:
                value = line.split(f'{label}="')[1].split('"')[0]
                counts[value] = counts.get(value, 0.0) + float(line.rsplit(" ", 1)[1])
        return ", ".join(f"{n:.0f} {value}" for value, n in sorted(counts.items())) or "none"


async def _send(url: str, tickets: list[str], concurrency: int) -> None:
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(ticket: str) -> None:
            async with semaphore:
                body = {"model": TASK, "messages": [{"role": "user", "content": ticket}]}
                answer = await client.post("/v1/chat/completions", json=body)
                if answer.status_code != 200:
                    return
                content = answer.json()["choices"][0]["message"]["content"]
                category, priority = triage(ticket)
                right = orjson.loads(content) == {"category": category, "priority": priority}
                feedback = {"request_id": answer.headers["x-request-id"], "score": right}
                await client.post("/v1/feedback", json=feedback)

        await asyncio.gather(*(one(ticket) for ticket in tickets))


def _config() -> dict[str, Any]:
    """A few-shot-only `ticket-triage` that captures every exchange and names its tuning
    target; no `ft:` variant yet, no `training_cost_usd`."""
    examples = [
        {"user": text, "assistant": orjson.dumps({"category": c, "priority": p}).decode()}
        for text, c, p in EXAMPLES
    ]
    few_shot = {
        "upstream": "openai",
        "model": "gpt-3.5-turbo",
        "system": "You classify support tickets. Answer only with JSON like "
        '{"category": "...", "priority": "..."}, where category is one of billing, bug, '
        "account, other and priority one of low, medium, high.",
        "examples": examples,
        "params": {"temperature": 0, "max_tokens": 64},
        "json_mode": True,
    }
    schema = {
        "type": "object",
        "required": ["category", "priority"],
        "additionalProperties": False,
        "properties": {
            "category": {"enum": ["billing", "bug", "account", "other"]},
            "priority": {"enum": ["low", "medium", "high"]},
        },
    }
    task = {
        "description": "Classify a support ticket by category and priority.",
        "output": {"type": "json", "schema": schema},
        "variants": {"few_shot": few_shot},
        "routing": {"weights": {"few_shot": 100}, "retries": 1, "json_retries": 1},
        "capture": {"rate": 1.0},
        "tuning": {"system": SHORT_SYSTEM, "base_model": "gpt-3.5-turbo", "upstream": "openai"},
    }
    upstream = {
        "base_url": "https://api.openai.com/v1",
        "base_url_env": "OPENAI_BASE_URL",
        "api_key_env": "OPENAI_API_KEY",
        "timeout_s": 30,
    }
    return {"upstreams": {"openai": upstream}, "tasks": {TASK: task}}


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """`overlay` into `base`: mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _write(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True))


def _interval(bounds: tuple[float, float] | None, digits: int = 4) -> str:
    return f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]" if bounds else "[-]"


def _number(value: float | None, digits: int, sign: str = "") -> str:
    return "-" if value is None else f"{value:{sign}.{digits}f}"


def step(number: str, title: str) -> None:
    print(f"\n== step {number}: {title}", flush=True)
