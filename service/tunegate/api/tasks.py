"""`POST /v1/tasks/{task}`: the task-native endpoint; `output` is the parsed JSON object
for JSON tasks and the text for text tasks."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.bodies import TaskBody, cache_mode, parse_body
from tunegate.api.incoming import (
    Incoming,
    admit,
    caller,
    cancel_on_disconnect,
    make_call,
    read_body,
    resolve_task,
    task_endpoint,
)
from tunegate.api.messages import caller_turns
from tunegate.api.responses import answer_headers, json_response


@task_endpoint
async def run_task(request: Request, incoming: Incoming) -> Response:
    runtime = incoming.services.runtime
    principal = caller(runtime, request)
    raw = await read_body(request, runtime.config.max_body_bytes)
    body: TaskBody = parse_body(TaskBody, raw)
    task = resolve_task(runtime, principal, incoming, request.path_params["task"])
    if isinstance(body.input, str):
        messages: tuple[dict[str, Any], ...] = ({"role": "user", "content": body.input},)
    else:
        messages = caller_turns(body.input, "input")
    cache = cache_mode(request.headers)
    call, admission = make_call(
        request, incoming.request_id, principal, task, messages, {}, body.user, cache
    )
    await admit(incoming.services, admission)
    answer = await cancel_on_disconnect(request, runtime.gateway.answer(call))
    output = {
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
    return json_response(output, headers=answer_headers(answer))
