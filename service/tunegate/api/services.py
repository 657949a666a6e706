"""What the endpoints work with, as one typed object: the config in force (`Runtime`,
swapped whole on reload) and the services the app's lifespan opened. The app keeps it
as its only state attribute; endpoints get it with `services_of(request)`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from starlette.requests import Request

from tunegate.config.compiled import ApiKey, GatewayConfig
from tunegate.experiments.adaptive import Watcher
from tunegate.experiments.capture import Capture
from tunegate.experiments.recorder import Experiments
from tunegate.flow.gateway import Gateway
from tunegate.observability.metrics import Metrics
from tunegate.state.limits import Limits
from tunegate.state.store import Store

if TYPE_CHECKING:  # admin.py builds on this module
    from tunegate.api.admin import Reloader


@dataclass(frozen=True)
class Runtime:
    """The config in force and what was built from it; swapped whole on reload, so a
    request reads one consistent version."""

    config: GatewayConfig
    gateway: Gateway
    keys: Mapping[str, ApiKey]
    started_at: float


@dataclass(eq=False)
class Services:
    """Opened in the lifespan and closed there. `runtime` is the reloader's (a reload
    replaces it), `draining` is set by SIGTERM or shutdown; the rest stays for the
    app's life."""

    metrics: Metrics
    store: Store
    limits: Limits
    experiments: Experiments
    watcher: Watcher
    reloader: Reloader
    draining: bool = False
    drain_task: asyncio.Task[None] | None = None
    capture: Capture | None = None

    @property
    def runtime(self) -> Runtime:
        return self.reloader.runtime


def services_of(request: Request) -> Services:
    """The app's services (requests reach endpoints only once the lifespan set them)."""
    return cast(Services, request.app.state.services)


def started_services(request: Request) -> Services | None:
    """The app's services, or None while the lifespan is still opening them."""
    return cast(Services | None, getattr(request.app.state, "services", None))
