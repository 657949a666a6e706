"""Shutting down without losing requests: SIGTERM starts a drain before uvicorn stops.

uvicorn, on SIGTERM, closes its listening socket at once: requests sent after that meet a
refused connection, and a load balancer polling `/readyz` never sees the instance leave.
So the gateway takes SIGTERM first. It marks the app draining: `/readyz` answers 503
`draining`, and new task requests get 503 `overloaded` with `Retry-After: 1` and
`x-should-retry: true` (another instance answers the retry). The requests in flight run
on. Once none is left (at least `min_drain_s` after the signal, so a balancer sees the
503s; at most `timeout_s`), uvicorn's own shutdown runs: connections close, the lifespan
ends, the embedded store stops. A second SIGTERM skips the wait.

Signal handlers can only be installed from the main thread; under a server run in a
thread (as the tests do), nothing is installed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable

from tunegate.api.services import Services

log = logging.getLogger("tunegate.drain")

MIN_DRAIN_S = 1.0
DRAIN_TIMEOUT_S = 10.0


def drain_on_sigterm(
    services: Services, timeout_s: float = DRAIN_TIMEOUT_S, min_drain_s: float = MIN_DRAIN_S
) -> Callable[[], None]:
    """Install the drain (see the module docstring); returns the function that removes it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    shutdown = signal.getsignal(signal.SIGTERM)  # uvicorn's own handler
    if not callable(shutdown):
        return lambda: None
    loop = asyncio.get_running_loop()

    def stop_serving() -> None:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, shutdown)  # a later SIGTERM: uvicorn's force exit
        shutdown(signal.SIGTERM, None)

    async def drain() -> None:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            waited = time.monotonic() - started
            if waited >= min_drain_s and services.metrics.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        log.info(
            "drained", extra={"seconds": round(time.monotonic() - started, 3),
                              "in_flight": services.metrics.in_flight}
        )  # fmt: skip
        stop_serving()

    def on_sigterm() -> None:
        if services.draining:
            stop_serving()  # a second SIGTERM: no more waiting
            return
        services.draining = True
        log.warning(
            "SIGTERM: draining (503 to new requests, %d in flight)", services.metrics.in_flight
        )
        services.drain_task = loop.create_task(drain())

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    def remove() -> None:
        if not services.draining:
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, shutdown)

    return remove
