"""`tunegate tune start | status | cancel` (SPEC §9 "Tuning job", §12 "Tuning target").

`start` uploads the dataset (and validation file) with `purpose: fine-tune` and creates a
job on the task's tuning upstream from its base model (`config/tuning.py`), tagging it with
the task's name (job metadata `tunegate_task`), and prints the job id. `status` shows the
job and its new events, with `--follow` until a final state: a live progress line on a
terminal, one plain line per event otherwise; on `succeeded` it prints the fine-tuned
model and the YAML that adds it to the task as a shadow candidate. `cancel` cancels.

Exit codes: 0 succeeded (and `status` without `--follow` on any state it could read, and a
successful `cancel`), 1 failed or cancelled or an upstream error (the reason printed),
2 usage (unknown task or upstream, unreadable dataset, nothing to tune).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tunegate.errors import TuningError, UsageError

if TYPE_CHECKING:  # imported where used: `tunegate --help` need not load the SDK
    from tunegate.config.compiled import GatewayConfig, Task
    from tunegate.flow.upstream import TuningClient, TuningEvent, TuningJob

FINAL = ("succeeded", "failed", "cancelled")
TASK_METADATA = "tunegate_task"
_STEP = re.compile(r"Step (\d+)/(\d+)")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tune = commands.add_parser("tune", help="fine-tuning jobs (SPEC §9)")
    sub = tune.add_subparsers(title="tune commands")
    start = sub.add_parser("start", help="upload a dataset and start a fine-tuning job")
    start.add_argument("task")
    start.add_argument("--dataset", type=Path, required=True, help="training JSONL file")
    start.add_argument("--validation", type=Path, help="validation JSONL file")
    start.add_argument("--base-model", help="default: tuning.base_model, else the few-shot model")
    start.add_argument("--suffix", help="added to the fine-tuned model's name")
    start.add_argument("--epochs", type=int, help="default: the upstream's choice")
    start.set_defaults(run=run_start)
    status = sub.add_parser("status", help="a job's state and events")
    status.add_argument("job")
    status.add_argument("--follow", action="store_true", help="until a final state")
    status.add_argument("--task", help="the task the job tunes (default: the job's metadata)")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    status.set_defaults(run=run_status)
    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job")
    cancel.set_defaults(run=run_cancel)
    for command in (start, status, cancel):
        command.add_argument("--config", type=Path, help="config file (default: $TUNEGATE_CONFIG)")
    for command in (status, cancel):
        command.add_argument("--upstream", help="upstream name (default: the config's)")


def run_start(args: argparse.Namespace) -> int:
    return _guarded("tune start", lambda: _start(args))


def run_status(args: argparse.Namespace) -> int:
    return _guarded("tune status", lambda: _status(args))


def run_cancel(args: argparse.Namespace) -> int:
    return _guarded("tune cancel", lambda: _cancel(args))


def _guarded(name: str, work: Callable[[], int]) -> int:
    try:
        return work()
    except UsageError as exc:
        print(f"tunegate {name}: {exc}", file=sys.stderr)
        return 2
    except TuningError as exc:
        print(f"tunegate {name}: {exc}", file=sys.stderr)
        return 1


def _config(path: Path | None) -> GatewayConfig:
    from tunegate.config.compiled import load_config
    from tunegate.config.settings import settings_from_env

    return load_config(settings_from_env(config_path=path).config_path)


def _tuning_base(task: Task) -> tuple[str, str] | None:
    """(base model, upstream) of the task's tuning target; None when it has none."""
    from tunegate.config.tuning import TuningTargetMissing, base_model

    try:
        return base_model(task)
    except TuningTargetMissing:
        return None


def _task(config: GatewayConfig, name: str) -> Task:
    task = config.tasks.get(name)
    if task is None:
        raise UsageError(
            f"no task {name!r} in {config.path}; use one of: {', '.join(config.tasks)}"
        )
    return task


def _client(config: GatewayConfig, upstream: str) -> TuningClient:
    if upstream not in config.upstreams:
        raise UsageError(
            f"no upstream {upstream!r} in {config.path}; use one of: {', '.join(config.upstreams)}"
        )
    from tunegate.flow.upstream import TuningClient

    return TuningClient(config.upstreams[upstream], os.environ)


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _start(args: argparse.Namespace) -> int:
    config = _config(args.config)
    task = _task(config, args.task)
    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    target = _tuning_base(task)
    if target is None:
        raise UsageError(
            f"task {task.name!r} has no few-shot variant to tune from; set "
            "`tuning.base_model` and `tuning.upstream`."
        )
    model, upstream = target
    model = args.base_model or model
    training, validation = _read(args.dataset), _read(args.validation)
    assert training is not None
    client = _client(config, upstream)
    try:
        training_id = client.upload(args.dataset.name, training)
        validation_id = None
        if validation is not None:
            validation_id = client.upload(args.validation.name, validation)
        job = client.create(
            model,
            training_id,
            validation_file=validation_id,
            suffix=args.suffix,
            epochs=args.epochs,
            metadata={TASK_METADATA: task.name},
        )
    finally:
        client.close()
    print(job.id)
    print(
        f"started: {model} on upstream {upstream}, training file {training_id}; follow it with "
        f"`tunegate tune status {job.id} --follow`",
        file=sys.stderr,
    )
    return 0


