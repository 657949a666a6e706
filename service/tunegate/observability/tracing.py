"""Traces over OTLP (SPEC §11); the only module that imports `opentelemetry`, and the app
imports it only when an OTLP endpoint is configured, so with tracing off no SDK is loaded.

    POST /v1/chat/completions         server span (ServerSpans): HTTP attributes, a
    │                                 caller's `traceparent` continued, and from the
    │                                 request's Outcome tunegate.task/variant/cache/sample
    ├── cache lookup                  tunegate.cache.lookup
    ├── chat {model}                  client span per upstream attempt (retries, re-asks,
    └── chat {model}                  fallbacks alike): GenAI attributes, error.type
    shadow {variant}, judge point, judge pair   (each its own trace, linked to the request's)
    └── chat {model}

Attributes of the gateway's own live under `tunegate.*`. Prompt and answer text go on a
span only for tasks with `log_payloads: true` (`gen_ai.input.messages`,
`gen_ai.output.messages`). Spans leave in batches; `close` flushes them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tunegate import __version__
from tunegate.config.compiled import Task, Variant
from tunegate.config.settings import TracingSettings
from tunegate.records import Outcome
from tunegate.spans import AttemptSpan, LookupResult, LookupSpan, Message, Purpose

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PROPAGATOR = TraceContextTextMapPropagator()
# In a background call's context: the request it was made for (a judge of a shadow pair
# links to the request, not to the shadow call it starts from).
_REQUEST = context.create_key("tunegate.request")
# Outcomes waiting for their server span's response to start: a bound, for outcomes whose
# response never does (a stream abandoned by its caller and finalized late).
WAITING_MAX = 1024
_CARRIED = (b"traceparent", b"tracestate")


class Tracing:
    """The spans of one gateway process (the `Spans` the flow calls, a recorder of
    Outcomes for the server span). `open` starts the exporter, `close` flushes and stops
    it; until `open`, nothing is traced."""

    def __init__(self, settings: TracingSettings) -> None:
        self._settings = settings
        self._provider: TracerProvider | None = None
        self.tracer: trace.Tracer = trace.NoOpTracer()
        # A request's outcome meets its server span by request id (the `x-request-id` of
        # its response), never through whatever context a late stream finalizer runs in.
        self._serving: dict[str, trace.Span] = {}
        self._waiting: dict[str, dict[str, Any]] = {}

    def open(self, processor: SpanProcessor | None = None) -> None:
        settings = self._settings
        resource = Resource.create(
            {"service.name": settings.service_name, "service.version": __version__}
        )
        self._provider = TracerProvider(sampler=_sampler(settings), resource=resource)
        self._provider.add_span_processor(
            processor
            or BatchSpanProcessor(
                _exporter(settings), schedule_delay_millis=settings.schedule_delay_ms
            )
        )
        self.tracer = self._provider.get_tracer("tunegate", __version__)

    def close(self) -> None:
        """Export what is still queued, then stop."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
        self.tracer = trace.NoOpTracer()

    # -- the Spans the flow calls -------------------------------------------------------

    def attempt(
        self, task: Task, variant: Variant, messages: Sequence[Message], purpose: Purpose
    ) -> AttemptSpan:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": variant.model,
            "tunegate.variant": variant.name,
            "tunegate.attempt": purpose,
        }
        if task.log_payloads:
            attributes["gen_ai.input.messages"] = _input_messages(messages)
        span = self.tracer.start_span(
            f"chat {variant.model}", kind=SpanKind.CLIENT, attributes=attributes
        )
        return _Attempt(span, task.log_payloads)

    def cache_lookup(self) -> LookupSpan:
        return _Lookup(self.tracer.start_span("cache lookup"))

    @contextmanager
    def background(
        self, name: str, task: Task, variant: Variant, request_id: str
    ) -> Iterator[None]:
        request = context.get_value(_REQUEST) or trace.get_current_span().get_span_context()
        assert isinstance(request, trace.SpanContext)
        span = self.tracer.start_span(
            name,
            context=Context(),  # a root: its own trace
            links=[Link(request)] if request.is_valid else None,
            attributes={
                "tunegate.task": task.name,
                "tunegate.variant": variant.name,
                "tunegate.request_id": request_id,
            },
        )
        token = context.attach(
            trace.set_span_in_context(span, context.set_value(_REQUEST, request, Context()))
        )
        try:
            yield
        finally:
            context.detach(token)
            span.end()

    # -- recorders ----------------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        """The request's outcome, onto its server span: now if its response has started,
        else when it starts (`responding`)."""
        # Each attribute costs its encoding (some µs): what is implied is left out.
        attributes: dict[str, Any] = {
            "tunegate.request_id": outcome.request_id,
            "tunegate.task": outcome.task,
            "tunegate.variant": outcome.served or outcome.chosen or "",
            "tunegate.cache": outcome.cache,
            "tunegate.sample": outcome.sample,
            "tunegate.cost_usd": outcome.cost_usd,
        }
        if outcome.status != "ok":
            attributes["tunegate.status"] = outcome.status
        if outcome.chosen and outcome.chosen != outcome.served:
            attributes["tunegate.variant.chosen"] = outcome.chosen
        span = self._serving.get(outcome.request_id)
        if span is not None:
            span.set_attributes(attributes)
            return
        if len(self._waiting) >= WAITING_MAX:
            del self._waiting[next(iter(self._waiting))]
        self._waiting[outcome.request_id] = attributes

    def responding(self, request_id: str, span: trace.Span) -> None:
        """The response to `request_id` started: its outcome (recorded or to come) goes
        onto `span` until `responded`."""
        if not request_id:
            return
        self._serving[request_id] = span
        attributes = self._waiting.pop(request_id, None)
        if attributes is not None:
            span.set_attributes(attributes)

    def responded(self, request_id: str) -> None:
        self._serving.pop(request_id, None)
        self._waiting.pop(request_id, None)

    def log_fields(self) -> Mapping[str, str]:
        """`trace_id` and `span_id` of the span current where a log line is written."""
        ids = trace.get_current_span().get_span_context()
        if not ids.is_valid:
            return {}
        return {"trace_id": format(ids.trace_id, "032x"), "span_id": format(ids.span_id, "016x")}


class _Attempt:
    __slots__ = ("_payloads", "_span", "_started")

    def __init__(self, span: trace.Span, payloads: bool) -> None:
        self._span = span
        self._payloads = payloads
        self._started = time.monotonic()

    def first_token(self) -> None:
        self._span.set_attribute(
            "tunegate.time_to_first_token_s", round(time.monotonic() - self._started, 6)
        )

    def answered(
        self, model: str, finish_reason: str, input_tokens: int, output_tokens: int, text: str
    ) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
            "gen_ai.response.finish_reasons": (finish_reason,),
        }
        if self._payloads:
            attributes["gen_ai.output.messages"] = _output_message(text, finish_reason)
        self._span.set_attributes(attributes)
        self._span.end()

    def failed(self, error_type: str) -> None:
        if not self._span.is_recording():  # ended already (answered as time ran out)
            return
        self._span.set_attribute("error.type", error_type)
        self._span.set_status(Status(StatusCode.ERROR))
        self._span.end()


class _Lookup:
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def found(self, result: LookupResult) -> None:
        if not self._span.is_recording():  # told already
            return
        self._span.set_attribute("tunegate.cache.lookup", result)
        self._span.end()


class ServerSpans:
    """ASGI middleware: one server span per HTTP request but to the paths in `skip`,
    continuing a caller's `traceparent`, named `{method} {route}` once the router has
    matched an endpoint (`routes` maps each endpoint to its path template)."""

    def __init__(
        self, app: ASGIApp, tracing: Tracing, skip: frozenset[str], routes: Mapping[Any, str]
    ) -> None:
        self._app = app
        self._tracing = tracing
        self._skip = skip
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._skip:
            await self._app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _CARRIED
        }
        parent = _PROPAGATOR.extract(carrier)
        span = self._tracing.tracer.start_span(
            scope["method"], context=parent, kind=SpanKind.SERVER, attributes=_http(scope)
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        status = 500  # unless a response starts
        request_id = ""

        async def send_noting_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                request_id = _request_id(message)
                self._tracing.responding(request_id, span)
            await send(message)

        try:
            await self._app(scope, receive, send_noting_status)
        finally:
            context.detach(token)
            self._tracing.responded(request_id)
            _finish(span, scope, status, self._routes.get(scope.get("endpoint")))


def _request_id(start: MutableMapping[str, Any]) -> str:
    for name, value in start.get("headers", ()):
        if name == b"x-request-id":
            return str(value.decode("latin-1"))
    return ""


def _http(scope: Scope) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": scope["method"],
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
    }
    server = scope.get("server")
    if server:
        attributes["server.address"], attributes["server.port"] = server[0], server[1]
    return attributes


def _finish(span: trace.Span, scope: Scope, status: int, route: str | None) -> None:
    if route is not None:
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def _input_messages(messages: Sequence[Message]) -> str:
    """The GenAI conventions' `gen_ai.input.messages`: role and text parts."""
    return orjson.dumps(
        [
            {"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content")}]}
            for m in messages
        ]
    ).decode()


def _output_message(text: str, finish_reason: str) -> str:
    part = {"type": "text", "content": text}
    message = {"role": "assistant", "parts": [part], "finish_reason": finish_reason}
    return orjson.dumps([message]).decode()


def _sampler(settings: TracingSettings) -> sampling.Sampler:
    root: sampling.Sampler = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(settings.ratio),
    }[settings.sampler.removeprefix("parentbased_")]
    return sampling.ParentBased(root) if settings.sampler.startswith("parentbased_") else root


def _exporter(settings: TracingSettings) -> SpanExporter:
    headers = dict(settings.headers)
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=settings.endpoint, headers=headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.endpoint, headers=headers)
