"""Calls to OpenAI-compatible model endpoints; the only module that imports `openai`.

Chat completions, plain and streamed, go over HTTP/1.1 directly (`wire.py`, one
connection pool per configured upstream): the body as built here, the answer read raw
and parsed with orjson, since the gateway needs four fields, not the SDK's models, and
the SDK's own per-call work cost as much CPU as the rest of a cache miss. There are no
retries below the gateway's one retry loop (but for the one resend of a request a server
closed a pooled connection on before answering it: `http1.py`). Every failure is
translated here into the `UpstreamError` tree exactly as the SDK's exceptions were
(`_status_error`); upstream messages are never passed on, since some echo part of the
key. The SDK serves everything else: fine-tuning (`TuningClient`) and the callers'
clients of the demo and benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from tunegate.config.compiled import Upstream, Variant
from tunegate.errors import (
    TuningError,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamInputRefused,
    UpstreamModelNotFound,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamServerError,
)
from tunegate.flow.retry import parse_retry_after
from tunegate.flow.wire import ChatEndpoint, UpstreamStatus, read_at_most, sse_data

if TYPE_CHECKING:
    import openai

Message = Mapping[str, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Completion:
    """What one upstream answer contributes to the gateway's answer."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    system_fingerprint: str | None = None
    model: str | None = None  # as the upstream names it


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of a streamed answer: text, or (last) the finish reason and usage. The
    gateway fills in `cost_usd` on the last one."""

    content: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    system_fingerprint: str | None = None
    model: str | None = None  # on the last one: the model as the upstream names it


class Upstreams:
    """The clients of every configured upstream, opened together and closed together."""

    def __init__(self, upstreams: Mapping[str, Upstream], environ: Mapping[str, str]) -> None:
        self._clients = {
            name: _endpoint_for(upstream, environ) for name, upstream in upstreams.items()
        }
        self._upstreams = dict(upstreams)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    def timeout_for(self, variant: Variant) -> float:
        return self._upstreams[variant.upstream].timeout_s

    def _response_limit(self, variant: Variant, request: Mapping[str, Any]) -> int:
        """The largest answer accepted: the upstream's `max_response_bytes`, and with a
        token limit, what that many tokens can take (generously: 64 bytes a token, plus
        room for the envelope)."""
        limit = self._upstreams[variant.upstream].max_response_bytes
        tokens = request.get("max_tokens") or request.get("max_completion_tokens")
        if isinstance(tokens, int) and tokens > 0:
            limit = min(limit, 16 * 1024 + 64 * tokens)
        return limit

    async def complete(
        self,
        variant: Variant,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        timeout_s: float,
    ) -> Completion:
        """One non-streamed attempt; raises an `UpstreamError` on any failure."""
        client = self._clients[variant.upstream]
        request = _request_params(variant, params)
        limit = self._response_limit(variant, request)
        body = {"model": variant.model, "messages": messages, **request}
        try:
            raw = await client.post(body, timeout_s, variant.model)
            content = await read_at_most(raw, limit, variant.model)
            body = orjson.loads(content)
        except UpstreamStatus as exc:
            raise _status_error(exc, variant.model) from None
        except orjson.JSONDecodeError:
            raise UpstreamServerError(
                f"{variant.model}: answered a body that is not JSON"
            ) from None
        return _completion_from(body, variant)

    async def stream(
        self,
        variant: Variant,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        timeout_s: float,
    ) -> AsyncIterator[Delta]:
        """A streamed attempt: yields text deltas, then one `Delta` carrying the finish
        reason and usage. Raises an `UpstreamError` on any failure, before or mid-stream."""
        client = self._clients[variant.upstream]
        request = _request_params(variant, params)
        limit = self._response_limit(variant, request)
        body = {
            "model": variant.model,
            "messages": messages,
            **request,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            # Read raw, not through an SSE decoder that holds a whole event in memory,
            # however large: here an event past the limit is cut while read.
            raw = await client.post(body, timeout_s, variant.model)
        except UpstreamStatus as exc:
            raise _status_error(exc, variant.model) from None
        end = Delta(finish_reason="stop")
        received = 0
        events = sse_data(raw, limit + _EVENT_ENVELOPE, variant.model)
        try:
            async for event in events:
                delta = _delta_of(event, variant.model)
                end = _merged_end(end, delta)
                if delta.content:
                    received += len(delta.content)
                    if received > limit:
                        raise UpstreamServerError(
                            f"{variant.model}: streamed more than the {limit:,} characters "
                            "its max_tokens allow"
                        )
                    yield Delta(content=delta.content, system_fingerprint=end.system_fingerprint)
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # an async generator
        yield end


# For programs that call a gateway as its users do (the demo, benchmarks): the official
# SDK, reached through this module like every other use of it.
# The SDK is imported on first use: the serving process, whose chat calls go through
# `wire.py`, never loads it.
def __getattr__(name: str) -> Any:
    if name == "CallerError":  # the SDK's `APIError`, which its calls raise
        import openai

        return openai.APIError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def caller_client(base_url: str, api_key: str) -> openai.AsyncOpenAI:
    """An SDK client as a backend service would configure it, SDK retries off."""
    import openai

    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)


def _endpoint_for(upstream: Upstream, environ: Mapping[str, str]) -> ChatEndpoint:
    key = environ.get(upstream.api_key_env, "") if upstream.api_key_env else ""
    base_url = environ.get(upstream.base_url_env, "") if upstream.base_url_env else ""
    return ChatEndpoint(base_url or upstream.base_url, key or "unused", upstream.max_connections)


# Room for one stream event's JSON around its text.
_EVENT_ENVELOPE = 16 * 1024


def _delta_of(event: bytes, model: str) -> Delta:
    """One stream chunk's text, finish reason, usage, fingerprint and model."""
    try:
        chunk = orjson.loads(event)
        if chunk.get("error"):
            raise UpstreamServerError(f"{model}: upstream error (APIError)")
        usage = chunk.get("usage") or {}
        choices = chunk.get("choices") or [{}]
        choice = choices[0]
        return Delta(
            content=(choice.get("delta") or {}).get("content") or "",
            finish_reason=_text_or_none(choice.get("finish_reason")),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            system_fingerprint=_text_or_none(chunk.get("system_fingerprint")),
            model=_text_or_none(chunk.get("model")),
        )
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError, IndexError):
        raise UpstreamServerError(f"{model}: streamed a chunk that is not one") from None


