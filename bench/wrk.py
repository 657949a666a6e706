"""Driving wrk with `chat.lua` and reading its figures."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SCRIPT = Path(__file__).with_name("chat.lua")
PROMPT = "@@PROMPT@@"
Mode = Literal["unique", "repeat"]


@dataclass(frozen=True, slots=True)
class Load:
    """What one wrk run measured: throughput, latency, errors and wrk's own CPU."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    status_errors: int  # responses with status >= 400
    socket_errors: int  # connect, read, write errors and timeouts
    cpu_seconds: float  # wrk's own user + system time

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_binary() -> str:
    """wrk's path; raises `RuntimeError` when it is not installed."""
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed (bench/run installs it with apt-get as root)")
    return found


def repeated_prompt(nonce: str) -> str:
    """The one prompt `repeat` mode sends for `nonce` (as `chat.lua` builds it)."""
    return f"I was charged twice this month, ticket {nonce}."


def run_wrk(
    url: str,
    template: str,
    mode: Mode,
    nonce: str,
    *,
    concurrency: int,
    duration_s: float,
    bearer: str = "",
    headers: Mapping[str, str] | None = None,
) -> Load:
    """Load `url` with POSTs of `template` for `duration_s` at `concurrency` connections.
    Raises `RuntimeError` when wrk fails or prints no figures."""
    if PROMPT not in template:
        raise ValueError(f"the body template has no {PROMPT}")
    threads = 1 if concurrency < 8 else 2
    argv = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        url,
        "--",
        template,
        mode,
        nonce,
        bearer,
        "\n".join(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # wrk stops by itself after -d; the timer is a bound in case it hangs on a dead server.
    timer = threading.Timer(duration_s + 30, process.kill)
    timer.start()
    try:
        assert process.stdout is not None
        out = process.stdout.read().decode(errors="replace")
        # wait4 rather than Popen.wait: it also gives wrk's CPU time.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        timer.cancel()
    return parse_output(out, process.returncode, usage)


def parse_output(out: str, returncode: int, usage: resource.struct_rusage) -> Load:
    """The figures of wrk's output `out` (the `WRK_JSON` line `chat.lua` prints)."""
    for line in out.splitlines():
        if line.startswith("WRK_JSON "):
            figures = json.loads(line.removeprefix("WRK_JSON "))
            break
    else:
        raise RuntimeError(f"wrk exited {returncode} without figures: {out.strip()[-300:]}")
    return Load(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        status_errors=figures["status"],
        socket_errors=sum(figures[k] for k in ("connect", "read", "write", "timeout")),
        cpu_seconds=usage.ru_utime + usage.ru_stime,
    )
