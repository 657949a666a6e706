"""`GET /admin/capture/{task}`: a task's captured exchanges as JSON lines (SPEC §12
"Export flags"), for `tunegate dataset export --url`. Admin keys only (403
`override_not_allowed` otherwise); 404 for an unknown task; 503 when the store fails
before the first line."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tunegate.api.incoming import caller
from tunegate.api.services import services_of
from tunegate.auth import require_admin
from tunegate.errors import NotFound, Unavailable
from tunegate.experiments.capture import Captured


async def get_capture(request: Request) -> Response:
    services = services_of(request)
    runtime = services.runtime
    require_admin(caller(runtime, request), "read captured exchanges")
    name = request.path_params["task"]
    task = runtime.config.tasks.get(name)
    if task is None:
        raise NotFound(f"The task {name!r} does not exist.")
    capture = services.capture
    if capture is None:
        raise Unavailable("Capture is not running.", code="not_ready")
    ttl_s = task.capture.ttl_s if task.capture is not None else None
    entries = capture.read(task.name, ttl_s)
    try:
        first = await anext(entries, None)
    except RuntimeError:
        raise Unavailable("The store is unavailable; retry shortly.", code="not_ready") from None
    return StreamingResponse(_lines(first, entries), media_type="application/x-ndjson")


async def _lines(first: Captured | None, rest: AsyncIterator[Captured]) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield orjson.dumps(first.as_json()) + b"\n"
    async for captured in rest:
        yield orjson.dumps(captured.as_json()) + b"\n"
