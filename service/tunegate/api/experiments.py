"""`POST /v1/feedback` and `GET /v1/experiments/{task}` (SPEC §2, §4, §7)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.bodies import FEEDBACK_PROBLEMS, feedback_body
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
from tunegate.experiments.document import document_json
from tunegate.state.store import StoreFailure

MAX_COMMENT_CHARS = 2000
FEEDBACK_BODY_LIMIT = 64 * 1024


async def post_feedback(request: Request) -> Response:
    services = services_of(request)
    experiments = services.experiments
    principal = caller(services.runtime, request)
    body = feedback_body(await read_body(request, FEEDBACK_BODY_LIMIT))
    # A completion's `id` is its request id behind OpenAI's prefix.
    request_id = body.request_id.removeprefix(COMPLETION_ID_PREFIX)
    if not request_id:
        raise InvalidRequest(FEEDBACK_PROBLEMS["request_id"], param="request_id")
    score = float(body.score)
    comment = body.comment[:MAX_COMMENT_CHARS] if body.comment else None
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
    if isinstance(document, StoreFailure):
        raise Unavailable("The store is unavailable; retry shortly.", code="not_ready")
    return json_response(document_json(document))
