"""An OTLP/HTTP trace receiver for tests: a real HTTP server on a free port that decodes
each `ExportTraceServiceRequest` (protobuf, with the OpenTelemetry proto package) into
plain `Received` spans, and lets a test wait until the spans it expects have arrived."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = {
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
}


@dataclass(frozen=True)
class Received:
    """One exported span; ids in lower-case hex, `parent_id` "" for a root."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]
    error: bool
    service: str
    start_ns: int
    end_ns: int


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


def _attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(body: bytes) -> list[Received]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    Received(
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes),
                        links=tuple((li.trace_id.hex(), li.span_id.hex()) for li in span.links),
                        error=span.status.code == Status.STATUS_CODE_ERROR,
                        service=service,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                )
    return spans


class Receiver:
    """Collects the spans POSTed to `{url}/v1/traces`."""

    def __init__(self) -> None:
        self._spans: list[Received] = []
        self._arrived = threading.Condition()
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                spans = decode(body) if self.path == "/v1/traces" else []
                receiver.add(spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test reports what matters

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, spans: list[Received]) -> None:
        with self._arrived:
            self.requests += 1
            self._spans.extend(spans)
            self._arrived.notify_all()

    def spans(self) -> list[Received]:
        with self._arrived:
            return list(self._spans)

    def wait_for(
        self, wanted: Callable[[Received], bool], count: int = 1, timeout_s: float = 15.0
    ) -> list[Received]:
        """The received spans `wanted` accepts, once there are `count` of them; fails
        after `timeout_s` with what did arrive."""
        with self._arrived:
            found = self._arrived.wait_for(
                lambda: len([s for s in self._spans if wanted(s)]) >= count, timeout_s
            )
            if not found:
                names = sorted({s.name for s in self._spans})
                raise AssertionError(f"expected {count} span(s); received: {names}")
            return [s for s in self._spans if wanted(s)]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.stop()
