"""`tunegate demo`: the whole system on this machine with no key and no Docker.

Starts the simulated upstream, the gateway (as `tunegate serve`, a real process), sends a
mixed workload through the official openai SDK (both example tasks, streams, repeats,
injected upstream faults) and prints what each task and variant did. Stops everything it
started, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from tunegate.flow.upstream import CallerError, caller_client

if TYPE_CHECKING:
    from tunegate.experiments.document import ExperimentsDocument

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_CONFIG = ROOT / "config" / "gateway.yaml"
SCENARIO = ROOT / "config" / "simulator" / "demo.yaml"

TICKETS = [
    "I was charged twice for my subscription, please refund asap!",
    "The invoice for March shows the wrong amount.",
    "The app crashes when I open the settings page.",
    "Export to CSV is broken since the last update, urgent.",
    "I forgot my password and the reset email never arrives.",
    "How do I change the email address on my account?",
    "Do you offer a discount for non-profits?",
    "Payment failed but money left my bank account.",
    "Login page shows an error 500 for everyone, we are down!",
    "Can I add a second user to my account when you can?",
    "Is there a dark mode?",
    "The search button does nothing, it's a bug I think.",
]
CUSTOMER_MESSAGES = [
    "My package has not arrived yet.",
    "Can I change my delivery address?",
    "The product I received is damaged.",
    "Do you ship to Austria?",
    "I want to cancel my order.",
]


@dataclass(frozen=True)
class Result:
    task: str
    status: int
    variant: str
    fallback: str | None
    cache: str
    seconds: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    json_status: str | None


def run_demo(requests: int = 300, concurrency: int = 8, seed: int = 7) -> int:
    started = time.monotonic()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tunegate-demo-")))
        print("tunegate demo: starting the simulated upstream and the gateway...", flush=True)
        sim_url = stack.enter_context(
            _process("simulator", _simulator_argv(seed), workdir, "/v1/models")
        )
        env = {"OPENAI_BASE_URL": f"{sim_url}/v1", "OPENAI_API_KEY": "demo-key-not-secret"}
        config = _demo_config(workdir)
        gateway_url = stack.enter_context(
            _process("gateway", _gateway_argv(config), workdir, "/readyz", env=env)
        )
        print(f"  simulator {sim_url}   gateway {gateway_url}   logs in {workdir}", flush=True)
        results = asyncio.run(_workload(gateway_url, sim_url, requests, concurrency, seed))
        _wait_for_judgements(gateway_url)
        documents = [_experiments(gateway_url, task) for task in ("ticket-triage", "reply-de")]
    _print_summary(results, time.monotonic() - started)
    for document in documents:
        print(f"\n{_experiment_report(document)}")
    print(_quality_summary(documents[1]))
    failed = sum(1 for r in results if r.status != 200)
    return 0 if failed <= len(results) // 10 else 1


def _simulator_argv(seed: int) -> list[str]:
    argv = [sys.executable, "-m", "tunegate.simulator", "--seed", str(seed)]
    if SCENARIO.exists():
        argv += ["--scenario", str(SCENARIO)]
    return argv


def _gateway_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "tunegate.commands.cli", "serve", "--config", str(config)]


@contextmanager
def _process(
    name: str, argv: list[str], workdir: Path, ready_path: str, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run `argv` on a free port (given as `--port`), wait until `ready_path` answers,
    yield its URL, and stop it afterwards."""
    from tunegate.state.embedded import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [*argv, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TUNEGATE_LOG_LEVEL": "warning", **(env or {})},
    )
    try:
        _wait_ready(url + ready_path, process, name, workdir)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes], name: str, workdir: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (workdir / f"{name}.log").read_text(errors="replace")
            raise SystemExit(f"tunegate demo: the {name} exited at start-up:\n{log}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"tunegate demo: the {name} did not become ready within 30 s")


async def _workload(
    gateway_url: str, sim_url: str, requests: int, concurrency: int, seed: int
) -> list[Result]:
    rng = random.Random(seed)
    client = caller_client(f"{gateway_url}/v1", "demo")
    async with httpx.AsyncClient() as control:
        # A few injected faults the gateway must absorb: a 500 it retries, a quota
        # error it falls back from.
        await control.post(
            f"{sim_url}/_sim/script",
            json={"model": _tuned_model(), "faults": ["500", "ok", "quota"]},
        )
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Result:
        async with semaphore:
            return await _one_request(client, rng, i)

    results = await asyncio.gather(*(one(i) for i in range(requests)))
    await client.close()
    return list(results)


def _demo_config(workdir: Path) -> Path:
    """The example config, with reply-de judged on every sample and shadowed on half, so
    a short run gathers enough judgements and pairs to show intervals."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    reply = data["tasks"]["reply-de"]
    reply["judge"]["rate"] = 1.0
    reply["routing"]["shadow"]["rate"] = 0.5
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def _wait_for_judgements(gateway_url: str, timeout_s: float = 10.0) -> None:
    """Judgements run after the answers: wait until their count stops moving."""
    deadline, last = time.monotonic() + timeout_s, -1.0
    while time.monotonic() < deadline:
        text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
        count = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tunegate_judge_requests_total{")
        )
        if count == last:
            return
        last = count
        time.sleep(0.5)


def _experiments(gateway_url: str, task: str) -> ExperimentsDocument | None:
    from tunegate.experiments.document import document_from_json

    response = httpx.get(f"{gateway_url}/v1/experiments/{task}", timeout=10)
    if response.status_code != 200:
        return None
    return document_from_json(response.json())


def _experiment_report(document: ExperimentsDocument | None) -> str:
    """The `tunegate report TASK` table, read from the running gateway; its charts
    (`--html`) go to a file in the temporary directory, named at the end."""
    from tunegate.experiments.report_html import render_html
    from tunegate.experiments.report_text import render_table

    if document is None:
        return "experiments: not available"
    charts = Path(tempfile.gettempdir()) / f"tunegate-demo-{document.task}.html"
    charts.write_text(render_html(document), encoding="utf-8")
    return f"{render_table(document)}\ncharts: {charts}"


def _quality_summary(document: ExperimentsDocument | None) -> str:
    """reply-de's quality signals in three lines: checks, judge scores, preference."""
    if document is None:
        return ""

    def interval(pair: tuple[float, float] | None) -> str:
        return f"[{pair[0]:.2f}, {pair[1]:.2f}]" if pair else "[-]"

    lines = ["", "reply-de quality signals (95% intervals; anytime-valid in braces):"]
    for name, v in document.variants.items():
        checks, score = v.checks_first_try_pass, v.judge_score
        passed = f"{checks.rate:.2f} {interval(checks.ci95)}" if checks and checks.rate else "-"
        judged = f"{score.mean:.2f} {interval(score.ci95)}" if score and score.mean else "-"
        lines.append(
            f"  {name:<9} checks passed first try {passed}   judge score "
            f"(n={score.n if score else 0}) {judged}   failures {dict(v.check_failures or {})}"
        )
    preference = document.shadow.preference if document.shadow else None
    if preference:
        lines.append(
            f"  judge preference: tuned wins {preference.tuned_win_rate or 0.0:.2f} of "
            f"{preference.pairs} pairs ({preference.ties} ties count half) "
            f"{interval(preference.ci95)} {{{interval(preference.anytime_ci95)[1:-1]}}}"
        )
    else:
        lines.append("  judge preference: no judged pairs yet")
    return "\n".join(lines)


def _tuned_model() -> str:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    model: str = data["tasks"]["ticket-triage"]["variants"]["tuned"]["model"]
    return model


async def _one_request(client: Any, rng: random.Random, i: int) -> Result:
    triage = rng.random() < 0.7
    task = "ticket-triage" if triage else "reply-de"
    text = rng.choice(TICKETS if triage else CUSTOMER_MESSAGES)
    if rng.random() < 0.6:  # most traffic is new; the rest repeats what was asked before
        text = f"{text} (#{i})"
    stream = rng.random() < 0.15
    started = time.monotonic()
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=task,
            messages=[{"role": "user", "content": text}],
            user=f"user-{rng.randrange(60)}",
            stream=stream,
            # A stream ends with usage and cost only when asked, as OpenAI's do.
            **({"stream_options": {"include_usage": True}} if stream else {}),
        )
        parsed = raw.parse()
        usage = None
        headers = raw.headers
        cost_usd = float(headers.get("x-tunegate-cost-usd", "0"))
        if stream:
            async for chunk in parsed:
                if chunk.usage is not None:
                    usage = chunk.usage
                    cost_usd = float((chunk.model_extra or {}).get("cost_usd", cost_usd))
        else:
            usage = parsed.usage
        return Result(
            task=task,
            status=200,
            variant=headers["x-tunegate-variant"],
            fallback=headers.get("x-tunegate-fallback"),
            cache=headers["x-tunegate-cache"],
            seconds=time.monotonic() - started,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cost_usd=cost_usd,
            json_status=headers.get("x-tunegate-json"),
        )
    except CallerError as exc:
        status = getattr(exc, "status_code", 0)
        return Result(task, status, "-", None, "-", time.monotonic() - started, 0, 0, 0.0, None)


