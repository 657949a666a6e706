"""One access line per request, and an `x-request-id` on every answer (SPEC §2, §12).

`AccessLog` wraps the whole app (ASGI): it reads what the answer says of itself, the
status and the `x-tunegate-*` headers, adds an `x-request-id` where the endpoint set none
(a 404, a 405, the service endpoints), and logs when the last byte has gone:

    {"msg": "request", "request_id", "method", "path", "status", "task", "variant",
     "cache", "duration_s", "cost_usd"}

Never content, never a key. A text stream's headers leave before its cost is known;
its endpoint reports the whole cost through `report_cost` before the stream ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunegate.api.incoming import new_request_id

log = logging.getLogger("tunegate.access")

_SCOPE_KEY = "tunegate.access"
_FIELDS = {
    b"x-request-id": "request_id",
    b"x-tunegate-task": "task",
    b"x-tunegate-variant": "variant",
    b"x-tunegate-cache": "cache",
    b"x-tunegate-cost-usd": "cost_usd",
}


@dataclass(slots=True)
class _Cost:
    """The whole cost of a request, when it is known only after its headers left."""

    usd: float | None = None


def report_cost(request: Request) -> Callable[[float], None]:
    """How a streaming endpoint tells the access line its request's whole cost."""
    slot: _Cost | None = request.scope.get(_SCOPE_KEY)

    def report(usd: float) -> None:
        if slot is not None:
            slot.usd = usd

    return report


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        cost = _Cost()
        scope[_SCOPE_KEY] = cost
        line: dict[str, Any] = {"method": scope["method"], "path": scope["path"]}
        logged = False

        async def send_and_note(message: Message) -> None:
            nonlocal logged
            if message["type"] == "http.response.start":
                _note(message, line)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                logged = True
                _log(line, started, cost)

        try:
            await self._app(scope, receive, send_and_note)
        finally:
            # An answer cut short (the client went away, or an error the server answers
            # with a 500) still gets its line.
            if not logged:
                line.setdefault("status", 500)
                _log(line, started, cost)


def _note(start: Message, line: dict[str, Any]) -> None:
    """Note the answer's status and `_FIELDS` headers in `line`, in one pass over its
    headers; give it an `x-request-id` (a new header list) where it has none."""
    headers = start.get("headers", ())
    line["status"] = start["status"]
    for name, value in headers:
        field = _FIELDS.get(name.lower())
        if field is not None:
            line[field] = value.decode("latin-1")
    if "request_id" not in line:
        line["request_id"] = new_request_id()
        start["headers"] = [*headers, (b"x-request-id", line["request_id"].encode())]


def _log(line: dict[str, Any], started: float, cost: _Cost) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    entry = dict(line)
    entry["duration_s"] = round(time.monotonic() - started, 6)
    entry["cost_usd"] = cost.usd if cost.usd is not None else float(line.get("cost_usd", 0))
    log.info("request", extra=entry)
