"""Run the chosen scenarios in order against one running system, each bounded in time,
and collect their rows."""

from __future__ import annotations

import asyncio
import sys
import time
import traceback

from bench.fault_suite import callers, process, secrets, store, upstream
from bench.fault_suite.core import Scenario, Suite
from bench.fault_suite.report import Row

# The longest any one scenario may take (the soak adds its own duration).
SCENARIO_TIMEOUT_S = 120.0


def all_scenarios() -> list[Scenario]:
    """Every scenario, in the order they run (the secrets checks last)."""
    return [
        *upstream.SCENARIOS,
        *store.SCENARIOS,
        *callers.SCENARIOS,
        *process.SCENARIOS,
        *secrets.SCENARIOS,
    ]


def choose(names: list[str] | None) -> list[Scenario]:
    """The scenarios named (a name may be a whole group), in suite order; raises
    `ValueError` naming any unknown one."""
    scenarios = all_scenarios()
    if not names:
        return scenarios
    known = {s.name for s in scenarios} | {s.group for s in scenarios}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown scenario or group: {', '.join(unknown)}")
    return [s for s in scenarios if s.name in names or s.group in names]


async def run_scenarios(suite: Suite, scenarios: list[Scenario]) -> list[Row]:
    rows = []
    for scenario in scenarios:
        print(f"-- {scenario.name}: {scenario.summary}", file=sys.stderr, flush=True)
        started = time.monotonic()
        limit = SCENARIO_TIMEOUT_S + (suite.soak_seconds if "soak" in scenario.name else 0)
        try:
            verdict = await asyncio.wait_for(scenario.run(suite), limit)
            row = Row(scenario.name, scenario.group, scenario.summary, 0, verdict)
        except Exception as exc:  # one broken scenario must not stop the suite
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}"[:300]
            row = Row(scenario.name, scenario.group, scenario.summary, 0, None, error)
        row = Row(
            row.name, row.group, row.summary, time.monotonic() - started, row.verdict, row.error
        )
        status = "pass" if row.passed else "FAIL"
        detail = ""
        if row.verdict is not None:
            failed = [p for p, held in row.verdict.checks if not held]
            t = row.verdict.tally
            detail = f" sent={t.sent} {dict(t.statuses)} wrong={t.wrong} lost={t.lost}"
            if failed:
                detail += " failed: " + "; ".join(failed)
        print(f"   {status} in {row.seconds:.1f} s{detail}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows
