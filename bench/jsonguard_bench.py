"""Microbenchmark of the JSON guard on the example schema: µs per answer, by kind.

Run: .venv/bin/python bench/jsonguard_bench.py
"""

from __future__ import annotations

import statistics
import time
from unittest import mock

from jsonschema import Draft202012Validator

from tests.testkit.configs import TRIAGE_SCHEMA
from tunegate.quality.jsonguard import _verdict, check, compile_schema

ANSWERS = {
    "valid": '{"category": "billing", "priority": "high"}',
    "fenced": '```json\n{"category": "billing", "priority": "high"}\n```',
    "repaired": '{"category": "billing", "priority": "high",}',
    "invalid (enum)": '{"category": "billing", "priority": "urgent"}',
    "invalid (prose)": "This looks like a billing problem to me.",
}


def per_answer_us(text: str, first_sight: bool, rounds: int = 20, batch: int = 500) -> list[float]:
    """µs per `check`: a repeated answer (served from the verdict memo) or, with
    `first_sight`, the full pipeline as for an answer never seen before."""
    compiled = compile_schema(TRIAGE_SCHEMA)
    run = _verdict if first_sight else check
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(batch):
            run(text, compiled)
        timings.append((time.perf_counter() - started) / batch * 1e6)
    return timings


def main() -> None:
    print(f"{'answer':<18}{'first seen p50 µs':>19}{'repeated p50 µs':>17}")
    for name, text in ANSWERS.items():
        first = statistics.median(per_answer_us(text, first_sight=True))
        repeated = statistics.median(per_answer_us(text, first_sight=False))
        print(f"{name:<18}{first:>19.1f}{repeated:>17.1f}")
    compiled = compile_schema(TRIAGE_SCHEMA)
    with mock.patch.object(Draft202012Validator, "check_schema") as check_schema:
        for text in ANSWERS.values():
            check(text, compiled)
    print(f"schema checks during 5 answers: {check_schema.call_count} (compiled once, at load)")


if __name__ == "__main__":
    main()
