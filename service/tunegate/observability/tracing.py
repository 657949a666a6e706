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

A request's own spans (server, cache lookup, attempts) skip the tracer's generic path:
`_Direct` starts them as `Tracer.start_span` would and hands them, ended, to the span
processor as the SDK's `ReadableSpan` (span limits and sampler decisions alike; a test
compares what the collector is sent both ways). Background spans use the tracer.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from opentelemetry import context, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    Tracer,
    TracerProvider,
    sampling,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util import types

from tunegate import __version__
from tunegate.config.compiled import Task, Variant
from tunegate.config.settings import TracingSettings
from tunegate.records import Outcome
from tunegate.spans import (
    NO_SPAN,
    AttemptSpan,
    LookupResult,
    LookupSpan,
    Message,
    NoSpan,
    Purpose,
)

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
        self._direct: _Direct | None = None
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
        processor = processor or BatchSpanProcessor(
            _exporter(settings), schedule_delay_millis=settings.schedule_delay_ms
        )
        self._provider.add_span_processor(processor)
        self.tracer = self._provider.get_tracer("tunegate", __version__)
        self._direct = _Direct.of(self._provider, self.tracer, settings.sampler, processor)

    def close(self) -> None:
        """Export what is still queued, then stop."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
        self.tracer = trace.NoOpTracer()
        self._direct = None

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
        name = f"chat {variant.model}"
        span = self._child(name, SpanKind.CLIENT, attributes)
        if span is None:
            span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        elif isinstance(span, NoSpan):
            return span
        return _Attempt(span, task.log_payloads)

    def cache_lookup(self) -> LookupSpan:
        span = self._child("cache lookup", SpanKind.INTERNAL, {})
        if span is None:
            span = self.tracer.start_span("cache lookup")
        elif isinstance(span, NoSpan):
            return span
        return _Lookup(span)

    def _child(
        self, name: str, kind: SpanKind, attributes: dict[str, Any]
    ) -> trace.Span | NoSpan | None:
        """A span of the current span's the way the tracer would make it, when the sampler's
        decision follows from the parent's: a `_DirectSpan`, or `NO_SPAN` (not sampled);
        None when it is the tracer's to make."""
        direct = self._direct
        if direct is None:
            return None
        parent = trace.get_current_span().get_span_context()
        if not parent.is_valid:
            return None
        sampled = direct.follows[1 if parent.trace_flags & _SAMPLED else 0]
        if sampled:
            return direct.span(name, kind, parent, attributes)
        return None if sampled is None else NO_SPAN

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
        self._span.set_status(_ERROR)
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


_SAMPLED = TraceFlags.SAMPLED
_RANDOM = TraceFlags.RANDOM_TRACE_ID
_RECORD_AND_SAMPLE = sampling.Decision.RECORD_AND_SAMPLE
_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)
_SCALARS = frozenset({str, int, float, bool})
# Processors whose on_start and _on_ending do nothing: the spans `_Direct` makes skip them.
_ENDING_ONLY = (BatchSpanProcessor, SimpleSpanProcessor)
_METRICS = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"


