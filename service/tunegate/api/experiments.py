"""`POST /v1/feedback` and `GET /v1/experiments/{task}` (SPEC §2, §4, §7)."""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.chat import COMPLETION_ID_PREFIX
from tunegate.api.incoming import caller, read_body
from tunegate.api.responses import json_response
from tunegate.api.services import services_of
from tunegate.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from tunegate.state.store import StoreFailure

MAX_COMMENT_CHARS = 2000
FEEDBACK_BODY_LIMIT = 64 * 1024


async def post_feedback(request: Request) -> Response:
    services = services_of(request)
    experiments = services.experiments
    principal = caller(services.runtime, request)
    request_id, score, comment = _feedback_body(await read_body(request, FEEDBACK_BODY_LIMIT))
    record = await experiments.request(request_id)
    if isinstance(record, StoreFailure):
        raise Unavailable("The store is unavailable; retry shortly.", code="not_ready")
    if record is None or record.tenant != principal.tenant:
        raise NotFound(f"No answered request {request_id!r}.", code="request_not_found")
    recorded = await experiments.add_feedback(record, request_id, score, comment)
    if recorded is None:
        raise Unavailable("The store is unavailable; retry shortly.", code="not_ready")
    if not recorded:
        raise Conflict(f"The request {request_id!r} already has feedback.")
    services.metrics.record_feedback(record.task, record.served, score)
    task = services.runtime.config.tasks.get(record.task)
    if task is not None and task.capture is not None and services.capture is not None:
        await services.capture.add_score(task.name, task.capture, request_id, score)
    return json_response(
        {
            "request_id": request_id,
            "task": record.task,
            "variant": record.served,
            "score": score,
            "sample": record.sample,
        }
    )


def _feedback_body(body: bytes) -> tuple[str, float, str | None]:
    """(request_id, score in [0, 1], comment); 400 naming the wrong field."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    request_id = data.get("request_id")
    if isinstance(request_id, str):
        # A completion's `id` is its request id behind OpenAI's prefix.
        request_id = request_id.removeprefix(COMPLETION_ID_PREFIX)
    if not isinstance(request_id, str) or not request_id:
        raise InvalidRequest(
            "`request_id` must be a non-empty string: the x-request-id, the completion's "
            "`id` or the task-native `id`.",
            param="request_id",
        )
    raw = data.get("score")
    if isinstance(raw, bool):
        score = 1.0 if raw else 0.0
    elif isinstance(raw, int | float) and math.isfinite(raw) and 0 <= raw <= 1:
        score = float(raw)
    else:
        raise InvalidRequest("`score` must be a number from 0 to 1, or a boolean.", param="score")
    comment = data.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise InvalidRequest("`comment` must be a string.", param="comment")
    return request_id, score, comment[:MAX_COMMENT_CHARS] if comment else None


async def get_experiments(request: Request) -> Response:
    services = services_of(request)
    runtime = services.runtime
    principal = caller(runtime, request)
    if not principal.admin:
        raise PermissionDenied("Only admin keys may read experiments.", code="override_not_allowed")
    name = request.path_params["task"]
    task = runtime.config.tasks.get(name)
    if task is None:
        raise NotFound(f"The task {name!r} does not exist.")
    document = await services.experiments.document(task)
    if document is None:
        raise Unavailable("The store is unavailable; retry shortly.", code="not_ready")
    return json_response(document)
