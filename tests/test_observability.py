"""The shipped Prometheus and Grafana files: promtool checks the config and the rules and
runs the rules' unit tests; a real Prometheus scrapes a real gateway under load, loads the
rules, and answers every dashboard query with data.

promtool and prometheus come from `scripts/ensure-prometheus`, run here when they are
missing; without root (no way to install them) these tests are skipped, saying so."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import (
    TRIAGE_SCHEMA,
    TUNED,
    Simulator,
    free_port,
    gateway_config,
    running_gateway,
    task_config,
    wait_for_http,
)
from tunegate.observability.metrics import EXPERIMENT_FAMILIES, FAMILIES, IN_FLIGHT

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_CONFIG = ROOT / "config" / "prometheus" / "prometheus.yml"
RULES = ROOT / "config" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "config" / "prometheus" / "rules_test.yml"
GRAFANA = ROOT / "config" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "tunegate.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "tunegate.yml"

PANELS = {
    "Requests by outcome",
    "Request latency by variant",
    "Gateway overhead",
    "Upstream latency p95 by model",
    "Time to first token",
    "Tokens per second",
    "Cost per hour",
    "Cost per 1,000 requests",
    "Cache hit ratio",
    "Cache savings per hour",
    "JSON validity by variant",
    "Fallback rate by reason",
    "Upstream errors by kind",
    "In-flight requests",
    "Feedback score by variant",
    "Shadow cost per hour",
    "Shadow calls by result",
    "Traffic split",
    "Decisions",
    "First-try JSON valid, difference",
    "Cost per valid answer, difference",
    "Experiment samples",
    "Output checks passed",
    "Judge score by variant",
    "Judge calls by result, and their cost",
    "Judge preference, tuned win rate - 0.5",
    "Captured exchanges",
}
# No traffic in these tests records feedback (a later feature): the query must run, but
# has nothing to show.
WITHOUT_DATA = {"Feedback score by variant"}
SHADOW = {"Shadow cost per hour", "Shadow calls by result"}  # only the JSON task has one
FAULTS = {"Fallback rate by reason", "Upstream errors by kind"}
TRIAGE = "ticket-triage"
NOTES = "notes"
AB = "ab-test"  # both variants chosen, so the experiment figures have two sides
DIFFERENCES = {"First-try JSON valid, difference", "Cost per valid answer, difference"}
# The JSON tasks carry output checks and a judge (pairwise where there is a shadow).
QUALITY = {
    "Output checks passed",
    "Judge score by variant",
    "Judge calls by result, and their cost",
    "Judge preference, tuned win rate - 0.5",
}
WINDOW = "1m"  # what Grafana's $__rate_interval stands for in these tests
SCRAPE_INTERVAL = "1s"


# -- the tools ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    promtool: str
    prometheus: str


def find_tools() -> Tools | None:
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    return Tools(promtool, prometheus) if promtool and prometheus else None


@pytest.fixture(scope="session")
def tools() -> Tools:
    found = find_tools()
    if found is None:
        if os.geteuid() != 0:
            pytest.skip(
                "promtool/prometheus are not installed and installing them needs root; "
                "run scripts/ensure-prometheus as root (CI does)"
            )
        subprocess.run([str(ROOT / "scripts" / "ensure-prometheus")], check=True, timeout=600)
        found = find_tools()
        assert found is not None, "scripts/ensure-prometheus did not install prometheus"
    return found


def promtool(tools: Tools, *argv: str) -> None:
    done = subprocess.run(
        [tools.promtool, *argv], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the files, checked without a server ---------------------------------------------


def test_promtool_accepts_the_prometheus_config(tools: Tools) -> None:
    promtool(tools, "check", "config", str(PROMETHEUS_CONFIG))


def test_promtool_accepts_the_rules(tools: Tools) -> None:
    promtool(tools, "check", "rules", str(RULES))


def test_the_rules_unit_tests_pass(tools: Tools) -> None:
    promtool(tools, "test", "rules", str(RULES_TEST))


def alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_every_alert_has_a_runbook_and_a_test_where_it_fires() -> None:
    rules = alerts()
    assert set(rules) == {
        "TunegateDown",
        "TunegateHighErrorRate",
        "TunegateFallbackSurge",
        "TunegateJsonInvalidRate",
        "TunegateHighLatencyP95",
        "TunegateCacheStoreErrors",
        "TunegateCostBurn",
        "TunegateCheckPassRateDrop",
        "TunegateModelRetired",
    }
    fired = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == set(rules)
    for name, rule in rules.items():
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        assert len(annotations["runbook"]) > 100, name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def test_the_dashboard_json_is_what_its_script_writes() -> None:
    script = GRAFANA / "build_dashboard.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_the_dashboard_has_its_panels_variables_and_the_provisioned_datasource() -> None:
    board = dashboard()
    assert {panel["title"] for panel in panels()} == PANELS
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"task", "variant"}
    for variable in variables.values():
        assert variable["includeAll"] and variable["allValue"] == ".*"
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    for panel in panels():
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            # The gauge has no labels (SPEC §5); every other query follows the variables.
            if panel["title"] != "In-flight requests":
                assert '=~"$task"' in target["expr"], (panel["title"], target["expr"])
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())["groups"]
    exprs = [rule["expr"] for group in rules for rule in group["rules"]]
    exprs += [target["expr"] for panel in panels() for target in panel["targets"]]
    exprs += [variable["query"] for variable in dashboard()["templating"]["list"]]
    return exprs


def test_queries_name_only_metrics_the_gateway_exports_and_use_them_all() -> None:
    gauges = {family.name for family in EXPERIMENT_FAMILIES}
    exported = {family.name for family in FAMILIES} | {IN_FLIGHT.name} | gauges
    histograms = {family.name for family in FAMILIES if family.is_histogram}
    used = set()
    for expr in queries():
        for name in re.findall(r"\btunegate_[a-z0-9_]+\b", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            metric = base if base in histograms else name
            assert metric in exported, (name, expr)
            used.add(metric)
    assert used == exported


# -- a real Prometheus scraping a real gateway -----------------------------------------


@dataclass
class Stack:
    prometheus_url: str
    sent: Counter[str]

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.prometheus_url}{path}", params=params)
        response.raise_for_status()
        return response.json()["data"]


def start_prometheus(
    tools: Tools, workdir: Path, target: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus with the shipped config, pointed at `target` and scraping every second."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["gateway:8000"]}]
    job["static_configs"] = [{"targets": [target]}]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        tools.prometheus,
        f"--config.file={path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/-/ready", timeout_s=30)
    return process, url


def drive(gateway_url: str, sim: Simulator, seconds: float) -> Counter[str]:
    """Mixed traffic for `seconds`; returns how many requests should end in each outcome."""
    sent: Counter[str] = Counter()

    def ask(client: httpx.Client, task: str, text: str, **headers: str) -> httpx.Response:
        body = {"model": task, "messages": [{"role": "user", "content": text}]}
        return client.post("/v1/chat/completions", json=body, headers=headers)

    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        deadline = time.monotonic() + seconds
        round_number = 0
        while time.monotonic() < deadline:
            round_number += 1
            assert ask(client, TRIAGE, f"ticket {round_number}").status_code == 200
            assert ask(client, TRIAGE, "the same ticket").status_code == 200  # cache hits
            forced = ask(
                client, TRIAGE, f"ticket {round_number}", **{"x-tunegate-variant": "few_shot"}
            )
            assert forced.status_code == 200
            sim.script(TUNED, "prose")  # invalid, then valid after the re-ask
            assert ask(client, TRIAGE, f"prose {round_number}").status_code == 200
            sim.script(TUNED, "500", "500")  # the attempt and its retry: fall back
            fallback = ask(client, TRIAGE, f"outage {round_number}")
            assert fallback.headers["x-tunegate-fallback"] == "tuned"
            body = {
                "model": NOTES,
                "stream": True,
                "messages": [{"role": "user", "content": f"note {round_number}"}],
            }
            with client.stream("POST", "/v1/chat/completions", json=body) as stream:
                assert stream.status_code == 200
                assert "data: [DONE]" in stream.read().decode()
            assert ask(client, "no-such-task", "hello").status_code == 404
            for i in range(6):
                assert ask(client, AB, f"ticket {round_number}.{i}").status_code == 200
            sent.update(ok=11, fallback=1, rejected=1)
            time.sleep(0.1)
    return sent


@pytest.fixture(scope="module")
def stack(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("observability")
    sim = Simulator()
    shadow = {"shadow": {"variant": "few_shot", "rate": 1.0}}
    checked = {"type": "json", "schema": TRIAGE_SCHEMA, "checks": [{"contains": "category"}]}
    judge = {"upstream": "sim", "model": "gpt-4o-mini", "rate": 1.0, "rubric": "Right category."}
    capture = {"rate": 1.0}
    tasks = {
        TRIAGE: task_config(
            output=checked, routing=shadow, judge={**judge, "pairwise": True}, capture=capture
        ),
        NOTES: task_config(output={"type": "text"}, capture=capture),
        AB: task_config(
            output=checked, weights={"tuned": 50, "few_shot": 50}, judge=judge, capture=capture
        ),
    }
    try:
        with running_gateway(workdir, gateway_config(sim.url, tasks)) as gateway:
            process, url = start_prometheus(tools, workdir, f"127.0.0.1:{gateway.port}")
            try:
                stack = Stack(url, Counter())
                # The traffic starts once Prometheus scrapes the gateway: a Prometheus slow
                # to start saw only its end, and a counter that did not move between its
                # few samples had no increase (a judge score panel read 0/0).
                wait_until_scraped(stack, 0)
                stack.sent.update(drive(gateway.url, sim, seconds=6.0))
                wait_until_scraped(stack, sum(stack.sent.values()))
                yield stack
            finally:
                process.terminate()
                process.wait(timeout=30)
    finally:
        sim.stop()


def wait_until_scraped(stack: Stack, requests: int) -> None:
    """Until Prometheus's last scrape has seen every request sent."""
    deadline = time.monotonic() + 20
    while True:
        result = stack.query('sum(tunegate_requests_total) or sum(up{job="tunegate"} == 1) * 0')
        if result and float(result[0]["value"][1]) == requests:
            return
        assert time.monotonic() < deadline, f"Prometheus saw {result}, not {requests} requests"
        time.sleep(0.2)


