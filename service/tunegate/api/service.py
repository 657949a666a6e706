"""Endpoints about the service itself: the task list, liveness, readiness, metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.incoming import caller
from tunegate.api.responses import json_response
from tunegate.api.services import services_of, started_services
from tunegate.errors import NotFound


async def list_models(request: Request) -> Response:
    """The tasks this caller may call, in OpenAI's `ListModelsResponse` shape."""
    runtime = services_of(request).runtime
    principal = caller(runtime, request)
    created = int(runtime.started_at)
    data = [_model(name, created) for name in runtime.config.tasks if principal.may_call(name)]
    return json_response({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    """`GET /v1/models/{task}`: the task as OpenAI's `Model`; 404 `model_not_found` for a
    task that does not exist or that this caller may not call (the same answer for both,
    so a key learns nothing of other tenants' tasks)."""
    runtime = services_of(request).runtime
    principal = caller(runtime, request)
    name = request.path_params["task"]
    if name not in runtime.config.tasks or not principal.may_call(name):
        raise NotFound(
            f"The model {name!r} does not exist or you do not have access to it.",
            code="model_not_found",
        )
    return json_response(_model(name, int(runtime.started_at)))


def _model(name: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": "tunegate"}


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    services = started_services(request)
    if services is None or services.draining:
        state = "draining" if services is not None else "starting"
        return json_response({"status": state}, status=503)
    runtime, store = services.runtime, services.store
    await store.ping()
    return json_response(
        {
            "status": "ready",
            "store": store.state,
            "tasks": len(runtime.config.tasks),
            "auth": "open" if runtime.config.open_mode else "keys",
            # off | ok | open | closed (the store is down: limits fail open or closed)
            "limits": services.limits.state(runtime.config.keys, runtime.config.limits_fail_open),
        }
    )


async def metrics_endpoint(request: Request) -> Response:
    services = started_services(request)
    if services is None:
        return Response("the gateway is starting\n", status_code=503, media_type="text/plain")
    # The experiment gauges as of now (a store that fails leaves the last ones).
    await services.watcher.refresh_for_scrape(services.runtime.config)
    body, content_type = services.metrics.render()
    return Response(body, media_type=content_type)
