"""`python -m tunegate.simulator --port P [--scenario FILE] [--seed N] [--host H]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunegate.simulator import serve_simulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunegate.simulator",
        description="Serve a simulated OpenAI-compatible upstream.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--scenario", type=Path, default=None, help="scenario YAML file")
    parser.add_argument("--seed", type=int, default=None, help="default: the scenario's seed")
    args = parser.parse_args(argv)
    try:
        serve_simulator(args.host, args.port, args.scenario, args.seed)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
