"""What every task request goes through before the gateway: the size-limited body, the
caller, the task, the variant override, the sticky unit, the cache directives and, last,
the key's limits (`admit`)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from tunegate.api.services import Runtime, Services, services_of
from tunegate.auth import Principal, authenticate, task_for
from tunegate.config.compiled import ApiKey, Task
from tunegate.errors import (
    CallerGone,
    GatewayError,
    InvalidRequest,
    PermissionDenied,
    RequestTooLarge,
    Unavailable,
)
from tunegate.records import Call, rejected

T = TypeVar("T")


def new_request_id() -> str:
    """32 random hex digits, as a UUID4's hex without its fixed version bits: the same
    uniqueness for a quarter of `uuid4`'s cost on every request."""
    return os.urandom(16).hex()


@dataclass(slots=True)
class Incoming:
    """One task request as the endpoint wrapper sees it: its id, the app's services and,
    once resolved, its task's name (the label of a refused request's outcome)."""

    request_id: str
    services: Services
    task: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """What the key's limits are checked on, once the request is valid (`admit`)."""

    key: ApiKey | None
    request_id: str


Handler = Callable[[Request, Incoming], Awaitable[Response]]


def task_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a task endpoint: a fresh request id on every answer, errors included, the
    in-flight gauge, and refused requests recorded (under the task when it is known)."""

    async def endpoint(request: Request) -> Response:
        services = services_of(request)
        incoming = Incoming(new_request_id(), services)
        started = time.monotonic()
        with services.metrics.track_in_flight():
            try:
                if services.draining:
                    raise Unavailable(
                        "The gateway is shutting down; retry (another instance answers).",
                        retry_after_s=1,
                    )
                if services.metrics.in_flight > services.runtime.config.max_in_flight:
                    raise Unavailable(
                        "The gateway is at its in-flight limit; retry shortly.",
                        retry_after_s=1,
                    )
                return await handler(request, incoming)
            except GatewayError as exc:
                exc.headers.setdefault("x-request-id", incoming.request_id)
                if incoming.task is not None:  # for the caller and the access line
                    exc.headers.setdefault("x-tunegate-task", incoming.task)
                if exc.status < 500:
                    seconds = time.monotonic() - started
                    services.metrics.record(rejected(incoming.request_id, incoming.task, seconds))
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


def resolve_task(runtime: Runtime, principal: Principal, incoming: Incoming, name: str) -> Task:
    task = task_for(runtime.config, principal, name)
    incoming.task = task.name
    return task


def make_call(
    request: Request,
    request_id: str,
    principal: Principal,
    task: Task,
    messages: tuple[dict[str, Any], ...],
    params: Mapping[str, Any],
    user: str | None,
    cache: tuple[bool, bool],
    *,
    stream: bool = False,
) -> tuple[Call, Admission]:
    """The call for the gateway, and the admission to check before it runs (after every
    400/403 the request can get, so a refused request takes no slot of the key's)."""
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
    call = Call(
        request_id=request_id,
        task=task,
        messages=messages,
        params=params,
        unit=unit,
        forced=forced,
        tenant=principal.tenant,
        cache_read=cache[0],
        cache_write=cache[1],
        key_digest=principal.key.sha256 if principal.key is not None else None,
        stream=stream,
        capture=principal.key.capture if principal.key is not None else True,
    )
    return call, Admission(principal.key, request_id)


async def admit(services: Services, admission: Admission) -> None:
    """Hold the call `make_call` built to its key's limits (429, or 503 when the store is
    down and limits fail closed); keys without limits and open mode cost no store call."""
    fail_open = services.runtime.config.limits_fail_open
    await services.limits.admit(admission.key, admission.request_id, fail_open=fail_open)


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first, so an abandoned request
    does not keep an upstream call (and its cost) running.

    `work` runs in the request's own task. The watcher of the connection, a task of its
    own, starts only if `work` has to wait for something: a hit from the process's
    memory never does, and costs no task at all. On a disconnect the watcher cancels the
    request's task; `work` ends with `CancelledError`, which becomes `CallerGone` (a
    departed caller is no server error for uvicorn to log with a traceback) unless
    something else also cancelled the task (a shutdown), which then goes on. The
    watcher's cancellation is withdrawn (`uncancel`) as `work` ends, so the task's count
    holds only what others asked of it."""
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()  # not `get_running_loop`: in 3.11 each call is a getpid()
    receive = request.receive
    watcher: asyncio.Task[None] | None = None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    # Runs on the loop's next turn, which comes only if `work` waits.
    waiting = loop.call_soon(start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            gone = False  # withdrawn here
            if task.uncancel() == 0:
                raise CallerGone("The caller closed the connection.") from None
        raise
    finally:
        waiting.cancel()
        if watcher is not None:
            watcher.cancel()
        if gone:
            task.uncancel()
