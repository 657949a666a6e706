"""How a request reaches its endpoint: the app's middleware, in the gateway's own order,
and its busiest route answered ahead of Starlette's routing.

Nearly every request is `POST /v1/chat/completions`. Starlette's exception middleware,
router and route wrapper cost each one two more send wrappers, two `Request`s and a walk
of the route table; `GatewayApp` gives that route's requests straight to its endpoint,
its `GatewayError`s to `error_response` (what the exception handler does). Everything
else goes through Starlette as before: the other endpoints, 404, 405 with `Allow`, that
path's other methods. Outermost first:

    [ServerSpans] → AccessLog → ServerErrorMiddleware → first route → ExceptionMiddleware → Router

The user middleware (`add_middleware`: the access line, tracing's server spans) wraps
Starlette's last-resort 500 too, so that answer also carries an `x-request-id` and has
its access line and span like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, ExceptionHandler, Receive, Scope, Send

from tunegate.api.errors import error_response
from tunegate.errors import GatewayError

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


class GatewayApp(Starlette):
    """Starlette with `first` (a route of `routes` with a fixed path) answered ahead of
    the router, and the user middleware outside the last-resort 500."""

    def __init__(self, routes: Sequence[BaseRoute], lifespan: Lifespan, first: Route) -> None:
        super().__init__(routes=routes, lifespan=lifespan)
        if first not in routes or first.param_convertors:
            raise ValueError(f"{first.path}: not one of the routes, or not a fixed path")
        self._first = first

    def build_middleware_stack(self) -> ASGIApp:
        error_handler: ExceptionHandler | None = None
        handlers: dict[Any, ExceptionHandler] = {}
        for key, handler in self.exception_handlers.items():
            if key in (500, Exception):
                error_handler = handler
            else:
                handlers[key] = handler
        routed = ExceptionMiddleware(self.router, handlers=handlers, debug=self.debug)
        app: ASGIApp = ServerErrorMiddleware(
            _FirstRoute(self._first, routed), handler=error_handler, debug=self.debug
        )
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


class _FirstRoute:
    """ASGI: the route's own requests (its path, one of its methods) to its endpoint;
    the rest to `routed`."""

    def __init__(self, route: Route, routed: ASGIApp) -> None:
        self._path = route.path
        self._methods = frozenset(route.methods or ())
        self._endpoint = route.endpoint
        self._routed = routed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self._path
            or scope["method"] not in self._methods
        ):
            await self._routed(scope, receive, send)
            return
        scope["endpoint"] = self._endpoint  # as the router sets it (tracing names the span)
        try:
            response = await self._endpoint(Request(scope, receive, send))
        except GatewayError as exc:
            response = error_response(exc)
        await response(scope, receive, send)
