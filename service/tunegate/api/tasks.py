"""`POST /v1/tasks/{task}`: the task-native endpoint; `output` is the parsed JSON object
for JSON tasks and the text for text tasks."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.bodies import TaskBody, cache_mode, caller_messages, parse_body
from tunegate.api.incoming import (
    Runtime,
    caller,
    cancel_on_disconnect,
    make_call,
    new_request_id,
    read_body,
    resolve_task,
)
from tunegate.errors import GatewayError


async def run_task(request: Request) -> Response:
    request_id = new_request_id()
    try:
        runtime: Runtime = request.app.state.runtime
        principal = caller(runtime, request)
        raw = await read_body(request, runtime.config.max_body_bytes)
        body: TaskBody = parse_body(TaskBody, raw)
        task = resolve_task(runtime, principal, request.path_params["task"])
        if isinstance(body.input, str):
            messages: tuple[dict[str, str], ...] = ({"role": "user", "content": body.input},)
        else:
            messages = caller_messages(body.input)
        call = make_call(
            request,
            request_id,
            principal,
            task,
            messages,
            {},
            body.user,
            cache_mode(request.headers),
        )
        answer = await cancel_on_disconnect(request, runtime.gateway.answer(call))
    except GatewayError as exc:
        exc.headers.setdefault("x-request-id", request_id)
        raise
    body_out = {
        "id": answer.request_id,
        "task": task.name,
        "variant": answer.variant.name,
        "model": answer.variant.model,
        "output": answer.parsed,
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
        },
        "cost_usd": answer.cost_usd,
        "cache": answer.cache,
        "fallback_from": answer.fallback_from,
    }
    return Response(orjson.dumps(body_out), headers=answer.headers(), media_type="application/json")
