"""Tracing (SPEC §11, §12): the gateway under real uvicorn, the simulator upstream, and a
real OTLP/HTTP receiver decoding what the gateway exports."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.harness import BASE, TUNED, Gateway, Simulator, gateway_config, running_gateway
from tests.harness import task_config as base_task
from tests.otlp_receiver import Received, Receiver, otlp_receiver
from tests.testkit.redis_server import RedisServer
from tunegate.auth import hash_key
from tunegate.config.settings import (
    SAMPLERS,
    TracingSettings,
    settings_from_env,
    tracing_from_env,
)
from tunegate.errors import ConfigError
from tunegate.observability.tracing import ServerSpans, Tracing
from tunegate.records import rejected

CALLER_KEY = "key-ops-" + secrets.token_hex(8)
UPSTREAM_KEY = "sk-upstream-secret"
COLLECTOR_KEY = "collector-" + secrets.token_hex(8)
HEADERS = {"authorization": f"Bearer {CALLER_KEY}"}
SHADOW = {"shadow": {"variant": "few_shot", "rate": 1.0}}
JUDGE = "gpt-4o-mini"
# The GenAI names the gateway may use: the conventions' own, nothing invented under gen_ai.
GEN_AI = {
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.response.finish_reasons",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
}


def task_config(**fields: Any) -> dict[str, Any]:
    # Retries stay quick: a failed attempt waits its full-jitter backoff before the next.
    task = base_task(**fields)
    task["routing"]["retries"] = 1
    return task


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def gw(
    sim: Simulator,
    server: RedisServer,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    tasks = {
        "triage": task_config(),
        "triage-logged": task_config(log_payloads=True),
        "reply": task_config(output={"type": "text"}),
        "shadowed": task_config(routing=SHADOW),
        "judged": task_config(output={"type": "text"}, routing=SHADOW),
    }
    judge = {"upstream": "sim", "model": JUDGE, "rate": 1.0, "rubric": "Polite.", "pairwise": True}
    tasks["judged"]["judge"] = judge
    keys = [{"name": "ops", "sha256": hash_key(CALLER_KEY), "tenant": "ops", "tasks": ["*"]}]
    config = gateway_config(sim.url, tasks, auth={"keys": keys})
    tracing = TracingSettings(
        endpoint=f"{receiver.url}/v1/traces",
        service_name="tunegate-test",
        schedule_delay_ms=50,
        headers={"x-api-key": COLLECTOR_KEY},
    )
    directory = tmp_path_factory.mktemp("tracing")
    with running_gateway(directory, config, redis_url=server.url, tracing=tracing) as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def clean_script(sim: Simulator) -> Iterator[None]:
    yield
    sim.reset()


def chat(
    gw: Gateway, task: str, text: str, *, stream: bool = False, **headers: str
) -> httpx.Response:
    body = {"model": task, "messages": [{"role": "user", "content": text}], "stream": stream}
    return httpx.post(
        f"{gw.url}/v1/chat/completions", json=body, headers={**HEADERS, **headers}, timeout=30
    )


def ticket() -> str:
    return f"I was charged twice (ticket {uuid.uuid4().hex})"


def trace_of(receiver: Receiver, response: httpx.Response) -> tuple[Received, list[Received]]:
    """The request's server span, once exported, and its children in start order."""
    request_id = response.headers["x-request-id"]
    [server] = receiver.wait_for(
        lambda s: s.kind == "server" and s.attributes.get("tunegate.request_id") == request_id
    )
    children = [s for s in receiver.spans() if s.parent_id == server.span_id]
    return server, sorted(children, key=lambda s: s.start_ns)


