"""Re-reading the config while serving: `POST /admin/reload` (admin keys only) and SIGHUP
(SPEC §2 Others).

A new config is loaded and validated first (the file, then the upstream secrets); an
invalid one is refused with its problems (400 `invalid_request`, or a log line for
SIGHUP) and the running config stays. A valid one is swapped in whole: `Reloader.runtime`
is replaced in one assignment, so new requests see only the new config (a key removed
from it stops working at once) and requests in flight finish on the runtime they started
with, which they hold.

Upstream clients are kept when the upstream set is unchanged, so connection pools stay
warm. Otherwise new clients are opened for the new runtime and the old ones are closed
once the old config's longest task deadline has passed, by which time every request that
could use them has ended (each request, streams included, ends by its deadline).
Cache, metrics, limits and the store are shared by every runtime; store settings
(`store.*`) and `server.header_timeout_s` (the HTTP server's) take effect on restart.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.incoming import caller
from tunegate.api.responses import json_response
from tunegate.api.services import Runtime, services_of
from tunegate.auth import require_admin
from tunegate.config.compiled import GatewayConfig, load_config, missing_secrets
from tunegate.config.settings import Settings
from tunegate.errors import ConfigError, InvalidRequest
from tunegate.flow.upstream import Upstreams

log = logging.getLogger("tunegate.admin")

BuildRuntime = Callable[[GatewayConfig, Upstreams], Runtime]
# Past the old config's longest deadline, a retired upstream client is closed this much
# later still: no request can be using it any more.
RETIRE_MARGIN_S = 5.0


@dataclass(frozen=True)
class Reloaded:
    config: GatewayConfig
    upstreams_replaced: bool


class Reloader:
    """Holds the runtime in force, and swaps it for one built from the config file as
    it is now."""

    def __init__(
        self, runtime: Runtime, settings: Settings, upstreams: Upstreams, build: BuildRuntime
    ) -> None:
        self.runtime = runtime
        self._settings = settings
        self._upstreams = upstreams
        self._build = build
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], Upstreams] = {}
        self._signalled: set[asyncio.Task[None]] = set()

    async def reload(self) -> Reloaded:
        """Load, validate and swap in the config at `settings.config_path`; raise
        `ConfigError` naming every problem, leaving the running config in force."""
        async with self._lock:
            config = await asyncio.to_thread(load_config, self._settings.config_path)
            problems = missing_secrets(config, self._settings.environ)
            if problems:
                raise ConfigError("\n".join(problems))
            old = self.runtime
            replaced = dict(config.upstreams) != dict(old.config.upstreams)
            upstreams = (
                Upstreams(config.upstreams, self._settings.environ) if replaced else self._upstreams
            )
            try:
                runtime = await asyncio.to_thread(self._build, config, upstreams)
            except BaseException:
                if replaced:
                    await upstreams.aclose()
                raise
            self.runtime = runtime
            if replaced:
                self._retire(self._upstreams, old.config)
                self._upstreams = upstreams
            self._warn_about_restart_only(old.config, config)
        log.info(
            "config reloaded",
            extra={
                "config": str(config.path),
                "tasks": sorted(config.tasks),
                "keys": len(config.keys),
                "upstreams": "replaced" if replaced else "kept",
            },
        )
        return Reloaded(config, replaced)

    def on_signal(self) -> None:
        """The SIGHUP handler: reload in the background, logging what happened."""
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._signalled.add(task)
        task.add_done_callback(self._signalled.discard)

    async def aclose(self) -> None:
        """Close the upstream clients in use and any still waiting to be retired."""
        for task in list(self._signalled):
            task.cancel()
        for task, upstreams in list(self._retiring.items()):
            task.cancel()
            await upstreams.aclose()
        self._retiring.clear()
        await self._upstreams.aclose()

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigError as exc:
            log.error(
                "config reload (SIGHUP) refused; the running config stays: %s",
                exc,
                extra={"config": str(self._settings.config_path)},
            )
        except Exception:
            log.exception("config reload (SIGHUP) failed; the running config stays")

    def _retire(self, upstreams: Upstreams, config: GatewayConfig) -> None:
        longest = max((task.deadline_s for task in config.tasks.values()), default=0.0)

        async def close_later() -> None:
            await asyncio.sleep(longest + RETIRE_MARGIN_S)
            await upstreams.aclose()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring[task] = upstreams
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    @staticmethod
    def _warn_about_restart_only(old: GatewayConfig, new: GatewayConfig) -> None:
        before = (old.store_socket_timeout_ms, old.store_connect_timeout_ms)
        after = (new.store_socket_timeout_ms, new.store_connect_timeout_ms)
        if before != after:
            log.warning("config reloaded: the new store.* settings take effect on restart")
        if old.header_timeout_s != new.header_timeout_s:
            log.warning("config reloaded: server.header_timeout_s takes effect on restart")


def watch_sighup(reloader: Reloader) -> Callable[[], None]:
    """Reload on SIGHUP; returns the function that stops watching. Signal handlers can
    only be installed from the main thread (not under a server run in a thread, as the
    tests do): there, nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        log.info("SIGHUP reload not installed: the server does not run in the main thread")
        return lambda: None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reloader.on_signal)

    def stop() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return stop


async def reload_config(request: Request) -> Response:
    """`POST /admin/reload`: 200 with what is now in force; 401 without a valid key, 403
    `override_not_allowed` for a key that is not an admin, 400 `invalid_request` naming
    every problem of an invalid file (the running config stays)."""
    reloader = services_of(request).reloader
    require_admin(caller(reloader.runtime, request), "reload the config")
    try:
        reloaded = await reloader.reload()
    except ConfigError as exc:
        raise InvalidRequest(f"The config was not reloaded; the running one stays. {exc}") from None
    config = reloaded.config
    body = {
        "status": "reloaded",
        "config": str(config.path),
        "tasks": sorted(config.tasks),
        "keys": len(config.keys),
        "upstreams": "replaced" if reloaded.upstreams_replaced else "kept",
    }
    return json_response(body)
