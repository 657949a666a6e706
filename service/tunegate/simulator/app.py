"""The simulated upstream as a raw ASGI app: OpenAI's routes, bodies, errors and streams.

No framework on the request path: one dict lookup routes a request, orjson reads and
writes the bodies, and under the default scenario a request neither sleeps nor hashes
anything (the quality, fault and jitter draws run only for models that have them).
State (received requests, fault scripts, per-model sequence numbers) lives in the app
object the factory returns.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.types import Receive, Scope, Send

from tunegate.simulator import answers
from tunegate.simulator.scenario import (
    ERROR_FAULTS,
    OUTPUT_FAULTS,
    RATE_LIMIT_WITH_WAIT,
    SCRIPT_KINDS,
    ModelBehaviour,
    Scenario,
    is_script_kind,
)
from tunegate.simulator.tuning import TuningService

RECEIVED_LIMIT = 10_000
# What the `huge` fault appends to an answer: an upstream that ignores max_tokens.
HUGE_ANSWER_BYTES = 4 << 20
_HUGE_FILLER = " and so on" * (HUGE_ANSWER_BYTES // len(" and so on"))
SYSTEM_FINGERPRINT = "fp_tunegate_sim"

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class ConnectionDropped(Exception):
    """Raised mid-response by the `drop` fault: the server then closes the connection
    without finishing the answer, as a crashed upstream or a cut network would."""


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One chat request as received (the body is kept as parsed; never the key itself)."""

    body: dict[str, Any]
    has_authorization: bool
    fault: str | None

    def shown(self) -> dict[str, Any]:
        """What `GET /_sim/requests` shows of it: the body's keys, and two of its own."""
        return {**self.body, "has_authorization": self.has_authorization, "fault": self.fault}


def create_simulator_app(scenario: Scenario, seed: int | None = None) -> Simulator:
    """The ASGI app serving `scenario`; `seed` (default: the scenario's) fixes every
    random choice, so the same requests in the same order get the same answers."""
    return Simulator(scenario, scenario.seed if seed is None else seed)


