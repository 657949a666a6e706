"""What every task request goes through before the gateway: the size-limited body, the
caller, the task, the variant override, the sticky unit, the cache directives and, last,
the key's limits (`admit`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from tunegate.auth import Principal, authenticate, task_for
from tunegate.config.compiled import ApiKey, GatewayConfig, Task
from tunegate.errors import (
    GatewayError,
    InvalidRequest,
    PermissionDenied,
    RequestTooLarge,
    Unavailable,
)
from tunegate.flow.gateway import Gateway
from tunegate.records import Call, rejected

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    """The config in force and what was built from it; swapped whole on reload, so a
    request reads one consistent version."""

    config: GatewayConfig
    gateway: Gateway
    keys: Mapping[str, ApiKey]
    started_at: float


def new_request_id() -> str:
    return uuid.uuid4().hex


Handler = Callable[[Request, str], Awaitable[Response]]


class Load:
    """Requests in progress in this process, for load shedding (503 `overloaded` at once
    rather than a pile of timeouts)."""

    def __init__(self) -> None:
        self.in_flight = 0

    def __enter__(self) -> None:
        self.in_flight += 1

    def __exit__(self, *exc_info: object) -> None:
        self.in_flight -= 1


def task_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a task endpoint: a fresh request id on every answer, errors included, the
    in-flight gauge, and refused requests recorded (under the task when it is known)."""

    async def endpoint(request: Request) -> Response:
        request_id = new_request_id()
        started = time.monotonic()
        load: Load = request.app.state.load
        with request.app.state.metrics.track_in_flight(), load:
            try:
                if request.app.state.draining:
                    raise Unavailable(
                        "The gateway is shutting down; retry (another instance answers).",
                        retry_after_s=1,
                    )
                if load.in_flight > request.app.state.runtime.config.max_in_flight:
                    raise Unavailable(
                        "The gateway is at its in-flight limit; retry shortly.",
                        retry_after_s=1,
                    )
                return await handler(request, request_id)
            except GatewayError as exc:
                exc.headers.setdefault("x-request-id", request_id)
                if exc.status < 500:
                    task = getattr(request.state, "task", None)
                    outcome = rejected(request_id, task, time.monotonic() - started)
                    request.app.state.metrics.record(outcome)
                raise

    return endpoint


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes, whether or not the
    client declared a content-length."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The body exceeds the limit of {limit} bytes.")


def caller(runtime: Runtime, request: Request) -> Principal:
    return authenticate(runtime.keys, request.headers.get("authorization"))


def resolve_task(runtime: Runtime, principal: Principal, request: Request, name: str) -> Task:
    task = task_for(runtime.config, principal, name)
    request.state.task = task.name
    return task


def make_call(
    request: Request,
    request_id: str,
    principal: Principal,
    task: Task,
    messages: tuple[dict[str, str], ...],
    params: Mapping[str, Any],
    user: str | None,
    cache: tuple[bool, bool],
) -> Call:
    headers = request.headers
    forced = headers.get("x-tunegate-variant")
    if forced is not None:
        if not principal.admin:
            raise PermissionDenied(
                "Only admin keys may force a variant.", code="override_not_allowed"
            )
        if forced not in task.variants:
            raise InvalidRequest(
                f"The task {task.name!r} has no variant {forced!r}; "
                f"use one of: {', '.join(task.variants)}.",
                param="x-tunegate-variant",
            )
    sticky = task.routing.sticky
    unit = (
        user if sticky == "user" else headers.get("x-tunegate-unit") if sticky == "header" else None
    )
    # Checked by `cancel_on_disconnect` once the request is valid, before the gateway runs.
    request.state.admission = (principal.key, request_id)
    return Call(
        request_id=request_id,
        task=task,
        messages=messages,
        params=params,
        unit=unit,
        forced=forced,
        tenant=principal.tenant,
        cache_read=cache[0],
        cache_write=cache[1],
    )


async def admit(request: Request) -> None:
    """Hold the call `make_call` built to its key's limits (429, or 503 when the store is
    down and limits fail closed); keys without limits and open mode cost no store call."""
    admission: tuple[ApiKey | None, str] | None = getattr(request.state, "admission", None)
    if admission is None or admission[0] is None:
        return
    key, request_id = admission
    fail_open = request.app.state.runtime.config.limits_fail_open
    await request.app.state.limits.admit(key, request_id, fail_open=fail_open)


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first, so an abandoned request
    does not keep an upstream call (and its cost) running."""
    task = asyncio.ensure_future(work)
    receive = request.receive

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    finally:
        watcher.cancel()
