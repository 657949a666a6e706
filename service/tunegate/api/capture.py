"""`GET /admin/capture/{task}`: a task's captured exchanges as JSON lines (SPEC §12
"Export flags"), for `tunegate dataset export --url`; `POST /admin/capture/{task}/dataset`
keeps what that export estimated (`{"estimated_cost_usd": ...}`) for the report's
break-even. Admin keys only (403 `override_not_allowed` otherwise); 404 for an unknown
task; 400 for a body without a number `estimated_cost_usd` >= 0; 503 when the store
fails (before the first line)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tunegate.api.incoming import caller, read_body
from tunegate.api.services import services_of
from tunegate.auth import require_admin
from tunegate.config.compiled import Task
from tunegate.errors import InvalidRequest, NotFound, Unavailable
from tunegate.experiments.capture import Capture, Captured

SUMMARY_LIMIT = 16 * 1024


def _admin_task(request: Request, action: str) -> tuple[Task, Capture]:
    services = services_of(request)
    runtime = services.runtime
    require_admin(caller(runtime, request), action)
    name = request.path_params["task"]
    task = runtime.config.tasks.get(name)
    if task is None:
        raise NotFound(f"The task {name!r} does not exist.")
    if services.capture is None:
        raise Unavailable("Capture is not running.", code="not_ready")
    return task, services.capture


async def post_dataset(request: Request) -> Response:
    task, capture = _admin_task(request, "record a dataset's estimate")
    try:
        summary: Any = orjson.loads(await read_body(request, SUMMARY_LIMIT))
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None
    cost = summary.get("estimated_cost_usd") if isinstance(summary, dict) else None
    if (
        isinstance(cost, bool)
        or not isinstance(cost, int | float)
        or not math.isfinite(cost)
        or cost < 0
    ):
        raise InvalidRequest(
            "`estimated_cost_usd` must be a number >= 0.", param="estimated_cost_usd"
        )
    ttl_s = task.capture.ttl_s if task.capture is not None else 30 * 86400
    if not await capture.note_dataset(task.name, summary, ttl_s):
        raise Unavailable("The store is unavailable; retry shortly.", code="not_ready")
    body = {"task": task.name, "estimated_cost_usd": cost}
    return Response(orjson.dumps(body), media_type="application/json")


async def get_capture(request: Request) -> Response:
    task, capture = _admin_task(request, "read captured exchanges")
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
