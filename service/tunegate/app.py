"""`create_app(settings)`: the app factory. Every client, pool and server the gateway
uses is opened in its lifespan and closed there; nothing lives at import time."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.routing import Route

from tunegate.api.access import AccessLog
from tunegate.api.admin import Reloader, reload_config, watch_sighup
from tunegate.api.capture import get_capture, post_dataset
from tunegate.api.chat import chat_completions
from tunegate.api.dispatch import GatewayApp
from tunegate.api.drain import drain_on_sigterm
from tunegate.api.errors import install_error_handlers
from tunegate.api.experiments import get_experiments, post_feedback
from tunegate.api.service import healthz, list_models, metrics_endpoint, readyz, retrieve_model
from tunegate.api.services import Runtime, Services
from tunegate.api.tasks import run_task
from tunegate.auth import keys_by_hash
from tunegate.config.compiled import GatewayConfig, load_config, missing_secrets
from tunegate.config.settings import Settings
from tunegate.errors import ConfigError
from tunegate.experiments.adaptive import Watcher
from tunegate.experiments.capture import Capture
from tunegate.experiments.recorder import Experiments
from tunegate.flow.gateway import Gateway
from tunegate.flow.judge import Judges
from tunegate.flow.shadow import Shadows
from tunegate.flow.upstream import Upstreams
from tunegate.observability.logs import stamp_log_lines
from tunegate.observability.metrics import Metrics, mark_process_dead
from tunegate.pricing import Price, PriceTable
from tunegate.spans import NO_SPANS
from tunegate.state.cache import Cache
from tunegate.state.embedded import EmbeddedServer
from tunegate.state.limits import Limits
from tunegate.state.store import STORE_STATES, Store

if TYPE_CHECKING:  # imported at run time only when tracing is on (no SDK otherwise)
    from tunegate.observability.tracing import Tracing

log = logging.getLogger("tunegate.app")
# Probes and scrapes: no span each.
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


CHAT = Route("/v1/chat/completions", chat_completions, methods=["POST"])
ROUTES = [
    CHAT,
    Route("/v1/tasks/{task}", run_task, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{task}", retrieve_model, methods=["GET"]),
    Route("/admin/reload", reload_config, methods=["POST"]),
    Route("/admin/capture/{task}", get_capture, methods=["GET"]),
    Route("/admin/capture/{task}/dataset", post_dataset, methods=["POST"]),
    Route("/v1/feedback", post_feedback, methods=["POST"]),
    Route("/v1/experiments/{task}", get_experiments, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]


def create_app(settings: Settings) -> Starlette:
    """Build the gateway app; the config is loaded (and any error raised) at start-up."""
    metrics = Metrics(settings.metrics_dir)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if tracing is not None:
                tracing.open()
                stack.callback(tracing.close)  # last: flushes every span, shadows' too
                stack.callback(stamp_log_lines(tracing.log_fields))
            services = await open_services(stack, settings, metrics, tracing)
            install_signals(stack, services)
            app.state.services = services
            log.info(
                "ready",
                extra={
                    "tasks": sorted(services.runtime.config.tasks),
                    "config": str(services.runtime.config.path),
                },
            )
            yield
            services.draining = True
            metrics.close()
            if settings.metrics_dir:
                mark_process_dead(settings.metrics_dir, os.getpid())

    app = GatewayApp(ROUTES, lifespan, first=CHAT)
    install_error_handlers(app)
    app.add_middleware(AccessLog)
    tracing = _tracing(app, settings)
    return app


async def open_services(
    stack: AsyncExitStack, settings: Settings, metrics: Metrics, tracing: Tracing | None = None
) -> Services:
    """Load the config and open every service the gateway uses, each closed by `stack`
    in the reverse order (shadow calls first, the store last)."""
    config = load_config(settings.config_path)
    problems = missing_secrets(config, settings.environ)
    if problems:
        raise ConfigError("\n".join(problems))
    store = Store(
        _store_url(stack, settings),
        socket_timeout_ms=config.store_socket_timeout_ms,
        connect_timeout_ms=config.store_connect_timeout_ms,
    )
    stack.push_async_callback(store.close)
    metrics.watch_store(lambda: store.state, STORE_STATES)
    limits = Limits(store)
    stack.push_async_callback(limits.aclose)
    experiments = Experiments(store)
    stack.push_async_callback(experiments.drain)  # before the store closes
    capture = Capture(store, counted=metrics.record_capture)
    stack.push_async_callback(capture.drain)  # before the store closes
    cache = Cache(store, busy=lambda: metrics.in_flight)
    watcher = Watcher(experiments, metrics.publish_experiment)

    def build(config: GatewayConfig, upstreams: Upstreams) -> Runtime:
        return build_runtime(
            config, upstreams, cache, metrics, limits, experiments, watcher, capture, tracing
        )

    upstreams = Upstreams(config.upstreams, settings.environ)
    reloader = Reloader(build(config, upstreams), settings, upstreams, build)
    stack.push_async_callback(reloader.aclose)  # closes the upstreams in use
    # First of all: shadow calls finish while upstreams and store are open.
    stack.push_async_callback(lambda: reloader.runtime.gateway.aclose())
    watcher.start(lambda: reloader.runtime.config)
    stack.push_async_callback(watcher.aclose)
    if config.open_mode:
        log.warning(
            "auth: no keys configured, running in OPEN MODE: any caller may use "
            "every task and force variants; configure auth.keys for production"
        )
    return Services(metrics, store, limits, experiments, watcher, reloader, capture=capture)


def _store_url(stack: AsyncExitStack, settings: Settings) -> str:
    """`REDIS_URL`, or an embedded server's that lives as long as `stack`."""
    if settings.redis_url is not None:
        return settings.redis_url
    embedded = stack.enter_context(EmbeddedServer())
    log.warning(
        "no REDIS_URL: started an embedded Redis-compatible server at %s "
        "(data lives as long as this process)",
        embedded.url,
    )
    return embedded.url


