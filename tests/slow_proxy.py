"""A TCP proxy in front of a real Redis server that can lose replies on purpose: the next
N replies (a reply slower than the client's socket timeout, as on a busy machine: the
command ran, its answer never came in time), or all of them (a frozen path). Plain
threads, so sync tests (a gateway served in a thread) and async ones can both use it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class LossyProxy:
    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._drop_next = 0
        self.drop_all = False
        self.commands = 0  # chunks the clients sent: how often the server was asked
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def drop_next_replies(self, count: int = 1) -> None:
        with self._lock:
            self._drop_next += count

    def close(self) -> None:
        self._listener.close()
        for sock in list(self._sockets):
            with suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        with suppress(OSError):
            while chunk := source.recv(65536):
                if not replies:
                    self.commands += 1
                elif self._lose():
                    continue
                sink.sendall(chunk)
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _lose(self) -> bool:
        with self._lock:
            if self.drop_all:
                return True
            if self._drop_next:
                self._drop_next -= 1
                return True
        return False


@contextmanager
def lossy_proxy(target_port: int) -> Iterator[LossyProxy]:
    proxy = LossyProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