def _print_summary(results: list[Result], seconds: float) -> None:
    groups: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for result in results:
        groups[(result.task, result.variant)].append(result)
    header = (
        f"{'task':<14}{'variant':<10}{'requests':>9}{'cached':>8}{'fallback':>9}{'repaired':>9}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'tokens':>8}{'cost USD':>11}"
    )
    print(f"\n{len(results)} requests in {seconds:.1f} s\n")
    print(header)
    print("-" * len(header))
    for (task, variant), group in sorted(groups.items()):
        latencies = sorted(r.seconds * 1000 for r in group)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        print(
            f"{task:<14}{variant:<10}{len(group):>9}"
            f"{sum(1 for r in group if r.cache == 'hit'):>8}"
            f"{sum(1 for r in group if r.fallback):>9}"
            f"{sum(1 for r in group if r.json_status == 'repaired'):>9}"
            f"{statistics.median(latencies):>8.1f}{p95:>8.1f}"
            f"{sum(r.prompt_tokens + r.completion_tokens for r in group):>8}"
            f"{sum(r.cost_usd for r in group):>11.6f}"
        )
    errors = [r for r in results if r.status != 200]
    print(
        f"\nerrors: {len(errors)}"
        + (f" (statuses {sorted({r.status for r in errors})})" if errors else "")
    )
