"""`tunegate serve`: check everything that can be checked before binding, then run uvicorn.

A bad config, a missing secret or a taken port is one line on stderr and exit 1, before
the embedded store starts; nothing is left running. uvicorn's own start-up failures (a
port taken between the check and the bind) are exit 1 too, with the store stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import tempfile
from contextlib import ExitStack

from tunegate.commands.protocol import gateway_protocol
from tunegate.config.compiled import load_config, missing_secrets
from tunegate.config.settings import Settings, settings_from_env
from tunegate.errors import ConfigError


def serve(args: argparse.Namespace) -> int:
    from tunegate.observability.logs import configure_logging

    settings = _settings(args)
    if settings is None:
        print(f"tunegate serve: PORT={os.environ.get('PORT')!r} is not a port", file=sys.stderr)
        return 2
    config = load_config(settings.config_path)
    problems = missing_secrets(config, settings.environ)
    if problems:
        raise ConfigError("\n".join(problems))
    taken = bind_problem(settings.host, settings.port)
    if taken:
        print(f"tunegate serve: {taken}", file=sys.stderr)
        return 1
    configure_logging(settings.log_level)
    # Workers build their app from the environment, so flags travel through it.
    os.environ["TUNEGATE_CONFIG"] = str(settings.config_path)
    with ExitStack() as stack:
        _open_shared(stack, settings, args.workers)
        # uvicorn re-raises SIGTERM once it has shut down; turn it into an exit that
        # unwinds this stack, so the embedded store stops with the gateway.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            _run_uvicorn(settings, args.workers, config.header_timeout_s)
        except SystemExit as exc:
            if exc.code not in (0, None):
                print(
                    f"tunegate serve: the server did not start on {settings.host}:"
                    f"{settings.port}; the log above says why",
                    file=sys.stderr,
                )
                return 1
    return 0


def _settings(args: argparse.Namespace) -> Settings | None:
    """The process settings, or None when `PORT` is no port (flags are checked by argparse)."""
    try:
        settings = settings_from_env(config_path=args.config, host=args.host, port=args.port)
    except ValueError:
        return None
    return settings if 1 <= settings.port <= 65535 else None


def _open_shared(stack: ExitStack, settings: Settings, workers: int) -> None:
    """What every worker shares, opened in this process and closed by `stack`: the
    embedded store without `REDIS_URL` (SPEC §7: cache, limits and experiments are then
    shared), the metrics directory with several workers."""
    from tunegate.state.embedded import EmbeddedServer

    if settings.redis_url is None:
        embedded = stack.enter_context(EmbeddedServer())
        os.environ["REDIS_URL"] = embedded.url
        logging.getLogger("tunegate.store").warning(
            "no REDIS_URL: started an embedded Redis-compatible server at %s", embedded.url
        )
    if workers > 1 and not settings.metrics_dir:
        metrics_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="tunegate-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir


def bind_problem(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on (taken, not an address of this machine), or
    None when a listening socket can be bound there now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _exit_on_signal(signum: int, frame: object) -> None:
    sys.exit(0)


def _run_uvicorn(settings: Settings, workers: int, header_timeout_s: float) -> None:
    import uvicorn

    uvicorn.run(
        "tunegate.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        loop="uvloop",
        http=gateway_protocol(header_timeout_s),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # Longer than clients keep idle connections (httpx, the SDKs: 5 s), so the client
        # drops an idle connection first, never the server while a request is being sent
        # on it (uvicorn's default, 5 s, races httpx's).
        timeout_keep_alive=75,
    )