class Simulator:
    """The ASGI app. A request's fault is the `x-sim-fault` header's, else the next one
    scripted for its model, else the model's random draw."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self._scenario = scenario
        self._seed = seed
        self._bearer = f"Bearer {scenario.api_key}".encode() if scenario.api_key else None
        self._received: deque[ReceivedRequest] = deque(maxlen=RECEIVED_LIMIT)
        self._scripts: dict[str, deque[str]] = {}
        self._sequence: dict[str, int] = {}
        self._prefix = secrets.token_hex(6)
        self._prefix_bytes = self._prefix.encode()
        self._count = 0
        self._hide_drops = _HideDrops()
        self._tuning = TuningService(scenario)
        created = int(time.time())
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": created, "owned_by": "system"}
                    for name in scenario.listed_models()
                ],
            }
        )
        self._routes: dict[tuple[str, str], Handler] = {}
        for prefix in ("/v1", ""):
            self._routes[("POST", f"{prefix}/chat/completions")] = self._chat
            self._routes[("GET", f"{prefix}/models")] = self._models
        self._routes[("GET", "/_sim/requests")] = self._list_received
        self._routes[("DELETE", "/_sim/requests")] = self._clear_received
        self._routes[("POST", "/_sim/script")] = self._add_script
        self._routes[("DELETE", "/_sim/script")] = self._clear_scripts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
                return
            if self._tuning.handles(scope["path"]) and await self._tuned(scope, receive, send):
                return
            message = f"Invalid URL ({scope['method']} {scope['path']})"
            await self._send_json(send, 404, _error(message, "invalid_request_error"))
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Under uvicorn a dropped connection would log a traceback; hide just those.
        server_log = logging.getLogger("uvicorn.error")
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                server_log.addFilter(self._hide_drops)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                server_log.removeFilter(self._hide_drops)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _parse_chat(await _read_body(receive))
        if isinstance(request, str):
            await self._send_json(send, 400, _error(request, "invalid_request_error"))
            return
        model: str = request["model"]
        authorization, forced, retry_after = _sim_headers(scope)
        if self._bearer is not None and (
            authorization is None or not hmac.compare_digest(authorization, self._bearer)
        ):
            self._record(request, authorization is not None, None)
            await self._send_json(send, 401, _invalid_key())
            return
        behaviour = self._tuning.behaviour_for(model)
        if behaviour is None:
            self._record(request, authorization is not None, None)
            await self._send_json(send, 404, _model_not_found(model))
            return
        if forced is not None and not is_script_kind(forced):
            message = f"x-sim-fault: unknown fault {forced!r}; use one of {sorted(SCRIPT_KINDS)}"
            await self._send_json(send, 400, _error(message, "invalid_request_error"))
            return
        fault, sequence = self._next_fault(model, behaviour, forced)
        self._record(request, authorization is not None, fault)
        if fault is not None and fault.startswith(RATE_LIMIT_WITH_WAIT):
            fault, retry_after = "429", fault.removeprefix(RATE_LIMIT_WITH_WAIT)
        wait = answers.delay_s(behaviour, self._seed, model, sequence)
        if fault in ERROR_FAULTS:
            if wait:
                await asyncio.sleep(wait)
            retry_after = retry_after or _seconds(behaviour.retry_after_s)
            await self._send_fault(send, fault, model, retry_after)
        elif fault == "hang":
            await self._hang(receive, send)
        else:
            await self._answer(send, request, behaviour, fault, wait)

    async def _tuned(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """The files, fine-tuning and model-deletion routes (`tuning.py`); False when
        none matches."""
        authorization, _, _ = _sim_headers(scope)
        if self._bearer is not None and (
            authorization is None or not hmac.compare_digest(authorization, self._bearer)
        ):
            await self._send_json(send, 401, _invalid_key())
            return True
        content_type = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), ""
        )
        reply = self._tuning.handle(
            scope["method"],
            scope["path"],
            scope["query_string"].decode("latin-1"),
            content_type,
            await _read_body(receive),
        )
        if reply is None:
            return False
        await self._send_json(send, *reply)
        return True

    def _next_fault(
        self, model: str, behaviour: ModelBehaviour, forced: str | None
    ) -> tuple[str | None, int]:
        """This request's fault (the header's, the script's, else the seeded draw) and
        its sequence number among the model's requests."""
        sequence = self._sequence.get(model, 0)
        self._sequence[model] = sequence + 1
        fault = forced
        if fault is None:
            queue = self._scripts.get(model)
            fault = queue.popleft() if queue else None
        if fault is None:
            return answers.draw_fault(behaviour, self._seed, model, sequence), sequence
        return (None if fault == "ok" else fault), sequence

    async def _answer(
        self,
        send: Send,
        request: dict[str, Any],
        behaviour: ModelBehaviour,
        fault: str | None,
        wait: float,
    ) -> None:
        model: str = request["model"]
        messages: list[Any] = request["messages"]
        forced = fault if fault in OUTPUT_FAULTS else None
        content = answers.answer(behaviour, self._seed, model, messages, request, forced).content
        finish_reason = "stop"
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < answers.completion_tokens(content):
            content, finish_reason = content[: limit * 4], "length"
        if fault == "huge":
            content += _HUGE_FILLER
        completion_tokens = answers.completion_tokens(content)
        prompt_tokens = answers.prompt_tokens(messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if request.get("stream") is True:
            options = request.get("stream_options")
            with_usage = isinstance(options, dict) and options.get("include_usage") is True
            stream = _Stream("chatcmpl-" + self._next_id(), model, with_usage)
            pieces = [content] if fault == "huge" else answers.pieces(content)
            events = stream.events(pieces, finish_reason, usage)
            per_chunk_ms = behaviour.slow_chunk_ms if fault == "slow" else behaviour.per_token_ms
            await self._send_stream(send, events, wait, per_chunk_ms / 1000, fault == "drop")
            return
        wait += behaviour.per_token_ms * completion_tokens / 1000
        if fault == "slow":
            wait += behaviour.slow_chunk_ms * len(answers.pieces(content)) / 1000
        if wait:
            await asyncio.sleep(wait)
        body = orjson.dumps(
            {
                "id": "chatcmpl-" + self._next_id(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": content,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
        )
        if fault == "drop":
            await send(self._start(200, b"application/json", len(body)))
            await send(_body(body[: len(body) // 2], more=True))
            raise ConnectionDropped
        await self._send_json(send, 200, body)

    async def _send_stream(
        self, send: Send, events: list[bytes], wait: float, per_chunk_s: float, drop: bool
    ) -> None:
        if wait:
            await asyncio.sleep(wait)
        await send(self._start(200, b"text/event-stream; charset=utf-8", None))
        if drop:
            await send(_body(b"".join(events[:2]), more=True))
            raise ConnectionDropped
        if not per_chunk_s:
            await send(_body(b"".join(events)))
            return
        # The role chunk, then one content piece per wait, then the tail at once.
        await send(_body(events[0], more=True))
        for event in events[1:-1]:
            await asyncio.sleep(per_chunk_s)
            await send(_body(event, more=True))
        await send(_body(events[-1]))

    async def _send_fault(self, send: Send, fault: str, model: str, retry_after: str) -> None:
        headers: list[tuple[bytes, bytes]] = []
        if fault == "429":
            status = 429
            body = _error(
                f"Rate limit reached for {model} on requests per min (RPM): Limit 3500, "
                f"Used 3500, Requested 1. Please try again in {retry_after}s.",
                "requests",
                code="rate_limit_exceeded",
            )
            headers = [
                (b"retry-after", retry_after.encode("latin-1")),
                (b"x-ratelimit-limit-requests", b"3500"),
                (b"x-ratelimit-remaining-requests", b"0"),
            ]
        elif fault == "quota":
            status = 429
            body = _error(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                code="insufficient_quota",
            )
        elif fault == "500":
            status = 500
            body = _error(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
        elif fault == "503":
            status = 503
            body = _error(
                "The engine is currently overloaded, please try again later.", "server_error"
            )
        elif fault == "401":
            status, body = 401, _invalid_key()
        elif fault == "400":
            status = 400
            body = _error(
                "This model's maximum context length is 4097 tokens. However, your messages "
                "resulted in more tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                param="messages",
                code="context_length_exceeded",
            )
        else:
            status, body = 404, _model_not_found(model)
        await self._send_json(send, status, body, headers)

    async def _hang(self, receive: Receive, send: Send) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except asyncio.CancelledError:
            # The server is shutting down: vanish as a dead upstream would, rather than
            # let the server answer 500 and log the cancellation.
            await send(self._start(200, b"application/json", 1))
            raise ConnectionDropped from None

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._send_json(send, 200, self._models_body)

    async def _list_received(self, scope: Scope, receive: Receive, send: Send) -> None:
        wanted = parse_qs(scope["query_string"].decode("latin-1")).get("model")
        shown = [r.shown() for r in self._received if wanted is None or r.body["model"] in wanted]
        await self._send_json(send, 200, orjson.dumps(shown))

    async def _clear_received(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._received.clear()
        await self._send_json(send, 200, b'{"cleared": true}')

    async def _add_script(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = orjson.loads(await _read_body(receive))
        except orjson.JSONDecodeError:
            body = None
        problem = _script_problem(body)
        if problem is not None:
            await self._send_json(send, 400, _error(problem, "invalid_request_error"))
            return
        queue = self._scripts.setdefault(body["model"], deque())
        queue.extend(str(kind) for kind in body["faults"])
        await self._send_json(
            send, 200, orjson.dumps({"model": body["model"], "queued": len(queue)})
        )

    async def _clear_scripts(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scripts.clear()
        self._sequence.clear()
        await self._send_json(send, 200, b'{"cleared": true}')

    def _record(self, request: dict[str, Any], has_authorization: bool, fault: str | None) -> None:
        self._received.append(ReceivedRequest(request, has_authorization, fault))

    def _next_id(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:x}"

    def _start(self, status: int, content_type: bytes, length: int | None) -> dict[str, Any]:
        self._count += 1
        headers = [
            (b"content-type", content_type),
            (b"x-request-id", b"req_%s%x" % (self._prefix_bytes, self._count)),
        ]
        if length is not None:
            headers.append((b"content-length", b"%d" % length))
        return {"type": "http.response.start", "status": status, "headers": headers}

    async def _send_json(
        self,
        send: Send,
        status: int,
        body: bytes,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        start = self._start(status, b"application/json", len(body))
        if extra_headers:
            start["headers"].extend(extra_headers)
        await send(start)
        await send(_body(body))


class _Stream:
    """The `chat.completion.chunk` events of one streamed answer, as OpenAI sends them:
    the role chunk, one chunk per content piece, and last, in one event, the finish chunk,
    the usage chunk (when asked for) and `[DONE]`."""

    def __init__(self, completion_id: str, model: str, with_usage: bool) -> None:
        self._head: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        self._with_usage = with_usage
        if with_usage:
            self._head["usage"] = None

    def events(self, pieces: list[str], finish_reason: str, usage: dict[str, int]) -> list[bytes]:
        first = {"role": "assistant", "content": "", "refusal": None}
        events = [self._choice(first, None)]
        events.extend(self._choice({"content": piece}, None) for piece in pieces)
        tail = [self._choice({}, finish_reason)]
        if self._with_usage:
            tail.append(_event({**self._head, "choices": [], "usage": usage}))
        tail.append(b"data: [DONE]\n\n")
        events.append(b"".join(tail))
        return events

    def _choice(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _event({**self._head, "choices": [choice]})


class _HideDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


def _body(data: bytes, *, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _sim_headers(scope: Scope) -> tuple[bytes | None, str | None, str | None]:
    """The Authorization, x-sim-fault and x-sim-retry-after headers, where sent."""
    authorization = forced = retry_after = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value
        elif name == b"x-sim-fault":
            forced = value.decode("latin-1")
        elif name == b"x-sim-retry-after":
            retry_after = value.decode("latin-1")
    return authorization, forced, retry_after


def _parse_chat(raw: bytes) -> dict[str, Any] | str:
    """The request body, or the message of OpenAI's 400 for it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "We could not parse the JSON body of your request."
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str):
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' is a required property and must be a non-empty array"
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return "each of 'messages' must be an object with a 'role'"
    return body


def _script_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return 'send {"model": "...", "faults": ["500", "ok", ...]}'
    faults = body.get("faults")
    if not isinstance(faults, list):
        return "faults: a list of fault kinds"
    unknown = sorted({str(kind) for kind in faults if not is_script_kind(str(kind))})
    if unknown:
        return f"faults: unknown kinds {unknown}; use some of {sorted(SCRIPT_KINDS)}"
    return None


def _error(message: str, kind: str, *, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _model_not_found(model: str) -> bytes:
    return _error(
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        code="model_not_found",
    )


def _invalid_key() -> bytes:
    # OpenAI quotes part of the key; a simulator has no reason to.
    return _error(
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        code="invalid_api_key",
    )


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)