def test_prometheus_scrapes_the_gateway_and_counts_each_outcome(stack: Stack) -> None:
    (target,) = stack.get("/api/v1/targets")["activeTargets"]
    assert target["health"] == "up", target
    assert target["labels"]["job"] == "tunegate"
    by_outcome = {
        row["metric"]["outcome"]: float(row["value"][1])
        for row in stack.query("sum by (outcome) (tunegate_requests_total)")
    }
    assert by_outcome == stack.sent
    unknown = stack.query('tunegate_requests_total{task="_unknown"}')
    assert [row["metric"]["outcome"] for row in unknown] == ["rejected"]


def test_prometheus_loads_and_evaluates_every_rule(stack: Stack) -> None:
    expected = {
        rule.get("alert") or rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    deadline = time.monotonic() + 10
    while True:
        rules = [rule for group in stack.get("/api/v1/rules")["groups"] for rule in group["rules"]]
        if all(rule["health"] == "ok" for rule in rules) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {rule["name"] for rule in rules} == expected
    assert [
        (r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ] == []


def test_the_dashboard_variables_list_tasks_and_variants(stack: Stack) -> None:
    found = {}
    for variable in dashboard()["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
        assert match is not None, variable["query"]
        selector = match.group(1).replace("$task", ".*")
        found[variable["name"]] = set(
            stack.get(f"/api/v1/label/{match.group(2)}/values", **{"match[]": selector})
        )
    assert found["task"] == {TRIAGE, NOTES, AB, "_unknown"}
    assert {"tuned", "few_shot"} <= found["variant"]


@pytest.mark.parametrize(
    ("task", "variant", "without_data"),
    [
        (".*", ".*", WITHOUT_DATA),
        # Its answers do not stream; its weights send every sample to tuned.
        (TRIAGE, ".*", WITHOUT_DATA | {"Time to first token", *DIFFERENCES}),
        # A text task, and this traffic injects no faults into it.
        (
            NOTES,
            "tuned",
            WITHOUT_DATA | {"JSON validity by variant", *FAULTS, *SHADOW, *DIFFERENCES, *QUALITY},
        ),
        (f"{TRIAGE}|{NOTES}", "tuned|few_shot", WITHOUT_DATA | DIFFERENCES),  # multi-value form
    ],
)
def test_every_dashboard_query_runs_and_shows_the_traffic(
    stack: Stack, task: str, variant: str, without_data: set[str]
) -> None:
    empty = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", WINDOW)
            expr = expr.replace("$task", task).replace("$variant", variant)
            assert "$" not in expr, expr
            result = stack.query(expr)  # fails on a query Prometheus rejects
            values = [float(row["value"][1]) for row in result]
            if not any(math.isfinite(v) for v in values) and panel["title"] not in without_data:
                empty.append((panel["title"], target["legendFormat"], values))
    # Every panel but those listed has a finite figure in every one of its queries.
    assert empty == []