def test_a_miss_is_a_server_span_with_a_cache_lookup_and_an_attempt(
    gw: Gateway, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    with caplog.at_level(logging.INFO, logger="tunegate.access"):
        response = chat(gw, "triage", ticket(), traceparent=f"00-{trace_id}-{parent_id}-01")
        assert response.status_code == 200, response.text
        # The server span ends after the access line is written.
        server, children = trace_of(receiver, response)
    assert (server.name, server.trace_id, server.parent_id) == (
        "POST /v1/chat/completions",
        trace_id,
        parent_id,
    )
    assert server.service == "tunegate-test"
    assert (
        server.attributes
        | {
            "http.request.method": "POST",
            "http.route": "/v1/chat/completions",
            "http.response.status_code": 200,
            "tunegate.task": "triage",
            "tunegate.variant": "tuned",
            "tunegate.cache": "miss",
            "tunegate.sample": True,
        }
        == server.attributes
    )
    assert [s.name for s in children] == ["cache lookup", f"chat {TUNED}"]
    lookup, attempt = children
    assert lookup.attributes["tunegate.cache.lookup"] == "miss"
    assert attempt.kind == "client" and not attempt.error
    assert attempt.attributes["gen_ai.operation.name"] == "chat"
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["gen_ai.request.model"] == TUNED
    assert attempt.attributes["gen_ai.response.model"] == TUNED
    assert attempt.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attempt.attributes["gen_ai.usage.input_tokens"] > 0
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0
    assert attempt.attributes["tunegate.attempt"] == "first"
    assert "error.type" not in attempt.attributes
    for span in (server, *children):
        assert {k for k in span.attributes if k.startswith("gen_ai.")} <= GEN_AI
    # The access line carries the request's trace and server span.
    request_id = response.headers["x-request-id"]
    [line] = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    assert (getattr(line, "trace_id", None), getattr(line, "span_id", None)) == (
        trace_id,
        server.span_id,
    )


def test_a_hit_has_a_lookup_and_no_attempt(gw: Gateway, receiver: Receiver) -> None:
    text = ticket()
    assert chat(gw, "triage", text).status_code == 200
    response = chat(gw, "triage", text)
    assert response.headers["x-tunegate-cache"] == "hit"
    server, children = trace_of(receiver, response)
    assert server.attributes["tunegate.cache"] == "hit"
    assert server.attributes["tunegate.sample"] is False
    assert [(s.name, s.attributes["tunegate.cache.lookup"]) for s in children] == [
        ("cache lookup", "hit")
    ]


def test_a_failed_attempt_has_its_error_type_and_the_fallback_its_own_span(
    gw: Gateway, sim: Simulator, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    sim.script(TUNED, "quota")
    with caplog.at_level(logging.INFO, logger="tunegate.gateway"):
        response = chat(gw, "triage", ticket())
    assert response.headers["x-tunegate-fallback"] == "tuned"
    server, children = trace_of(receiver, response)
    failed, fallback = [s for s in children if s.kind == "client"]
    assert (failed.name, failed.attributes["error.type"], failed.error) == (
        f"chat {TUNED}",
        "quota_exhausted",
        True,
    )
    assert "gen_ai.usage.output_tokens" not in failed.attributes
    assert (fallback.name, fallback.attributes["tunegate.attempt"], fallback.error) == (
        f"chat {BASE}",
        "fallback",
        False,
    )
    assert server.attributes["tunegate.variant"] == "few_shot"
    assert server.attributes["tunegate.status"] == "fallback"
    # Log lines written during the request carry its trace and span ids.
    [line] = [r for r in caplog.records if r.getMessage() == "variant failed"]
    assert (getattr(line, "trace_id", None), getattr(line, "span_id", None)) == (
        server.trace_id,
        server.span_id,
    )


def test_a_corrective_reask_is_its_own_attempt_span(
    gw: Gateway, sim: Simulator, receiver: Receiver
) -> None:
    sim.script(TUNED, "wrong_enum", "ok")
    response = chat(gw, "triage", ticket())
    assert response.status_code == 200, response.text
    _, children = trace_of(receiver, response)
    # Both children of the request; the first answered, but not what the schema asks.
    attempts = [
        (s.attributes["tunegate.attempt"], s.attributes.get("error.type"))
        for s in children
        if s.kind == "client"
    ]
    assert attempts == [("first", None), ("reask", None)]


def test_a_retry_and_a_failed_request(gw: Gateway, sim: Simulator, receiver: Receiver) -> None:
    sim.script(TUNED, "500", "401")
    sim.script(BASE, "401")
    response = chat(gw, "triage", ticket())
    assert response.status_code == 502
    server, children = trace_of(receiver, response)
    attempts = [
        (
            s.attributes["gen_ai.request.model"],
            s.attributes["tunegate.attempt"],
            s.attributes["error.type"],
        )
        for s in children
        if s.kind == "client"
    ]
    assert attempts == [
        (TUNED, "first", "server_error"),
        (TUNED, "retry", "auth"),
        (BASE, "fallback", "auth"),
    ]
    assert server.error and server.attributes["error.type"] == "502"
    assert server.attributes["http.response.status_code"] == 502


def test_a_stream_attempt_ends_with_the_stream_and_has_its_first_token_time(
    gw: Gateway, receiver: Receiver
) -> None:
    response = chat(gw, "reply", ticket(), stream=True)
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    server, children = trace_of(receiver, response)
    [attempt] = [s for s in children if s.kind == "client"]
    assert attempt.attributes["tunegate.time_to_first_token_s"] > 0
    assert attempt.attributes["tunegate.time_to_first_token_s"] * 1e9 <= (
        attempt.end_ns - attempt.start_ns
    )
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0
    assert attempt.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attempt.end_ns <= server.end_ns


def test_a_shadow_call_is_its_own_trace_linked_to_the_request(
    gw: Gateway, receiver: Receiver
) -> None:
    response = chat(gw, "shadowed", ticket())
    server, _ = trace_of(receiver, response)
    request_id = response.headers["x-request-id"]
    [shadow] = receiver.wait_for(
        lambda s: s.name == "shadow few_shot" and s.attributes["tunegate.request_id"] == request_id
    )
    assert shadow.parent_id == "" and shadow.trace_id != server.trace_id
    assert shadow.links == ((server.trace_id, server.span_id),)
    [attempt] = [s for s in receiver.spans() if s.parent_id == shadow.span_id]
    assert (attempt.name, attempt.attributes["tunegate.attempt"]) == (f"chat {BASE}", "shadow")


def test_judge_calls_are_their_own_traces_linked_to_the_request(
    gw: Gateway, receiver: Receiver
) -> None:
    response = chat(gw, "judged", ticket())
    server, _ = trace_of(receiver, response)
    request_id = response.headers["x-request-id"]
    for name in ("judge point", "judge pair"):

        def wanted(span: Received, name: str = name) -> bool:
            return span.name == name and span.attributes["tunegate.request_id"] == request_id

        [judge] = receiver.wait_for(wanted)
        assert judge.parent_id == "" and judge.trace_id != server.trace_id
        assert judge.links == ((server.trace_id, server.span_id),)  # the pair's too
        attempts = [s for s in receiver.spans() if s.parent_id == judge.span_id]
        assert {(s.name, s.attributes["tunegate.attempt"]) for s in attempts} == {
            (f"chat {JUDGE}", "judge")
        }


def test_no_prompt_answer_or_secret_in_any_attribute_unless_the_task_logs_payloads(
    gw: Gateway, receiver: Receiver
) -> None:
    hidden, logged = ticket(), ticket()
    quiet = chat(gw, "triage", hidden)
    loud = chat(gw, "triage-logged", logged)
    trace_of(receiver, quiet)
    logged_request, children = trace_of(receiver, loud)
    [attempt] = [s for s in children if s.kind == "client"]
    sent = json.loads(attempt.attributes["gen_ai.input.messages"])
    assert {"role": "user", "parts": [{"type": "text", "content": logged}]} in sent
    said = json.loads(attempt.attributes["gen_ai.output.messages"])
    answer = loud.json()["choices"][0]["message"]["content"]
    assert json.loads(said[0]["parts"][0]["content"]) == json.loads(answer)
    for span in receiver.spans():
        for value in map(str, span.attributes.values()):
            for secret in (hidden, CALLER_KEY, UPSTREAM_KEY, COLLECTOR_KEY):
                assert secret not in value, (span.name, value)
            if span.trace_id != logged_request.trace_id:
                assert "billing" not in value, (span.name, value)  # the answer


# -- on only when configured -------------------------------------------------------------

PROBE = """
import sys, httpx
from pathlib import Path
from tests.harness import gateway_config, running_gateway, task_config
from tunegate.config.settings import settings_from_env

tracing = settings_from_env().tracing
config = gateway_config(sys.argv[1], {"triage": task_config()})
with running_gateway(Path(sys.argv[2]), config, tracing=tracing) as gw:
    body = {"model": "triage", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 200
# redis-py imports parts of OpenTelemetry on its own (its API, the metrics SDK);
# the trace SDK, the exporters and the gateway's tracing are what tracing would load.
TRACING = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "tunegate.observability.tracing")
print(sorted({m for m in sys.modules if m.startswith(TRACING)}))
"""


@pytest.mark.parametrize("traced", [False, True])
def test_without_an_endpoint_no_trace_sdk_is_loaded(
    sim: Simulator, receiver: Receiver, tmp_path: Path, traced: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if traced:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, sim.url, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    loaded = probe.stdout.strip().splitlines()[-1]
    assert (loaded == "[]") is not traced, loaded


def test_an_outcome_meets_its_own_server_span_by_request_id() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingSettings(endpoint="http://127.0.0.1:9/v1/traces"))
    tracing.open(SimpleSpanProcessor(exporter))
    first, second = tracing.tracer.start_span("first"), tracing.tracer.start_span("second")
    tracing.record(rejected("r1", "triage", 0.1))  # before its response starts
    tracing.responding("r1", first)
    tracing.responding("r2", second)
    with trace.use_span(second):  # a stream finalized late, in another request's context
        tracing.record(rejected("r0", "reply", 0.1))
    tracing.record(rejected("r2", "shadowed", 0.1))
    for request_id, span in (("r1", first), ("r2", second)):
        tracing.responded(request_id)
        span.end()
    tracing.record(rejected("r1", "triage", 0.1))  # after the span ended: goes nowhere
    tracing.close()
    ended = {span.name: dict(span.attributes or {}) for span in exporter.get_finished_spans()}
    assert ended["first"]["tunegate.request_id"] == "r1"
    assert (ended["second"]["tunegate.request_id"], ended["second"]["tunegate.task"]) == (
        "r2",
        "shadowed",
    )


def test_the_collector_gets_its_headers(gw: Gateway, receiver: Receiver) -> None:
    trace_of(receiver, chat(gw, "triage", ticket()))
    # (The subprocess probes export here too, configured by variables alone, without a key.)
    assert COLLECTOR_KEY in {h.get("x-api-key") for h in receiver.headers}
    assert {h.get("content-type") for h in receiver.headers} == {"application/x-protobuf"}


@pytest.mark.parametrize(
    ("sampler", "ratio", "exported"),
    [
        ("always_on", 1.0, ["root", "child of unsampled"]),
        ("always_off", 1.0, []),
        ("traceidratio", 0.0, []),
        ("parentbased_always_on", 1.0, ["root"]),
        ("parentbased_always_off", 1.0, []),
        ("parentbased_traceidratio", 0.0, []),
    ],
)
def test_the_sampler(sampler: str, ratio: float, exported: list[str]) -> None:
    exporter = InMemorySpanExporter()
    settings = TracingSettings(endpoint="http://127.0.0.1:9", sampler=sampler, ratio=ratio)
    tracing = Tracing(settings)
    tracing.open(SimpleSpanProcessor(exporter))
    tracing.tracer.start_span("root").end()
    unsampled = trace.SpanContext(
        int(secrets.token_hex(16), 16), int(secrets.token_hex(8), 16), is_remote=True
    )
    parent = trace.set_span_in_context(trace.NonRecordingSpan(unsampled))
    tracing.tracer.start_span("child of unsampled", context=parent).end()
    tracing.close()
    assert [span.name for span in exporter.get_finished_spans()] == exported


def test_grpc_export_when_the_protocol_says_grpc(tmp_path: Path) -> None:
    with otlp_receiver(grpc=True) as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        settings = tracing_from_env(env)
        assert settings is not None
        tracing = Tracing(settings)
        tracing.open()
        tracing.cache_lookup().found("hit")
        tracing.close()  # flushes
        [span] = receiver.wait_for(lambda s: s.name == "cache lookup")
        assert span.attributes == {"tunegate.cache.lookup": "hit"}


# -- the request's spans without the tracer's generic path --------------------------------

TASK = SimpleNamespace(name="triage", log_payloads=False)
VARIANT = SimpleNamespace(name="tuned", model=TUNED)
CHAT_ROUTE = "/v1/chat/completions"


def _endpoint() -> None:
    """Stands for the chat route's endpoint (the router's `scope["endpoint"]`)."""


def serve_one(tracing: Tracing, traceparent: str | None, status: int = 200) -> None:
    """One request through ServerSpans, its endpoint a miss: a cache lookup, a failed
    attempt and one that answers, the outcome recorded after the response started."""

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        tracing.cache_lookup().found("miss")
        failed = tracing.attempt(TASK, VARIANT, (), "first")  # type: ignore[arg-type]
        failed.failed("server_error")
        failed.failed("timeout")  # a second end changes nothing
        attempt = tracing.attempt(TASK, VARIANT, (), "retry")  # type: ignore[arg-type]
        attempt.first_token()
        attempt.answered(TUNED, "stop", 42, 12, "")
        headers = [(b"x-request-id", b"r-1")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        tracing.record(rejected("r-1", "triage", 0.1))
        await send({"type": "http.response.body", "body": b""})

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request"}

    headers = [(b"host", b"gw")]
    if traceparent is not None:
        headers.append((b"traceparent", traceparent.encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": CHAT_ROUTE,
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
        "headers": headers,
        "endpoint": _endpoint,
    }
    middleware = ServerSpans(app, tracing, frozenset(), {_endpoint: CHAT_ROUTE})
    asyncio.run(middleware(scope, receive, send))


def exported(sampler: str, traceparent: str | None, *, direct: bool) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingSettings(endpoint="http://127.0.0.1:9", sampler=sampler, ratio=0.5))
    tracing.open(SimpleSpanProcessor(exporter))
    assert tracing._direct is not None  # the request's spans skip the tracer
    if not direct:
        tracing._direct = None  # every span from the tracer
    serve_one(tracing, traceparent)
    tracing.close()
    return list(exporter.get_finished_spans())


def comparable(spans: list[ReadableSpan]) -> list[Any]:
    """What the collector is sent, but ids and times: OTLP bytes with those zeroed, plus
    who is whose parent and which ids came from the caller."""
    own = {span.context.span_id: index for index, span in enumerate(spans) if span.context}
    shape: list[Any] = []
    for span in spans:
        assert span.context is not None and span.start_time and span.end_time
        assert span.start_time <= span.end_time
        parent = span.parent
        shape.append(
            (
                own.get(parent.span_id, parent.span_id) if parent else None,
                span.context.trace_id == (parent.trace_id if parent else span.context.trace_id),
                int(span.context.trace_flags),
                span.context.trace_state.to_header(),
                span.dropped_attributes,
            )
        )
    request = encode_spans(spans)
    for resource_spans in request.resource_spans:
        resource = resource_spans.resource.attributes
        shape.append({a.key for a in resource} >= {"service.name", "service.instance.id"})
        resource_spans.resource.Clear()  # service.instance.id: the provider's own
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.trace_id = span.span_id = span.parent_span_id = b""
                span.start_time_unix_nano = span.end_time_unix_nano = 0
                for pair in span.attributes:
                    if pair.key == "tunegate.time_to_first_token_s":
                        pair.value.double_value = 0.0
    return [shape, request.SerializeToString(deterministic=True)]


# A trace id under the ratio's bound and one over it, from the caller; or our own random
# one, left out under a ratio (the two paths draw different ids, so decide differently).
_TRACEPARENTS = (
    None,
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03",
)


@pytest.mark.parametrize(
    ("sampler", "traceparent"),
    [
        (sampler, traceparent)
        for sampler in SAMPLERS
        for traceparent in _TRACEPARENTS
        if traceparent is not None or not sampler.endswith("traceidratio")
    ],
)
def test_the_request_spans_are_what_the_tracer_would_make(
    sampler: str, traceparent: str | None
) -> None:
    direct = exported(sampler, traceparent, direct=True)
    tracer = exported(sampler, traceparent, direct=False)
    assert comparable(direct) == comparable(tracer)
    if direct:
        assert [s.name for s in direct] == [
            "cache lookup",
            f"chat {TUNED}",
            f"chat {TUNED}",
            f"POST {CHAT_ROUTE}",
        ]


def test_the_request_spans_keep_the_span_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "6")
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "5")
    direct = exported("parentbased_always_on", None, direct=True)
    tracer = exported("parentbased_always_on", None, direct=False)
    assert comparable(direct) == comparable(tracer)
    attempt = direct[2]
    assert attempt.attributes is not None and len(attempt.attributes) == 6
    assert attempt.dropped_attributes > 0
    assert attempt.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attempt.attributes["gen_ai.response.model"] == TUNED[:5]


def test_a_span_never_ended_is_not_kept() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingSettings(endpoint="http://127.0.0.1:9"))
    tracing.open(SimpleSpanProcessor(exporter))
    with trace.use_span(tracing.tracer.start_span("request"), end_on_exit=True):
        for _ in range(100):
            tracing.cache_lookup()
            tracing.attempt(TASK, VARIANT, (), "first")  # type: ignore[arg-type]
        gc.collect()
        ours = tracing._direct
        assert ours is not None
        kept = [
            o
            for o in gc.get_objects()
            if isinstance(o, trace.Span) and getattr(o, "_direct", 0) is ours
        ]
        assert kept == []
    tracing.close()
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]