def _merged_end(end: Delta, delta: Delta) -> Delta:
    """The final `Delta` so far: the last finish reason, usage, fingerprint and model."""
    return Delta(
        finish_reason=delta.finish_reason or end.finish_reason,
        prompt_tokens=delta.prompt_tokens or end.prompt_tokens,
        completion_tokens=delta.completion_tokens or end.completion_tokens,
        system_fingerprint=delta.system_fingerprint or end.system_fingerprint,
        model=delta.model or end.model,
    )


def _request_params(variant: Variant, params: Mapping[str, Any]) -> dict[str, Any]:
    """The variant's parameters with the caller's applied; a caller's `max_tokens` is
    clamped to the variant's and sent under the name the variant uses."""
    merged = {**variant.params, **params}
    wanted = params.get("max_tokens")
    if wanted is not None and "max_completion_tokens" in variant.params:
        del merged["max_tokens"]
        merged["max_completion_tokens"] = min(wanted, variant.max_tokens or wanted)
    elif wanted is not None:
        merged["max_tokens"] = min(wanted, variant.max_tokens or wanted)
    if variant.json_mode:
        merged["response_format"] = {"type": "json_object"}
    return merged


def _completion_from(body: Any, variant: Variant) -> Completion:
    try:
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Completion(
            content=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            system_fingerprint=_text_or_none(body.get("system_fingerprint")),
            model=_text_or_none(body.get("model")),
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise UpstreamServerError(f"{variant.model}: answered without a choice") from None


def _blames_input(exc: UpstreamStatus, code: str | None) -> bool:
    """A 400 about the caller's messages: too long for the model, or a message refused."""
    param = exc.param if isinstance(exc.param, str) else ""
    return code == "context_length_exceeded" or param.startswith("messages")


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _status_error(exc: UpstreamStatus, model: str) -> UpstreamError:
    """The `UpstreamError` of a non-2xx answer, as the SDK's `APIStatusError` of it was
    translated: 429 quota or rate limit (with its wait), 401/403 auth, a 400 blaming the
    messages, 5xx and 408, 404 model, any other 4xx a bad request."""
    status, headers = exc.status, exc.headers
    code = exc.code if isinstance(exc.code, str) else None
    label = f"{model}: answered {status}" + (f" {code}" if code else "")
    if status == 429:
        if code == "insufficient_quota" or exc.type == "insufficient_quota":
            return UpstreamQuotaExhausted(label)
        retry_after = parse_retry_after(headers.get("retry-after"), time.time())
        retry_after_ms = headers.get("retry-after-ms")
        if retry_after_ms and retry_after_ms.replace(".", "", 1).isdigit():
            retry_after = float(retry_after_ms) / 1000
        return UpstreamRateLimited(label, retry_after_s=retry_after)
    if status in (401, 403):
        return UpstreamAuthError(label)
    if status == 400 and _blames_input(exc, code):
        return UpstreamInputRefused(label, code=code or "invalid_request")
    if status >= 500 or status == 408:
        return UpstreamServerError(label)
    if status == 404:
        return UpstreamModelNotFound(label)
    return UpstreamBadRequest(label)


# -- fine-tuning (SPEC §9 "Tuning job"): the files and fine-tuning jobs API, for `tune` --


@dataclass(frozen=True, slots=True)
class TuningJob:
    """What `tunegate tune` shows of a fine-tuning job."""

    id: str
    status: str
    model: str
    fine_tuned_model: str | None
    error: str | None
    trained_tokens: int | None
    epochs: int | str | None
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class TuningEvent:
    id: str
    created_at: int
    level: str
    message: str


class TuningClient:
    """The official SDK's `files` and `fine_tuning.jobs` calls against one upstream.
    Every SDK error becomes a `TuningError`; the upstream's own message is passed on
    only for 400/404/409/422 answers (what was wrong with the file or job), never for
    401/403, whose messages can quote part of the key."""

    def __init__(self, upstream: Upstream, environ: Mapping[str, str]) -> None:
        key = environ.get(upstream.api_key_env, "") if upstream.api_key_env else ""
        base_url = environ.get(upstream.base_url_env, "") if upstream.base_url_env else ""
        import openai

        self._name = upstream.name
        self._client = openai.OpenAI(
            api_key=key or "unused",
            base_url=base_url or upstream.base_url,
            max_retries=2,
            timeout=max(upstream.timeout_s, 60.0),
        )

    def close(self) -> None:
        self._client.close()

    def upload(self, name: str, content: bytes) -> str:
        """Upload a training or validation file (`purpose: fine-tune`); its file id."""
        files = self._client.files
        return self._call(
            "upload", lambda: files.create(file=(name, content), purpose="fine-tune").id
        )

    def create(
        self,
        base_model: str,
        training_file: str,
        *,
        validation_file: str | None = None,
        suffix: str | None = None,
        epochs: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> TuningJob:
        import openai

        jobs = self._client.fine_tuning.jobs
        return self._call(
            "create the job",
            lambda: _job_of(
                jobs.create(
                    model=base_model,
                    training_file=training_file,
                    validation_file=validation_file,
                    suffix=suffix,
                    hyperparameters={"n_epochs": epochs} if epochs else openai.omit,
                    metadata=dict(metadata) if metadata else openai.omit,
                )
            ),
        )

    def retrieve(self, job_id: str) -> TuningJob:
        jobs = self._client.fine_tuning.jobs
        return self._call(f"read job {job_id}", lambda: _job_of(jobs.retrieve(job_id)))

    def events(self, job_id: str, limit: int = 100) -> list[TuningEvent]:
        """The job's latest `limit` events, oldest first."""
        jobs = self._client.fine_tuning.jobs
        page = self._call(
            f"read the events of job {job_id}", lambda: jobs.list_events(job_id, limit=limit)
        )
        return [TuningEvent(e.id, e.created_at, e.level, e.message) for e in reversed(page.data)]

    def cancel(self, job_id: str) -> TuningJob:
        jobs = self._client.fine_tuning.jobs
        return self._call(f"cancel job {job_id}", lambda: _job_of(jobs.cancel(job_id)))

    def _call(self, action: str, work: Callable[[], T]) -> T:
        import openai

        try:
            return work()
        except openai.APIStatusError as exc:
            detail = f"answered {exc.status_code}" + (f" {exc.code}" if exc.code else "")
            if exc.status_code in (400, 404, 409, 422):
                body = exc.body if isinstance(exc.body, dict) else {}
                message = body.get("message")
                detail += f": {message}" if isinstance(message, str) else ""
            raise TuningError(f"upstream {self._name}: cannot {action}: {detail}") from None
        except openai.OpenAIError as exc:
            raise TuningError(
                f"upstream {self._name}: cannot {action}: {type(exc).__name__}"
            ) from None


def _job_of(job: Any) -> TuningJob:
    error = None
    if job.error is not None and (job.error.message or job.error.code):
        error = f"{job.error.code or 'error'}: {job.error.message}"
    hyper = job.hyperparameters
    return TuningJob(
        id=job.id,
        status=job.status,
        model=job.model,
        fine_tuned_model=job.fine_tuned_model,
        error=error,
        trained_tokens=job.trained_tokens,
        epochs=hyper.n_epochs if hyper is not None else None,
        metadata=dict(job.metadata or {}),
    )
