"""The servers a benchmark runs (each in its own session, stopped by its own id) and the
CPU time each one, and the machine as a whole, spent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tunegate.state.embedded import free_port as free_port

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
STORE_COMMANDS = ("valkey-server", "redis-server")


@dataclass
class Server:
    """A server process started by `start_server`; `url` is its base URL."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the server, then SIGKILL its session (its children included) if it
        has not exited within `timeout_s`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        # The server's own session: only processes it started are in it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def start_server(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    ready_path: str,
    log_dir: Path,
    environ: Mapping[str, str] | None = None,
    timeout_s: float = 90.0,
) -> Server:
    """Start `argv` in a new session and wait until `GET ready_path` answers (any status).
    Raises `RuntimeError` with the log's tail when it exits or does not answer in time."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(environ if environ is not None else os.environ),
            start_new_session=True,
        )
    server = Server(name, f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.log_tail()}")
        try:
            httpx.get(server.url + ready_path, timeout=1.0)
            return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"{name} did not answer within {timeout_s:g} s:\n{server.log_tail()}"
            )
        time.sleep(0.1)


# -- CPU accounting ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds so far: per role (from the processes' trees) and the machine's busy
    time over all cores, with the wall-clock time it was taken at."""

    at: float
    roles: Mapping[str, float]
    machine_busy: float


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int, children: Mapping[int, list[int]]) -> Iterator[int]:
    """`root` and every descendant of it."""
    pending = [root]
    while pending:
        pid = pending.pop()
        yield pid
        pending.extend(children.get(pid, ()))


def _cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # utime and stime are fields 14 and 15 of the stat line, 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def machine_busy_seconds() -> float:
    """CPU seconds every core spent busy since boot (not idle, not waiting on I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICKS_PER_SECOND


def cpu_snapshot(roots: Mapping[str, int]) -> CpuSnapshot:
    """CPU seconds of each role's process tree. A store server (valkey or redis) in a
    tree counts under `store` rather than under the role that started it."""
    children = _children()
    roles: dict[str, float] = {}
    for role, root in roots.items():
        for pid in process_tree(root, children):
            owner = "store" if _command(pid) in STORE_COMMANDS else role
            roles[owner] = roles.get(owner, 0.0) + _cpu_seconds(pid)
    return CpuSnapshot(time.monotonic(), roles, machine_busy_seconds())


def cpu_percent(
    before: CpuSnapshot, after: CpuSnapshot, extra: Mapping[str, float]
) -> dict[str, float]:
    """Per role, the % of one core it used between two snapshots (200% = both cores of a
    2-core machine); `extra` adds roles measured otherwise (CPU seconds, e.g. wrk's), and
    `other` is the machine's busy time that no role accounts for."""
    seconds = after.at - before.at
    if seconds <= 0:
        return {}
    used = {
        role: after.roles.get(role, 0.0) - before.roles.get(role, 0.0)
        for role in after.roles.keys() | before.roles.keys()
    }
    used.update(extra)
    used["other"] = max(0.0, after.machine_busy - before.machine_busy - sum(used.values()))
    return {role: round(100 * value / seconds, 1) for role, value in sorted(used.items())}


def wait_until_idle(root: int, timeout_s: float, interval_s: float = 0.5) -> None:
    """Wait until the process tree of `root` uses under 10% of a core over `interval_s`:
    every worker has finished starting (imports are CPU-bound). Returns at `timeout_s`
    in any case."""
    deadline = time.monotonic() + timeout_s
    previous = sum(_cpu_seconds(pid) for pid in process_tree(root, _children()))
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        current = sum(_cpu_seconds(pid) for pid in process_tree(root, _children()))
        if current - previous < 0.1 * interval_s:
            return
        previous = current


def wait_for_quiet(max_wait_s: float, busy_cores: float = 0.15, interval_s: float = 1.0) -> float:
    """Wait, at most `max_wait_s`, until the machine was busy less than `busy_cores` of a
    core over `interval_s`: between runs our own servers idle, so what is busy then is
    someone else's work, which would take cores from the next run. Returns the seconds
    waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        before = machine_busy_seconds()
        time.sleep(interval_s)
        if machine_busy_seconds() - before < busy_cores * interval_s:
            break
    return time.monotonic() - started