def install_signals(stack: AsyncExitStack, services: Services) -> None:
    """SIGHUP reloads the config, SIGTERM drains (main thread only); removed by `stack`."""
    stack.callback(watch_sighup(services.reloader))
    stack.callback(drain_on_sigterm(services))


def build_runtime(
    config: GatewayConfig,
    upstreams: Upstreams,
    cache: Cache,
    metrics: Metrics,
    limits: Limits | None = None,
    experiments: Experiments | None = None,
    watcher: Watcher | None = None,
    capture: Capture | None = None,
    tracing: Tracing | None = None,
) -> Runtime:
    prices = PriceTable({m: Price(i, o) for m, (i, o) in config.pricing.items()})
    # The first lookup of a model costs tens of ms: pay it at start-up, not on a request.
    prices.preload(v.model for task in config.tasks.values() for v in task.variants.values())
    prices.preload(t.judge.variant.model for t in config.tasks.values() if t.judge is not None)
    keys = keys_by_hash(config)
    recorders = [metrics.record] if limits is None else [metrics.record, limits.recorder(keys)]
    shadow_recorders = [metrics.record_shadow]
    judge_recorders = [metrics.record_judgement]
    if experiments is not None:
        recorders.append(experiments.record)
        shadow_recorders.append(experiments.record_shadow)
        judge_recorders.append(experiments.record_judgement)
    if capture is not None:
        recorders.append(capture.record)
    spans = tracing or NO_SPANS
    if tracing is not None:
        recorders.append(tracing.record)
    judges = Judges(upstreams, prices, judge_recorders, spans=spans, lull=metrics.lull)
    shadows = Shadows(upstreams, prices, shadow_recorders, judges=judges, spans=spans)
    gateway = Gateway(
        upstreams,
        prices,
        cache=cache,
        recorders=recorders,
        shadows=shadows,
        judges=judges,
        weights=watcher.cumulative if watcher else None,
        spans=spans,
    )
    return Runtime(config=config, gateway=gateway, keys=keys, started_at=time.time())


def _tracing(app: Starlette, settings: Settings) -> Tracing | None:
    """With an OTLP endpoint set: the process's spans, and a server span per request."""
    if settings.tracing is None:
        return None
    from tunegate.observability.tracing import ServerSpans, Tracing

    tracing = Tracing(settings.tracing)
    routes = {getattr(r, "endpoint", None): getattr(r, "path", "") for r in app.routes}
    app.add_middleware(ServerSpans, tracing=tracing, skip=UNTRACED, routes=routes)
    return tracing


def app_from_env() -> Starlette:
    """The factory `uvicorn --factory` calls in each worker (a spawned worker process
    starts with Python's default logging: it gets the JSON lines here)."""
    from tunegate.config.settings import settings_from_env
    from tunegate.observability.logs import configure_logging

    settings = settings_from_env()
    configure_logging(settings.log_level)
    return create_app(settings)
