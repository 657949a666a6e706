"""Benchmark of the output checks and the judge (issue 17):

1. On a 600-character German answer: the five cheap checks of reply-de together
   (max_sentences, max_chars, contains, not_contains, regex) and the language check
   (lingua, one detector built at load for the config's languages plus the contrast set),
   p50 µs per answer.
2. The miss path at concurrency 1 through real processes (simulator, `tunegate serve`,
   embedded store): two text tasks alike but for the judge, rate 1.0 against rate 0,
   in alternating blocks of one run; p50 of each and their ratio.

Run: python -m bench.checks_bench [--requests N] [--latency-ms MS] [--runs N] [--skip-checks]
(`--runs` starts the processes afresh for each run and prints every run's figures and
their median ratio; `--skip-checks` leaves out part 1.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.processes import free_port, start_server
from tunegate.quality.checks import Detector, compile_checks, languages_of

CHECKS: list[Any] = [
    {"language": "de"},
    {"max_sentences": 3},
    {"max_chars": 600},
    {"contains": "Ihr Acme-Team"},
    {"not_contains": ["As an AI", "Als KI"]},
    {"regex": "^[^<>]*$"},
]
ANSWER = (
    "Guten Tag, vielen Dank für Ihre Nachricht und Ihre Geduld in dieser Angelegenheit. "
    "Wir haben Ihre Rechnung vom März geprüft und festgestellt, dass Ihnen der Betrag "
    "versehentlich doppelt berechnet wurde; die Gutschrift über den zu viel gezahlten "
    "Betrag ist bereits veranlasst und erscheint innerhalb von drei bis fünf Werktagen auf "
    "Ihrem Konto, und selbstverständlich erhalten Sie zusätzlich eine korrigierte Rechnung "
    "per E-Mail, die Sie für Ihre Unterlagen aufbewahren können, sowie eine kurze, "
    "Bestätigung unserer Buchhaltung über den ganzen Vorgang, damit Sie alles in Ruhe nach"
    "lesen. Ihr Acme-Team"
)


def per_answer_us(run: Any, answers: int = 3000) -> float:
    """p50 of single calls: on a busy machine a batch's mean also counts every time the
    process was preempted, which a median of single calls mostly leaves out."""
    run(ANSWER)
    timings = []
    for _ in range(answers):
        started = time.perf_counter()
        run(ANSWER)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1e6


def check_figures() -> dict[str, float]:
    detector = Detector(languages_of(CHECKS))
    everything = compile_checks(CHECKS, detector, reask=True)
    cheap = compile_checks(CHECKS[1:], None, reask=True)
    language = compile_checks(CHECKS[:1], detector, reask=True)
    assert len(ANSWER) == 600, len(ANSWER)
    assert everything.run(ANSWER).passed
    return {
        "cheap_checks_p50_us": per_answer_us(cheap.run),
        "language_p50_us": per_answer_us(language.run),
        "all_six_p50_us": per_answer_us(everything.run),
    }


def _task(judge_rate: float) -> dict[str, Any]:
    return {
        "output": {"type": "text", "checks": CHECKS},
        "variants": {
            "tuned": {
                "upstream": "sim",
                "model": "ft:gpt-3.5-turbo-0613:acme::9xRPL2DQ",
                "system": "Antworte dem Kunden auf Deutsch.",
                "params": {"max_tokens": 256},
            }
        },
        "cache": {"enabled": False},
        "judge": {
            "upstream": "sim",
            "model": "gpt-4o-mini",
            "rate": judge_rate,
            "rubric": "German, at most three sentences, signed.",
        },
    }


def miss_path(requests: int, workdir: Path, latency_ms: float) -> dict[str, float]:
    sim_port, gateway_port = free_port(), free_port()
    scenario = workdir / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({"models": {"*": {"latency_ms": latency_ms}}}))
    sim = start_server(
        "simulator",
        [
            *(sys.executable, "-m", "tunegate.simulator", "--port", str(sim_port)),
            *("--scenario", str(scenario)),
        ],
        port=sim_port,
        ready_path="/v1/models",
        log_dir=workdir,
    )
    config = {
        "upstreams": {"sim": {"base_url": f"{sim.url}/v1", "api_key_env": "SIM_KEY"}},
        "tasks": {"judged": _task(1.0), "plain": _task(0.0)},
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    argv = [sys.executable, "-m", "tunegate.commands.cli", "serve", "--config", str(path)]
    try:
        gateway = start_server(
            "gateway",
            [*argv, "--port", str(gateway_port)],
            port=gateway_port,
            ready_path="/readyz",
            log_dir=workdir,
            environ={**os.environ, "SIM_KEY": "sk-bench", "TUNEGATE_LOG_LEVEL": "warning"},
        )
        try:
            return _interleaved(gateway.url, requests)
        finally:
            gateway.stop()
    finally:
        sim.stop()


def _interleaved(url: str, requests: int, block: int = 25) -> dict[str, float]:
    """Blocks of `block` requests to one task, then to the other, in turn: a judgement
    runs after its answer, so its cost falls on the requests that follow it, which are
    (but for a block's first) of the same task."""
    seconds: dict[str, list[float]] = {"judged": [], "plain": []}
    warm_up = 2 * block
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(requests * 2 + warm_up):
            task = "judged" if (i // block) % 2 else "plain"
            body = {"model": task, "messages": [{"role": "user", "content": str(uuid.uuid4())}]}
            started = time.perf_counter()
            response = client.post("/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.text
            if i >= warm_up:
                seconds[task].append(elapsed)
    plain_ms = statistics.median(seconds["plain"]) * 1000
    judged_ms = statistics.median(seconds["judged"]) * 1000
    return {
        "requests_per_task": requests,
        "plain_p50_ms": plain_ms,
        "judged_p50_ms": judged_ms,
        "judged_over_plain": judged_ms / plain_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per task (default 300)")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="the simulated models' (default 0)"
    )
    parser.add_argument("--runs", type=int, default=1, help="miss-path runs (default 1)")
    parser.add_argument("--skip-checks", action="store_true", help="only the miss path")
    args = parser.parse_args()
    if not args.skip_checks:
        figures = check_figures()
        print(f"600-char answer: five cheap checks p50 {figures['cheap_checks_p50_us']:.1f} µs; "
              f"language p50 {figures['language_p50_us']:.1f} µs; "
              f"all six p50 {figures['all_six_p50_us']:.1f} µs")  # fmt: skip
    ratios = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="checks-bench-") as workdir:
            miss = miss_path(args.requests, Path(workdir), args.latency_ms)
        ratios.append(miss["judged_over_plain"])
        print(f"miss path at c=1, upstream latency {args.latency_ms:g} ms, "
              f"{miss['requests_per_task']} requests each, in alternating blocks: "
              f"judge rate 0 p50 {miss['plain_p50_ms']:.2f} ms, judge rate 1.0 p50 "
              f"{miss['judged_p50_ms']:.2f} ms (ratio {miss['judged_over_plain']:.3f})",
              flush=True)  # fmt: skip
    if args.runs > 1:
        print(f"median ratio of {args.runs} runs: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
