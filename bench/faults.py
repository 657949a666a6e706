"""`bench/faults [--only NAME[,NAME]] [--list] [--soak-seconds S]`: the fault suite.

Starts the simulated upstream, a Valkey server and gateways (`tunegate serve`) on
loopback, runs each scenario with load flowing, prints the table and writes it to
bench/results/faults-<UTC time>.md and .json. Exit 1 when a scenario fails, 2 on a usage
error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from bench.fault_suite import report
from bench.fault_suite.core import Scenario, Suite
from bench.fault_suite.runner import all_scenarios, choose, run_scenarios

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/faults", description=__doc__.split("\n")[2])
    parser.add_argument("--only", help="comma-separated scenario or group names")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--soak-seconds", type=float, default=60.0, help="soak duration (default 60; full: 600)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the table goes")
    args = parser.parse_args(argv)
    if args.list:
        for scenario in all_scenarios():
            print(f"{scenario.group:9} {scenario.name:28} {scenario.summary}")
        return 0
    try:
        scenarios = choose(args.only.split(",") if args.only else None)
    except ValueError as exc:
        print(f"bench/faults: {exc} (see --list)", file=sys.stderr)
        return 2
    return _run(scenarios, args.soak_seconds, args.out)


def _run(scenarios: list[Scenario], soak_seconds: float, out_dir: Path) -> int:
    started_wall = time.time()
    started = time.monotonic()
    suite = Suite(soak_seconds)
    try:
        rows = asyncio.run(_scenarios(suite, scenarios))
    finally:
        suite.stop()
    elapsed = time.monotonic() - started
    print(report.markdown(rows, started_wall, elapsed))
    md_path, json_path = report.write(rows, started_wall, elapsed, out_dir)
    suite.cleanup()
    print(f"wrote {md_path} and {json_path.name}", file=sys.stderr)
    return 0 if all(row.passed for row in rows) else 1


async def _scenarios(suite: Suite, scenarios: list[Scenario]) -> list[report.Row]:
    try:
        return await run_scenarios(suite, scenarios)
    finally:
        await suite.aclose()


if __name__ == "__main__":
    sys.exit(main())
