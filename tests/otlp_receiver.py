"""OTLP trace receivers for tests: a real HTTP server (or, with `grpc=True`, a gRPC
server) on a free port that decodes each `ExportTraceServiceRequest` (protobuf, with the
OpenTelemetry proto package) into plain `Received` spans, and lets a test wait until the
spans it expects have arrived."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs shipped
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
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
    return spans_of(request)


def spans_of(request: ExportTraceServiceRequest) -> list[Received]:
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
    """Collects the spans POSTed to `{url}/v1/traces`, or with `grpc`, exported to the
    gRPC TraceService at `url`."""

    def __init__(self, *, grpc: bool = False) -> None:
        self._spans: list[Received] = []
        self._arrived = threading.Condition()
        self.requests = 0
        self.headers: list[dict[str, str]] = []  # of each export request (HTTP)
        if grpc:
            self._start_grpc()
        else:
            self._start_http()

    def _start_grpc(self) -> None:
        receiver = self

        class Service(TraceServiceServicer):
            def Export(  # the name the generated service calls
                self, request: ExportTraceServiceRequest, context: Any
            ) -> ExportTraceServiceResponse:
                receiver.add(spans_of(request))
                return ExportTraceServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        add_TraceServiceServicer_to_server(Service(), self._grpc)  # type: ignore[no-untyped-call]  # generated
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        self.url = f"http://127.0.0.1:{port}"

    def _start_http(self) -> None:
        self._grpc = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
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
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            return
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def otlp_receiver(*, grpc: bool = False) -> Iterator[Receiver]:
    receiver = Receiver(grpc=grpc)
    try:
        yield receiver
    finally:
        receiver.stop()
