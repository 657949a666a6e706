"""Errors become HTTP answers here, and only here, in OpenAI's error shape (SPEC §2), so
the official SDKs raise the matching exception class."""

from __future__ import annotations

import math

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from tunegate.errors import GatewayError, InvalidRequest, MethodNotAllowed, NotFound

# The gateway's own 429/502/503/504 say whether a client retry can help, so client SDK
# retries do not multiply the gateway's own (SPEC §3).
_RETRY_ADVICE_STATUSES = frozenset({429, 502, 503, 504})


def error_body(exc: GatewayError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": exc.message,
                "type": exc.error_type,
                "param": exc.param,
                "code": exc.code,
            }
        }
    )


def error_headers(exc: GatewayError) -> dict[str, str]:
    headers = dict(exc.headers)
    if exc.status in _RETRY_ADVICE_STATUSES:
        headers["x-should-retry"] = "true" if exc.should_retry else "false"
    if exc.retry_after_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
    return headers


def error_response(exc: GatewayError) -> Response:
    return Response(
        error_body(exc),
        status_code=exc.status,
        headers=error_headers(exc),
        media_type="application/json",
    )


def install_error_handlers(app: Starlette) -> None:
    """Answer every error the framework raises in the same shape as our own."""

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            allowed = dict(exc.headers or {})  # Starlette's `Allow`
            refused = MethodNotAllowed(f"{request.method} is not allowed here.", headers=allowed)
            return error_response(refused)
        if exc.status_code == 404:
            return error_response(NotFound(f"No route {request.url.path}.", code="not_found"))
        return error_response(InvalidRequest(str(exc.detail)))

    async def on_defect(request: Request, exc: Exception) -> Response:
        # Starlette's last resort, which still re-raises for uvicorn to log the traceback.
        return error_response(GatewayError("The gateway failed to answer (a defect it logged)."))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_defect)