# -- the settings ------------------------------------------------------------------------


def test_tracing_is_off_without_an_endpoint() -> None:
    assert tracing_from_env({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}) is None
    assert settings_from_env({}).tracing is None
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert tracing_from_env(disabled) is None


@pytest.mark.parametrize(
    ("env", "endpoint", "protocol"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"},
            "http://c:4318/v1/traces",
            "http/protobuf",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/t"},
            "http://c:4318/t",
            "http/protobuf",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "http://c:4317",
            "grpc",
        ),
    ],
)
def test_the_endpoint_and_protocol(env: Mapping[str, str], endpoint: str, protocol: str) -> None:
    tracing = tracing_from_env(env)
    assert tracing is not None
    assert (tracing.endpoint, tracing.protocol) == (endpoint, protocol)


def test_service_name_sampler_and_headers() -> None:
    tracing = tracing_from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_SERVICE_NAME": "gw-eu",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=s3cr%3Dt, team = ops",
        }
    )
    assert tracing is not None
    assert (tracing.service_name, tracing.sampler, tracing.ratio) == (
        "gw-eu",
        "parentbased_traceidratio",
        0.25,
    )
    assert tracing.headers == {"x-api-key": "s3cr=t", "team": "ops"}
    assert "s3cr" not in repr(tracing)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ("OTEL_TRACES_SAMPLER_ARG", "half"),
        ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "token-without-a-name"),
    ],
)
def test_a_value_the_exporter_cannot_honour_is_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", name: value})
    assert name in str(refused.value)
    if name.endswith("HEADERS"):
        assert value not in str(refused.value)
