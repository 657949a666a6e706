"""The `tunegate` command (SPEC §6). Exit codes: 0 success, 1 failure with a message,
2 usage error."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tunegate.commands import dataset, tune
from tunegate.errors import ConfigError

if TYPE_CHECKING:
    from tunegate.experiments.document import ExperimentsDocument


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        for problem in str(exc).splitlines():
            print(f"tunegate: invalid config: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunegate", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="config file (default: $TUNEGATE_CONFIG)")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, help="port (default: $PORT or 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.set_defaults(run=_serve)

    simulate = commands.add_parser("simulate", help="run the simulated OpenAI upstream")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=9000)
    simulate.add_argument("--scenario", type=Path, help="scenario YAML (default: no faults)")
    simulate.add_argument("--seed", type=int, help="default: the scenario's seed")
    simulate.set_defaults(run=_simulate)

    demo = commands.add_parser("demo", help="the whole system on this machine, no key needed")
    demo.add_argument("--requests", type=int, default=300, help="requests in the workload")
    demo.add_argument(
        "--lifecycle",
        action="store_true",
        help="few-shot to tuned: capture, export, tuning job, candidate, decision",
    )
    demo.set_defaults(run=_demo)

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_check_config)

    report = commands.add_parser("report", help="a task's experiment figures and decision")
    report.add_argument("task")
    report.add_argument(
        "--url", help="ask a running gateway (its base URL) instead of the store at $REDIS_URL"
    )
    report.add_argument("--config", type=Path, help="config file (default: $TUNEGATE_CONFIG)")
    report.add_argument("--json", action="store_true", help="print the JSON document")
    report.add_argument(
        "--html", type=Path, metavar="FILE", help="also write the comparison as a page of charts"
    )
    report.set_defaults(run=_report)

    dataset.add_parser(commands)
    tune.add_parser(commands)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(title="keys commands")
    keys.add_parser("hash", help="print the sha256 of a key read from stdin").set_defaults(
        run=_keys_hash
    )
    keys.add_parser("new", help="print a new key and its sha256").set_defaults(run=_keys_new)
    return parser


def port_number(text: str) -> int:
    """argparse type of `--port`: 1..65535, else a usage error (exit 2)."""
    port = int(text) if text.isdigit() else -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return port


def _serve(args: argparse.Namespace) -> int:
    from tunegate.commands.serve import serve

    return serve(args)


def _simulate(args: argparse.Namespace) -> int:
    from tunegate.simulator import serve_simulator

    try:
        serve_simulator(args.host, args.port, args.scenario, args.seed)
    except ValueError as exc:
        print(f"tunegate simulate: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.lifecycle:
        from tunegate.commands.lifecycle import run_lifecycle

        return run_lifecycle()
    from tunegate.commands.demo import run_demo

    return run_demo(requests=args.requests)


def _check_config(args: argparse.Namespace) -> int:
    from tunegate.config.compiled import load_config, missing_secrets

    config = load_config(args.file)
    for warning in missing_secrets(config, os.environ):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.file}: ok ({len(config.tasks)} tasks: {', '.join(config.tasks)})")
    return 0


def _report(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from tunegate.experiments.document import document_json
    from tunegate.experiments.report_text import render_table

    try:
        if args.url:
            document = _report_over_http(args.url, args.task)
        else:
            document = asyncio.run(_report_from_store(args.task, args.config))
    except RuntimeError as exc:
        print(f"tunegate report: {exc}", file=sys.stderr)
        return 1
    if args.html:
        from tunegate.experiments.report_html import render_html

        try:
            args.html.write_text(render_html(document), encoding="utf-8")
        except OSError as exc:
            print(f"tunegate report: cannot write {args.html}: {exc.strerror}", file=sys.stderr)
            return 1
    print(json.dumps(document_json(document), indent=2) if args.json else render_table(document))
    return 0


def _report_over_http(url: str, task: str) -> ExperimentsDocument:
    """GET /v1/experiments/TASK, with the key in $TUNEGATE_API_KEY when set."""
    import httpx

    from tunegate.experiments.document import document_from_json

    key = os.environ.get("TUNEGATE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/v1/experiments/{task}", headers=headers)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"cannot reach {url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
    try:
        return document_from_json(response.json())
    except ValueError as exc:  # not JSON, or not a document (DocumentError)
        raise RuntimeError(f"{url} answered no experiments document: {exc}") from None


async def _report_from_store(task_name: str, config_path: Path | None) -> ExperimentsDocument:
    from tunegate.config.compiled import load_config
    from tunegate.config.settings import settings_from_env
    from tunegate.experiments.recorder import Experiments
    from tunegate.state.store import Store, StoreFailure

    settings = settings_from_env(config_path=config_path)
    if settings.redis_url is None:
        raise RuntimeError("set REDIS_URL to the gateway's store, or pass --url GATEWAY_URL")
    task = load_config(settings.config_path).tasks.get(task_name)
    if task is None:
        raise RuntimeError(f"no task {task_name!r} in {settings.config_path}")
    store = Store(settings.redis_url, socket_timeout_ms=2000, connect_timeout_ms=2000)
    try:
        document = await Experiments(store).document(task)
    finally:
        await store.close()
    if isinstance(document, StoreFailure):  # not the URL: it can hold the store's password
        raise RuntimeError("cannot read the store at REDIS_URL")
    return document


def _keys_hash(args: argparse.Namespace) -> int:
    from tunegate.auth import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        print("tunegate keys hash: no key on stdin", file=sys.stderr)
        return 1
    print(hash_key(key))
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    from tunegate.auth import hash_key, new_key

    key = new_key()
    print(f"key:    {key}\nsha256: {hash_key(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
