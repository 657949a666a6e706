"""A real Redis-protocol server for tests, with the faults tests need to inject.

with redis_server() as server:
    store = Store(server.url)
    server.kill()      # SIGKILL: connections reset, new ones refused
    server.restart()   # a fresh, empty server on the same port
    server.freeze()    # SIGSTOP: connections open, nothing answers
    server.thaw()      # SIGCONT
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from tunegate.state.embedded import EmbeddedServer


class RedisServer:
    """Fault controls over one `EmbeddedServer`; the port survives kill and restart."""

    def __init__(self, server: EmbeddedServer) -> None:
        self._server = server
        self._frozen = False

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def pid(self) -> int:
        return self._server.pid

    def kill(self) -> None:
        """SIGKILL the server and reap it; it stays down until `restart()`."""
        os.kill(self._server.pid, signal.SIGKILL)
        self._frozen = False
        self._server.stop()

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections and buffers commands; no replies."""
        os.kill(self._server.pid, signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT: the server answers everything it buffered meanwhile."""
        os.kill(self._server.pid, signal.SIGCONT)
        self._frozen = False

    def restart(self) -> None:
        """Start a fresh, empty server on the same port (stopping the old one if alive)."""
        if self._frozen:
            self.thaw()
        self._server.restart()

    def stop(self) -> None:
        if self._frozen:
            self.thaw()
        self._server.stop()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start a real server on a free port; stop it (and remove its directory) on exit."""
    handle = RedisServer(EmbeddedServer().start())
    try:
        yield handle
    finally:
        handle.stop()
