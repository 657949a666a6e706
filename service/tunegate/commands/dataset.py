"""`tunegate dataset export TASK --out FILE.jsonl` (SPEC §9 "Dataset", §12 "Export flags").

Reads the task's captured exchanges from the store at `REDIS_URL`, or from a running
gateway with `--url` (`GET /admin/capture/{task}`, an admin key in `$TUNEGATE_API_KEY`),
writes OpenAI's chat fine-tuning JSONL in the tuned prompt format
(`experiments/dataset.py`), the validation part to `FILE.validation.jsonl`, and prints the
data check (with `--json`, as one JSON document). Exit codes: 0 written, 1 fewer than 10
training examples or the capture could not be read or written, 2 usage.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunegate.errors import UsageError

if TYPE_CHECKING:
    from tunegate.config.compiled import Task
    from tunegate.experiments.dataset import Check, Selection


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dataset = commands.add_parser("dataset", help="fine-tuning datasets from captured traffic")
    sub = dataset.add_subparsers(title="dataset commands")
    export = sub.add_parser("export", help="write a task's captured exchanges as JSONL")
    export.add_argument("task")
    export.add_argument("--out", type=Path, required=True, help="FILE.jsonl to write")
    export.add_argument("--variant", help="only exchanges this variant served")
    export.add_argument(
        "--as", dest="as_variant", metavar="VARIANT", help="use this variant's prompt format"
    )
    export.add_argument("--validation-share", type=float, default=0.0, help="default 0")
    export.add_argument("--min-score", type=float, help="only exchanges scored at least this")
    export.add_argument("--since", help="only exchanges from this UTC date on (YYYY-MM-DD)")
    export.add_argument("--limit", type=int, help="at most the latest N examples")
    export.add_argument("--seed", type=int, default=0, help="of the validation split")
    export.add_argument("--epochs", type=int, help="for the cost (default: OpenAI's rule)")
    export.add_argument("--url", help="read from a running gateway instead of $REDIS_URL")
    export.add_argument("--config", type=Path, help="config file (default: $TUNEGATE_CONFIG)")
    export.add_argument("--json", action="store_true", help="print the check as JSON")
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    try:
        return _export(args)
    except UsageError as exc:
        print(f"tunegate dataset export: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"tunegate dataset export: {exc}", file=sys.stderr)
        return 1


def _export(args: argparse.Namespace) -> int:
    from tunegate.config.compiled import load_config
    from tunegate.config.settings import settings_from_env
    from tunegate.config.tuning import TuningTargetMissing, base_model, prompt_format
    from tunegate.experiments import dataset as ds

    selection = _selection(args)
    settings = settings_from_env(config_path=args.config)
    config = load_config(settings.config_path)
    task = config.tasks.get(args.task)
    if task is None:
        raise UsageError(f"no task {args.task!r} in {config.path}")
    try:
        prompt = prompt_format(task, args.as_variant)
    except TuningTargetMissing as exc:
        raise UsageError(str(exc)) from None
    try:
        base: str | None = base_model(task)[0]
    except TuningTargetMissing:
        base = None
    entries = _read(task, args.url, settings.redis_url)
    tokenizer = ds.tokenizer_for(base)
    built = ds.build(
        ds.select(entries, selection),
        prompt.system,
        limit=selection.limit,
        validation_share=args.validation_share,
        seed=args.seed,
        tokenizer=tokenizer,
        context=_limit(base),
    )
    result = ds.check(built, tokenizer, base, config.training_prices, args.epochs)
    if len(built.training) < ds.MIN_EXAMPLES:
        raise RuntimeError(
            f"{len(built.training)} training examples for task {task.name!r}; fine-tuning "
            f"needs at least {ds.MIN_EXAMPLES} (capture more, or relax the filters)"
        )
    validation_path = _validation_path(args.out) if built.validation else None
    _write(args.out, ds.jsonl(built.training))
    if validation_path is not None:
        _write(validation_path, ds.jsonl(built.validation))
    if args.url:
        _note_over_http(args.url, task.name, result.as_json())
    elif settings.redis_url is not None:
        _note(task, settings.redis_url, result.as_json())
    files = {"file": str(args.out), "validation_file": str(validation_path or "") or None}
    if args.json:
        document = {"task": task.name, "prompt_format": prompt.source, **files}
        print(json.dumps({**document, **result.as_json()}, indent=2))
    else:
        print(_summary(task, prompt.source, result, args.out, validation_path))
    return 0


def _selection(args: argparse.Namespace) -> Selection:
    from tunegate.experiments.dataset import Selection

    if not 0 <= args.validation_share < 1:
        raise UsageError("--validation-share must be at least 0 and below 1")
    if args.min_score is not None and not 0 <= args.min_score <= 1:
        raise UsageError("--min-score must be between 0 and 1")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    since = None
    if args.since is not None:
        try:
            since = datetime.date.fromisoformat(args.since)
        except ValueError:
            raise UsageError(f"--since {args.since!r}: give a UTC date, YYYY-MM-DD") from None
    return Selection(args.variant, since, args.min_score, args.limit)


def _limit(base: str | None) -> int | None:
    from tunegate.pricing import context_limit

    return context_limit(base) if base else None


def _read(task: Task, url: str | None, redis_url: str | None) -> list[dict[str, Any]]:
    if url:
        return _read_over_http(url, task.name)
    if redis_url is None:
        raise UsageError("set REDIS_URL to the gateway's store, or pass --url GATEWAY_URL")
    import asyncio

    return asyncio.run(_read_store(task, redis_url))


async def _read_store(task: Task, redis_url: str) -> list[dict[str, Any]]:
    from tunegate.experiments.capture import Capture
    from tunegate.state.store import Store

    store = Store(redis_url, socket_timeout_ms=5000, connect_timeout_ms=2000)
    try:
        ttl_s = task.capture.ttl_s if task.capture is not None else None
        return [c.as_json() async for c in Capture(store).read(task.name, ttl_s)]
    except RuntimeError:
        raise RuntimeError(f"cannot read the store at {redis_url}") from None
    finally:
        await store.close()


def _note(task: Task, redis_url: str, summary: dict[str, Any]) -> None:
    """Keep the estimate in the store: the report's break-even uses it when the task has
    no `training_cost_usd` (SPEC §9). A failure only costs that."""
    import asyncio

    from tunegate.experiments.capture import Capture
    from tunegate.state.store import Store

    async def note() -> None:
        store = Store(redis_url, socket_timeout_ms=5000, connect_timeout_ms=2000)
        try:
            ttl_s = task.capture.ttl_s if task.capture is not None else 30 * 86400
            if not await Capture(store).note_dataset(task.name, summary, ttl_s):
                print("warning: the estimate was not stored for the report", file=sys.stderr)
        finally:
            await store.close()

    asyncio.run(note())


def _note_over_http(url: str, task: str, summary: dict[str, Any]) -> None:
    """`POST /admin/capture/TASK/dataset`: the same, through a running gateway."""
    import httpx

    key = os.environ.get("TUNEGATE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/admin/capture/{task}/dataset",
            json=summary,
            headers=headers,
            timeout=30,
        )
        stored = response.status_code == 200
    except httpx.HTTPError:
        stored = False
    if not stored:
        print("warning: the estimate was not stored for the report", file=sys.stderr)


def _read_over_http(url: str, task: str) -> list[dict[str, Any]]:
    """`GET /admin/capture/TASK`, with the key in $TUNEGATE_API_KEY when set."""
    import httpx

    key = os.environ.get("TUNEGATE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/admin/capture/{task}", headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"cannot reach {url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def _validation_path(out: Path) -> Path:
    name = out.name.removesuffix(".jsonl")
    return out.with_name(f"{name}.validation.jsonl")


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise RuntimeError(f"cannot write {path}: {exc.strerror}") from None


def _summary(task: Task, source: str, result: Check, out: Path, validation: Path | None) -> str:
    tokens = result.tokens
    written = f"{result.kept - result.validation} examples -> {out}"
    if validation is not None:
        written += f", {result.validation} -> {validation}"
    dropped = ", ".join(f"{reason}: {n}" for reason, n in result.dropped.items()) or "none"
    exact = "exact" if result.tokens_exact else "ESTIMATES"
    price = (
        f"{result.training_price_usd_per_mtok:g} USD per 1M tokens"
        if result.training_price_usd_per_mtok is not None
        else "unknown"
    )
    cost = (
        f"{result.estimated_cost_usd:.4f} USD"
        if result.estimated_cost_usd is not None
        else "unknown (no training price)"
    )
    lines = [
        f"dataset of task {task.name}: {written}",
        f"  prompt format   {source} (no few-shot examples)",
        f"  dropped         {dropped}",
        f"  tokens/example  min {tokens['min']:g}, mean {tokens['mean']:g}, max "
        f"{tokens['max']:g}; total {tokens['total']:g} ({result.tokenizer}, {exact})",
        f"  base model      {result.base_model or 'unknown'} "
        f"(context limit {result.context_limit or 'unknown'})",
        f"  epochs          {result.epochs}",
        f"  training price  {price} ({result.training_price_source})",
        f"  estimated cost  {cost} for {result.billed_tokens:,} billed tokens",
    ]
    return "\n".join(lines)