class _Direct:
    """The SDK's span life cycle for the spans of a request, without its generic path
    (a span object built for any use, its attributes cleaned on every call, a lock per
    span): `root` and `span` start a `_DirectSpan` the way `Tracer.start_span` would
    (same ids, sampler decision, trace flags and state), and `emit` hands the ended span
    to the processor as the SDK's `ReadableSpan`, its attributes held to the provider's
    `SpanLimits` (`BoundedAttributes`, when they would drop or shorten anything). Only
    with one of the SDK's exporting processors (they do nothing on a span's start) and
    the SDK's own metrics off; otherwise the tracer makes every span."""

    __slots__ = (
        "_info",
        "_max_count",
        "_max_length",
        "_new_span_id",
        "_new_trace_id",
        "_random_ids",
        "_resource",
        "_sampler",
        "_scope",
        "follows",
        "limits",
        "on_end",
    )

    def __init__(
        self, provider: TracerProvider, tracer: Tracer, sampler: str, processor: SpanProcessor
    ) -> None:
        self._sampler = provider.sampler
        self._new_span_id = provider.id_generator.generate_span_id
        self._new_trace_id = provider.id_generator.generate_trace_id
        self._random_ids = provider.id_generator.is_trace_id_random()
        self._resource = tracer.resource
        self._info = tracer.instrumentation_info
        self._scope = tracer._instrumentation_scope
        self.limits = tracer._span_limits
        self._max_count = self.limits.max_span_attributes
        self._max_length = self.limits.max_span_attribute_length
        self.on_end = processor.on_end
        # Whether a child span is sampled, by whether its parent is (our samplers decide
        # that from the parent alone but for `traceidratio`, left to the SDK).
        self.follows: tuple[bool | None, bool | None] = {
            "always_on": (True, True),
            "always_off": (False, False),
        }.get(sampler, (False, True) if sampler.startswith("parentbased_") else (None, None))

    @classmethod
    def of(
        cls, provider: TracerProvider, tracer: trace.Tracer, sampler: str, processor: SpanProcessor
    ) -> _Direct | None:
        if not isinstance(tracer, Tracer) or not tracer._is_enabled():
            return None
        if type(processor) not in _ENDING_ONLY:
            return None
        if os.environ.get(_METRICS, "").strip().lower() == "true":
            return None
        return cls(provider, tracer, sampler, processor)

    def root(
        self, name: str, parent: Context, kind: SpanKind, attributes: dict[str, Any]
    ) -> trace.Span:
        """A span in `parent` (a caller's context, or none), as `Tracer.start_span`."""
        remote = trace.get_current_span(parent).get_span_context()
        if remote.is_valid:
            parent_context: SpanContext | None = remote
            trace_id = remote.trace_id
            random = remote.trace_flags & _RANDOM
        else:
            parent_context = None
            trace_id = self._new_trace_id()
            random = _RANDOM if self._random_ids else 0
        result = self._sampler.should_sample(parent, trace_id, name, kind, attributes)
        decision = result.decision
        flags = TraceFlags((_SAMPLED if decision is _RECORD_AND_SAMPLE else 0) | random)
        ids = SpanContext(
            trace_id,
            self._new_span_id(),
            is_remote=False,
            trace_flags=flags,
            trace_state=result.trace_state,
        )
        if decision is sampling.Decision.DROP:
            return trace.NonRecordingSpan(ids)
        return _DirectSpan(self, name, kind, ids, parent_context, dict(result.attributes or {}))

    def span(
        self, name: str, kind: SpanKind, parent: SpanContext, attributes: dict[str, Any]
    ) -> _DirectSpan:
        """A sampled child of `parent`, a span of this process."""
        flags = TraceFlags(_SAMPLED | (parent.trace_flags & _RANDOM))
        ids = SpanContext(
            parent.trace_id,
            self._new_span_id(),
            is_remote=False,
            trace_flags=flags,
            trace_state=parent.trace_state,
        )
        return _DirectSpan(self, name, kind, ids, parent, attributes)

    def emit(self, span: _DirectSpan) -> None:
        self.on_end(
            ReadableSpan(
                name=span._name,
                context=span._context,
                parent=span._parent,
                resource=self._resource,
                attributes=self._bounded(span._attributes),
                events=span._events,
                links=span._links,
                kind=span._kind,
                instrumentation_info=self._info,
                status=span._status,
                start_time=span._start,
                end_time=span._end,
                instrumentation_scope=self._scope,
            )
        )

    def _bounded(self, attributes: dict[str, Any]) -> types.Attributes:
        """`attributes` as the SDK's span would hold them: as they are when they are of
        the plain types and within the limits, else cleaned and bounded the SDK's way."""
        count, length = self._max_count, self._max_length
        if count is None or len(attributes) <= count:
            for key, value in attributes.items():
                kind = type(value)
                if kind is str:
                    if length is not None and len(value) > length:
                        break
                elif kind is tuple:
                    if not all(type(v) in _SCALARS for v in value) or (
                        length is not None
                        and any(type(v) is str and len(v) > length for v in value)
                    ):
                        break
                elif kind not in _SCALARS:
                    break
                if not key or type(key) is not str:
                    break
            else:
                return attributes
        return BoundedAttributes(count, attributes, immutable=True, max_value_len=length)


class _DirectSpan(trace.Span):
    """A recording span made by `_Direct`: what the SDK's span records, in a dict until
    it ends. Used from the event loop's thread only (the SDK's span takes a lock)."""

    __slots__ = (
        "_attributes",
        "_context",
        "_direct",
        "_end",
        "_events",
        "_kind",
        "_links",
        "_name",
        "_parent",
        "_start",
        "_status",
    )

    def __init__(
        self,
        direct: _Direct,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
    ) -> None:
        self._direct = direct
        self._name = name
        self._kind = kind
        self._context = context
        self._parent = parent
        self._attributes = attributes
        self._events: Sequence[Event] = ()
        self._links: Sequence[Link] = ()
        self._status = _UNSET
        self._end: int | None = None
        self._start = time.time_ns()

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end is None

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end is None:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._end is None:
            self._attributes.update(attributes)

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end is not None:
            return
        limits = self._direct.limits
        if not isinstance(self._events, BoundedList):
            self._events = BoundedList(limits.max_events)
        bounded = _limited(limits.max_event_attributes, attributes, limits)
        self._events.append(Event(name, bounded, timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end is not None or not (context.is_valid or attributes or context.trace_state):
            return
        limits = self._direct.limits
        if not isinstance(self._links, BoundedList):
            self._links = BoundedList(limits.max_links)
        bounded = _limited(limits.max_link_attributes, attributes, limits)
        self._links.append(Link(context, bounded))

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        recorded: dict[str, types.AnyValue] = {
            "exception.type": f"{module}.{kind.__qualname__}"
            if module and module != "builtins"
            else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time if end_time is not None else time.time_ns()
        self._direct.emit(self)


def _limited(
    count: int | None, attributes: types.Attributes, limits: SpanLimits
) -> BoundedAttributes:
    """An event's or a link's attributes, held to `count` and the value length limit, as
    the SDK's span holds them."""
    return BoundedAttributes(
        count, attributes, immutable=True, max_value_len=limits.max_attribute_length
    )


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
        direct = self._tracing._direct
        if direct is not None:
            span = direct.root(scope["method"], parent, SpanKind.SERVER, _http(scope))
        else:
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
    if not span.is_recording():  # not sampled
        return
    attributes: dict[str, Any] = {"http.response.status_code": status}
    if route is not None:
        span.update_name(f"{scope['method']} {route}")
        attributes["http.route"] = route
    if status >= 500:
        attributes["error.type"] = str(status)
        span.set_status(_ERROR)
    span.set_attributes(attributes)
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
