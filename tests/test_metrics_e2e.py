"""`/metrics` under real traffic (issue 6): a real simulator, real uvicorn, a real embedded
store. Totals add up across `tunegate serve --workers 2`; cost and token counters equal
what the responses told their callers; request values never become series."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import (
    BASE,
    TUNED,
    Simulator,
    free_port,
    gateway_config,
    running_gateway,
    task_config,
    wait_for_http,
)
from tests.openai_shapes import checked_client
from tunegate.auth import hash_key
from tunegate.observability.metrics import FLUSH_DELAY_S

SERVE = [sys.executable, "-m", "tunegate.commands.cli", "serve"]
TRIAGE = "triage"  # JSON
NOTES = "notes"  # text
INTAKE = "intake"  # JSON, the task whose answers get re-asked
KEY = "key-ops"
# USD per 1M tokens, so every answer costs something and the sums cannot pass at zero.
PRICING = {TUNED: {"input": 3.0, "output": 6.0}, BASE: {"input": 0.5, "output": 1.5}}
# The cost header has 10 decimals: each response may be off by half of 1e-10 USD.
HEADER_RESOLUTION = Decimal("1e-10")


def config(sim: Simulator, **top: Any) -> dict[str, Any]:
    """Three tasks; with `auth`, one admin key `KEY` that may call them all."""
    tasks = {
        TRIAGE: task_config(weights={"tuned": 50, "few_shot": 50}, routing={"sticky": "user"}),
        NOTES: task_config(output={"type": "text"}),
        INTAKE: task_config(),
    }
    return gateway_config(sim.url, tasks, pricing=PRICING, **top)


# -- what the responses said -----------------------------------------------------------


@dataclass
class Ledger:
    """The figures callers were told, summed: what `/metrics` must agree with.

    Tokens are those of the answers in the bodies, except for cache hits (no upstream
    call), by task and kind."""

    outcomes: Counter[str] = field(default_factory=Counter)
    cost_usd: Decimal = Decimal(0)
    tokens: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def add(self, other: Ledger) -> None:
        self.outcomes.update(other.outcomes)
        self.cost_usd += other.cost_usd
        self.tokens.update(other.tokens)


@dataclass(frozen=True)
class Ask:
    """One chat request: the task (or an unknown name), its text and its options."""

    task: str
    text: str
    stream: bool = False
    user: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def send(client: httpx.Client, ask: Ask, ledger: Ledger) -> httpx.Response:
    """Send `ask` and enter what its response says into `ledger`."""
    body: dict[str, Any] = {
        "model": ask.task,
        "stream": ask.stream,
        "messages": [{"role": "user", "content": ask.text}],
    }
    if ask.stream:
        body["stream_options"] = {"include_usage": True}
    if ask.user is not None:
        body["user"] = ask.user
    response = client.post("/v1/chat/completions", json=body, headers=dict(ask.headers))
    cost = response.headers.get("x-tunegate-cost-usd", "0")
    usage: dict[str, int] = {}
    if response.status_code == 200:
        if ask.stream:
            # Usage and cost arrive in the last chunk before [DONE] (SPEC: streams).
            last = response.text.split("data: ")[-2]
            chunk = orjson.loads(last)
            usage, cost = chunk["usage"], chunk["cost_usd"]
        else:
            usage = response.json()["usage"]
    ledger.outcomes[outcome_of(response)] += 1
    ledger.cost_usd += Decimal(cost)
    if usage and response.headers.get("x-tunegate-cache") != "hit":
        for kind in ("prompt", "completion"):
            ledger.tokens[(ask.task, kind)] += usage.get(f"{kind}_tokens", 0)
    return response


def outcome_of(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "fallback" if "x-tunegate-fallback" in response.headers else "ok"
    if response.status_code < 500:
        return "rejected"
    code = response.json()["error"]["code"]
    return "invalid_output" if code == "invalid_output" else "error"


# -- what /metrics says ----------------------------------------------------------------


# Experiment gauges come from the store, refreshed by each worker in its own time, and
# their bounds appear as samples accrue: they are left out of the counts below.
EXPERIMENTS = "tunegate_experiment_"


@dataclass(frozen=True)
class Totals:
    """`/metrics` summed over the labels these tests do not compare, and its number of
    series (samples; histogram buckets count one each)."""

    outcomes: Counter[str]
    cost_usd: float
    tokens: Counter[tuple[str, str]]
    series: int

    @property
    def requests(self) -> int:
        return int(sum(self.outcomes.values()))

    def __sub__(self, earlier: Totals) -> Totals:
        """What changed since `earlier`."""
        return Totals(
            self.outcomes - earlier.outcomes,
            self.cost_usd - earlier.cost_usd,
            self.tokens - earlier.tokens,
            self.series - earlier.series,
        )


def totals(text: str) -> Totals:
    outcomes: Counter[str] = Counter()
    tokens: Counter[tuple[str, str]] = Counter()
    cost = 0.0
    series = 0
    for family in text_string_to_metric_families(text):
        if family.name.startswith(EXPERIMENTS):
            continue
        for sample in family.samples:
            series += 1
            labels = sample.labels
            if sample.name == "tunegate_requests_total":
                outcomes[labels["outcome"]] += int(sample.value)
            elif sample.name == "tunegate_tokens_total":
                tokens[(labels["task"], labels["kind"])] += int(sample.value)
            elif sample.name == "tunegate_cost_usd_total":
                cost += sample.value
    return Totals(+outcomes, cost, +tokens, series)


def scrape(client: httpx.Client) -> Totals:
    response = client.get("/metrics")
    assert response.status_code == 200
    return totals(response.text)


def assert_agrees(seen: Totals, ledger: Ledger, *, reasked: Sequence[str] = ()) -> None:
    """`/metrics` counts each request once and charges what the responses charged."""
    assert seen.outcomes == ledger.outcomes
    assert ledger.cost_usd > 0
    slack = HEADER_RESOLUTION * ledger.requests
    assert abs(Decimal(seen.cost_usd) - ledger.cost_usd) <= slack, (seen.cost_usd, ledger)
    # A re-asked answer's tokens are counted (they were paid for) but are not in the body,
    # which describes the answer given.
    exact = {k: v for k, v in ledger.tokens.items() if k[0] not in reasked}
    assert {k: v for k, v in seen.tokens.items() if k[0] not in reasked} == exact
    assert sum(exact.values()) > 0
    for task in reasked:
        for kind in ("prompt", "completion"):
            assert seen.tokens[(task, kind)] > ledger.tokens[(task, kind)], (task, kind)


# -- two workers -----------------------------------------------------------------------


@dataclass
class Served:
    """`tunegate serve --workers 2` as a subprocess, with keys; its workers write their
    metrics under `tmp`."""

    process: subprocess.Popen[bytes]
    url: str
    tmp: Path

    def metrics_files(self, kind: str) -> list[Path]:
        return sorted(self.tmp.glob(f"tunegate-metrics-*/{kind}_*.db"))

    def client(self) -> httpx.Client:
        """A client with the admin key, on a connection of its own (so: any worker)."""
        return checked_client(base_url=self.url, headers=bearer(KEY), timeout=30)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def served(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The server, with its own embedded store and metrics directory (no REDIS_URL, no
    PROMETHEUS_MULTIPROC_DIR; TMPDIR only to see the directory it makes). Shared by the
    tests of this section, as starting it takes seconds; on teardown, SIGTERM stops it
    and it removes the directory."""
    tmp = tmp_path_factory.mktemp("served")
    keys = [
        {"name": "ops", "sha256": hash_key(KEY), "tenant": "ops", "tasks": ["*"], "admin": True}
    ]
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config(sim, auth={"keys": keys})))
    env = {
        k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}
    }
    env |= {"SIM_KEY": "sk-upstream-secret", "TMPDIR": str(tmp)}
    port = free_port()
    argv = [*SERVE, "--config", str(path), "--port", str(port), "--workers", "2"]
    with (tmp / "serve.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    gateway = Served(process, f"http://127.0.0.1:{port}", tmp)
    try:
        wait_for_http(f"{gateway.url}/healthz", timeout_s=60)
        # Each worker makes its in-flight gauge's file as it builds its app: wait for the
        # second, or the first worker would take every connection.
        deadline = time.monotonic() + 30
        while len(gateway.metrics_files("gauge_livesum")) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "a worker is missing"
            time.sleep(0.05)
        yield gateway
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert not list(tmp.glob("tunegate-metrics-*")), "the metrics directory remains"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def send_over_connections(served: Served, plan: Sequence[Ask], connections: int) -> Ledger:
    """Send `plan` over `connections` concurrent keep-alive connections."""

    def one_connection(asks: Sequence[Ask]) -> Ledger:
        ledger = Ledger()
        with served.client() as client:
            for ask in asks:
                send(client, ask, ledger)
        return ledger

    total = Ledger()
    with ThreadPoolExecutor(connections) as pool:
        for ledger in pool.map(one_connection, [plan[i::connections] for i in range(connections)]):
            total.add(ledger)
    return total


def settled_totals(served: Served, requests: int) -> Totals:
    """`/metrics` once it counts `requests` requests and two scrapes agree. Each worker
    writes its files within `FLUSH_DELAY_S` of a change, so another worker's requests show
    up that much later; a flush writes counters before histograms."""
    deadline = time.monotonic() + 3 * FLUSH_DELAY_S + 2.0
    previous = None
    while True:
        with served.client() as client:
            seen = scrape(client)
        if (seen.requests == requests and seen == previous) or time.monotonic() > deadline:
            return seen
        previous = seen
        time.sleep(0.1)


def mixed_plan(n: int) -> list[Ask]:
    """`n` requests of every kind: text and JSON, plain and streamed, forced variants,
    repeats (cache hits, or coalesced followers) and unknown tasks."""
    kinds = [
        lambda i: Ask(NOTES, f"note {i}", stream=True),
        lambda i: Ask(NOTES, f"note {i}"),
        lambda i: Ask(TRIAGE, f"ticket {i}"),
        lambda i: Ask(
            TRIAGE, f"ticket {i}", stream=True, headers={"x-tunegate-variant": "few_shot"}
        ),
        lambda i: Ask(TRIAGE, "the same ticket"),
        lambda i: Ask("no-such-task", f"hello {i}"),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


def test_two_workers_export_totals_that_add_up_to_every_response(served: Served) -> None:
    with served.client() as client:
        before = scrape(client)  # what other tests of this section sent
    n = 60
    ledger = send_over_connections(served, mixed_plan(n), connections=6)
    assert ledger.requests == n
    assert ledger.outcomes["rejected"] == n // 6

    seen = settled_totals(served, before.requests + n)
    assert_agrees(seen - before, ledger)
    # Both workers served requests (each wrote its own counters), and each answers a
    # scrape with the same sums.
    assert len(served.metrics_files("counter")) == 2
    for _ in range(4):
        with served.client() as client:
            assert scrape(client) == seen


def distinct_requests(marker: str, count: int) -> list[Ask]:
    """`count` requests each with a distinct `user`, a distinct (unknown) key, a distinct
    unknown task; the users' go to a sticky task, so the user picks the variant."""
    text = "I was charged twice."
    return [
        *(Ask(TRIAGE, text, user=f"{marker}-user-{i}") for i in range(count)),
        *(Ask(TRIAGE, text, headers=bearer(f"{marker}-key-{i}")) for i in range(count)),
        *(Ask(f"{marker}-model-{i}", text) for i in range(count)),
    ]


def statuses(served: Served, plan: Sequence[Ask], connections: int) -> Counter[int]:
    """Send `plan` over `connections` concurrent keep-alive connections; count the answers'
    statuses. With http.client: thousands of requests through httpx would take three times
    as long, in the client."""
    port = int(served.url.rsplit(":", 1)[1])

    def one_connection(asks: Sequence[Ask]) -> Counter[int]:
        seen: Counter[int] = Counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for ask in asks:
                body: dict[str, Any] = {
                    "model": ask.task,
                    "messages": [{"role": "user", "content": ask.text}],
                }
                if ask.user is not None:
                    body["user"] = ask.user
                headers = {**bearer(KEY), "content-type": "application/json", **ask.headers}
                connection.request("POST", "/v1/chat/completions", orjson.dumps(body), headers)
                response = connection.getresponse()
                response.read()
                seen[response.status] += 1
        finally:
            connection.close()
        return seen

    total: Counter[int] = Counter()
    with ThreadPoolExecutor(connections) as pool:
        for seen in pool.map(one_connection, [plan[i::connections] for i in range(connections)]):
            total.update(seen)
    return total


def test_request_values_never_become_series(served: Served) -> None:
    # A few of each first, so every fixed series these requests reach exists: both sticky
    # variants, a miss and hits for each, the rejected ones under `_unknown`.
    with served.client() as client:
        start = scrape(client)
    warm = statuses(served, distinct_requests("warm", 20), connections=4)
    assert warm == {200: 20, 401: 20, 404: 20}
    before = settled_totals(served, start.requests + 60)

    sent = statuses(served, distinct_requests("odd", 1000), connections=4)
    assert sent == {200: 1000, 401: 1000, 404: 1000}
    after = settled_totals(served, before.requests + 3000)
    assert after.requests == before.requests + 3000
    assert after.series == before.series
    with served.client() as client:
        assert "odd-" not in client.get("/metrics").text


# -- one worker ------------------------------------------------------------------------


def test_cost_and_token_counters_equal_the_responses_over_a_mixed_run(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.reset()
    ledger = Ledger()
    with (
        running_gateway(tmp_path, config(sim)) as gateway,
        checked_client(base_url=gateway.url, timeout=30) as client,
    ):
        plan = mixed_plan(18)
        for i in range(3):
            for ask in plan[6 * i : 6 * (i + 1)]:
                send(client, ask, ledger)
            # Fallback: the tuned attempt and its retry fail, few_shot answers.
            sim.script(TUNED, "500", "500")
            fell_back = send(client, Ask(NOTES, f"outage {i}"), ledger)
            assert fell_back.headers["x-tunegate-fallback"] == "tuned"
            # Every attempt fails: a 502 that still carries the (zero) cost.
            sim.script(TUNED, "500", "500")
            sim.script(BASE, "500", "500")
            assert send(client, Ask(NOTES, f"lost {i}"), ledger).status_code == 502
            # A re-ask: the first answer is prose, paid for, and replaced.
            sim.script(TUNED, "prose")
            reasked = send(client, Ask(INTAKE, f"prose {i}"), ledger)
            assert reasked.status_code == 200 and "x-tunegate-fallback" not in reasked.headers
        seen = scrape(client)

    assert ledger.outcomes == {"ok": 18, "fallback": 3, "rejected": 3, "error": 3}
    assert_agrees(seen, ledger, reasked=[INTAKE])