def _status_upstream(config: GatewayConfig, wanted: str | None) -> str:
    """--upstream, else the config's only upstream, else the one every task tunes on."""
    if wanted is not None:
        return wanted
    if len(config.upstreams) == 1:
        return next(iter(config.upstreams))
    used = {target[1] for task in config.tasks.values() if (target := _tuning_base(task))}
    if len(used) == 1:
        return used.pop()
    raise UsageError(f"{config.path} has several upstreams; pass --upstream NAME")


def _status(args: argparse.Namespace) -> int:
    config = _config(args.config)
    upstream = _status_upstream(config, args.upstream)
    client = _client(config, upstream)
    show = Display(sys.stdout)
    try:
        job = client.retrieve(args.job)
        seen = show.events(client.events(job.id), set(), job)
        while args.follow and job.status not in FINAL:
            time.sleep(args.interval)
            job = client.retrieve(args.job)
            seen = show.events(client.events(job.id), seen, job)
    finally:
        show.close()
        client.close()
    return _report(config, job, upstream, args.task, follow=args.follow)


def _report(
    config: GatewayConfig, job: TuningJob, upstream: str, task_name: str | None, *, follow: bool
) -> int:
    print(f"{job.id}: {job.status}")
    if job.status == "succeeded" and job.fine_tuned_model:
        print(f"fine-tuned model: {job.fine_tuned_model}")
        name = task_name or job.metadata.get(TASK_METADATA)
        task = config.tasks.get(name) if name else None
        if task is None:
            print("pass --task TASK for the YAML that adds it to a task", file=sys.stderr)
        else:
            print(candidate_yaml(task, job.fine_tuned_model, upstream), end="")
        return 0
    if job.status in ("failed", "cancelled"):
        reason = job.error or ("cancelled" if job.status == "cancelled" else "no reason given")
        print(f"{job.id} {job.status}: {reason}", file=sys.stderr)
        return 1 if follow else 0
    return 0


def candidate_yaml(task: Task, model: str, upstream: str) -> str:
    import yaml

    from tunegate.config.tuning import candidate_overlay

    overlay = candidate_overlay(task, model, upstream)
    name = next(iter(overlay["tasks"][task.name]["variants"]))  # type: ignore[index]
    head = (
        f"# Add to your config (merge at these paths): the tuned model as variant {name!r},\n"
        "# served as the shadow (paired figures, no caller sees it) with weight 0.\n"
        "# Give it weight to make it an experiment arm.\n"
    )
    return head + yaml.safe_dump(overlay, sort_keys=False, allow_unicode=True, width=88)


def _cancel(args: argparse.Namespace) -> int:
    config = _config(args.config)
    client = _client(config, _status_upstream(config, args.upstream))
    try:
        job = client.cancel(args.job)
    finally:
        client.close()
    print(f"{job.id}: {job.status}")
    return 0


class Display:
    """New events as plain lines; on a terminal, also a live progress line (status,
    training step, elapsed time) redrawn in place."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._live = out.isatty()
        self._clock = clock
        self._started = clock()
        self._step: tuple[int, int] | None = None

    def events(self, events: list[TuningEvent], seen: set[str], job: TuningJob) -> set[str]:
        """Show the events not in `seen`; the ids seen now."""
        for event in events:
            if event.id in seen:
                continue
            found = _STEP.search(event.message)
            if found:
                self._step = (int(found[1]), int(found[2]))
                if self._live:
                    continue  # the progress bar shows steps
            self._line(f"{_time(event.created_at)}  {event.level:<5}  {event.message}")
        self._progress(job)
        return seen | {e.id for e in events}

    def close(self) -> None:
        if self._live:
            self._out.write("\r\033[K")
            self._out.flush()

    def _line(self, text: str) -> None:
        if self._live:
            self._out.write("\r\033[K")
        self._out.write(text + "\n")
        self._out.flush()

    def _progress(self, job: TuningJob) -> None:
        if not self._live:
            return
        bar = ""
        if self._step is not None:
            done, total = self._step
            filled = round(24 * done / total)
            bar = f" [{'#' * filled}{'.' * (24 - filled)}] step {done}/{total}"
        elapsed = self._clock() - self._started
        self._out.write(f"\r\033[K{job.status}{bar}  {elapsed:.0f} s")
        self._out.flush()


def _time(created_at: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(created_at))
