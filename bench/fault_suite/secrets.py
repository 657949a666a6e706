"""After the whole suite: no caller key and no upstream key in any process's log, in any
error body a caller received, or in `/metrics`; and the metric series stay bounded
whatever callers send (users, units, unknown task names)."""

from __future__ import annotations

import os
import re
from typing import Any

from bench.fault_suite.core import Scenario, Suite, Verdict
from bench.fault_suite.load import ERROR_BODIES, Outcome, Tally, chat, run_load, ticket
from bench.fault_suite.stack import UPSTREAM_KEY, WRONG_KEY

# A request id or a key's hash would be 32+ hex characters in a label value.
_UNBOUNDED = re.compile(r'="[^"]*(ticket|tg-fault|sk-sim|user-|unit-|[0-9a-f]{32})[^"]*"')


def _secrets(suite: Suite) -> dict[str, str]:
    named = {f"caller key {k.name}": k.key for k in suite.keys.all()}
    named["wrong caller key"] = WRONG_KEY
    named["upstream key"] = UPSTREAM_KEY
    return named


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    """What secrets `text` holds, whole or by their last 12 characters."""
    return [name for name, secret in secrets.items() if secret[-12:] in text]


async def leaks(suite: Suite) -> Verdict:
    # Fresh errors with every key, so there is something to search even when run alone.
    tally = await _burst(suite, 300)
    secrets = _secrets(suite)
    verdict = Verdict(tally)
    verdict.standard(allowed={200, 400, 401, 403, 404, 429})
    found: dict[str, list[str]] = {}
    for path in suite.log_paths():
        text = path.read_text(errors="replace")
        for name in _leaks(text, secrets):
            found.setdefault(name, []).append(path.name)
    for body in ERROR_BODIES:
        for name in _leaks(body, secrets):
            found.setdefault(name, []).append("an error body")
    for gateway in suite.gateways:
        if gateway.server.process.poll() is None:
            for name in _leaks(await suite.metrics_text(gateway), secrets):
                found.setdefault(name, []).append(f"{gateway.name} /metrics")
    logs = sum(p.stat().st_size for p in suite.log_paths())
    verdict.check("no key in logs, error bodies or /metrics", not found)
    verdict.note(
        f"searched {len(suite.log_paths())} logs ({logs / 1024:.0f} KiB), "
        f"{len(ERROR_BODIES)} error bodies, /metrics of the running gateways"
        + (f"; found: {found}" if found else "")
    )
    return verdict


async def _burst(suite: Suite, total: int) -> Tally:
    """Requests that vary everything a caller controls: keys, users, sticky units, task
    names, owned parameters."""
    clients = [suite.client(k.key) for k in suite.keys.all()]
    clients.append(suite.client(WRONG_KEY))

    async def one(index: int) -> Outcome:
        client = clients[index % len(clients)]
        nonce = os.urandom(4).hex()
        task = ("triage", "reply", f"task-{nonce}")[index % 3]
        extra: dict[str, Any] = {"temperature": 1.7} if index % 7 == 0 else {}
        return await chat(
            client,
            task,
            ticket(index),
            json_task=task != "reply",
            headers={"x-tunegate-unit": f"unit-{nonce}"},
            user=f"user-{nonce}",
            **extra,
        )

    return await run_load(one, concurrency=20, total=total)


def _series(metrics: str) -> list[str]:
    return [line for line in metrics.splitlines() if line and not line.startswith("#")]


async def series(suite: Suite) -> Verdict:
    tally = await _burst(suite, 300)
    before = _series(await suite.metrics_text())
    more = await _burst(suite, 600)
    after = _series(await suite.metrics_text())
    tally.extend(more)
    verdict = Verdict(tally)
    verdict.standard(allowed={200, 400, 401, 403, 404, 429})
    unbounded = [line for line in after if _UNBOUNDED.search(line)]
    verdict.check(
        "600 requests with novel users, units, task names: no new series", len(after) <= len(before)
    )
    verdict.check("no label value from a request", not unbounded)
    verdict.check("series count < 5,000", len(after) < 5000)
    verdict.note(
        f"{len(before)} -> {len(after)} series" + (f"; e.g. {unbounded[:2]}" if unbounded else "")
    )
    return verdict


GROUP = "secrets"
SCENARIOS = [
    Scenario("secrets-series", GROUP, "metric series bounded", series),
    Scenario("secrets-leaks", GROUP, "keys in logs, error bodies, /metrics", leaks),
]
