"""`POST /v1/chat/completions`: the OpenAI-compatible endpoint, where `model` names a task.

Bodies follow OpenAI's `CreateChatCompletionResponse` and
`CreateChatCompletionStreamResponse`, including the fields it marks required but
nullable (`logprobs`, `message.refusal`), which strict clients depend on; optional fields
that are unknown (`system_fingerprint` on a cache hit) are left out, never `null`.

A stream ends with a usage chunk (empty `choices`, the usage and `cost_usd`) only when
the caller asks with `stream_options.include_usage`, as OpenAI does (SPEC §7).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tunegate.api.access import report_cost
from tunegate.api.bodies import ChatBody, cache_mode, chat_params, parse_body
from tunegate.api.errors import error_body
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
from tunegate.api.responses import answer_headers
from tunegate.errors import GatewayError
from tunegate.flow.upstream import Delta
from tunegate.pricing import format_usd
from tunegate.records import Answer

# A completion's `id` is its request id behind OpenAI's prefix (feedback takes either).
COMPLETION_ID_PREFIX = "chatcmpl-"


@task_endpoint
async def chat_completions(request: Request, incoming: Incoming) -> Response:
    runtime = incoming.services.runtime
    principal = caller(runtime, request)
    raw = await read_body(request, runtime.config.max_body_bytes)
    body: ChatBody = parse_body(ChatBody, raw)
    task = resolve_task(runtime, principal, incoming, body.model)
    call, admission = make_call(
        request,
        incoming.request_id,
        principal,
        task,
        caller_turns(body.messages),
        chat_params(body, task),
        body.user,
        cache_mode(request.headers),
        stream=bool(body.stream),
    )
    await admit(incoming.services, admission)
    gateway = runtime.gateway
    usage = body.stream_options is not None and body.stream_options.include_usage is True
    if body.stream and not task.buffers_streams:
        head, deltas = await cancel_on_disconnect(request, gateway.stream(call))
        return _sse(head, _text_events(head, deltas, usage, report_cost(request)))
    answer = await cancel_on_disconnect(request, gateway.answer(call))
    if body.stream:
        # JSON tasks and tasks with checks stream only what passed: the whole answer.
        return _sse(answer, _replay_events(answer, usage))
    return Response(
        orjson.dumps(completion_body(answer)),
        headers=answer_headers(answer),
        media_type="application/json",
    )


def completion_body(answer: Answer) -> dict[str, Any]:
    return {
        **_head(answer, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.content, "refusal": None},
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": _usage(answer.prompt_tokens, answer.completion_tokens),
    }


def _head(answer: Answer, kind: str) -> dict[str, Any]:
    head: dict[str, Any] = {
        "id": f"{COMPLETION_ID_PREFIX}{answer.request_id}",
        "object": kind,
        "created": answer.created,
        "model": answer.variant.model,
    }
    if answer.system_fingerprint is not None:
        head["system_fingerprint"] = answer.system_fingerprint
    return head


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _sse(head: Answer, events: AsyncIterator[bytes]) -> StreamingResponse:
    headers = answer_headers(head)
    headers["cache-control"] = "no-cache"
    return StreamingResponse(events, headers=headers, media_type="text/event-stream")


class _Chunks:
    """Frames `chat.completion.chunk` events for one answer."""

    def __init__(self, head: Answer) -> None:
        self._prefix = _head(head, "chat.completion.chunk")

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._event({**self._prefix, "choices": [choice]})

    def usage(self, prompt_tokens: int, completion_tokens: int, cost_usd: str) -> bytes:
        usage = _usage(prompt_tokens, completion_tokens)
        return self._event({**self._prefix, "choices": [], "usage": usage, "cost_usd": cost_usd})

    @staticmethod
    def _event(data: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(data) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


async def _replay_events(answer: Answer, usage: bool) -> AsyncIterator[bytes]:
    chunks = _Chunks(answer)
    yield chunks.delta({"role": "assistant", "content": "", "refusal": None})
    yield chunks.delta({"content": answer.content})
    yield chunks.delta({}, answer.finish_reason)
    if usage:
        cost = format_usd(answer.cost_usd)
        yield chunks.usage(answer.prompt_tokens, answer.completion_tokens, cost)
    yield _DONE


async def _text_events(
    head: Answer, deltas: AsyncIterator[Delta], usage: bool, report: Callable[[float], None]
) -> AsyncIterator[bytes]:
    chunks = _Chunks(head)
    yield chunks.delta({"role": "assistant", "content": "", "refusal": None})
    try:
        async for delta in deltas:
            if delta.finish_reason is None:
                yield chunks.delta({"content": delta.content})
                continue
            yield chunks.delta({}, delta.finish_reason)
            report(delta.cost_usd)
            if not usage:
                continue
            yield chunks.usage(
                delta.prompt_tokens, delta.completion_tokens, format_usd(delta.cost_usd)
            )
    except GatewayError as exc:
        # Headers are gone: a failure after the first chunk can only be told in-band,
        # as OpenAI does, and the SDK raises it as an APIError.
        yield b"data: " + error_body(exc) + b"\n\n"
        return
    yield _DONE
