"""Responses at the HTTP edge: JSON bodies, and the `x-tunegate-*` headers of an answer
(SPEC §2)."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from tunegate.pricing import format_usd
from tunegate.records import Answer


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """`data` as a JSON response (orjson: dataclasses and tuples included)."""
    return Response(
        orjson.dumps(data), status_code=status, headers=headers, media_type="application/json"
    )


def answer_headers(answer: Answer) -> dict[str, str]:
    """The request id, task, variant, model, cache state and cost of `answer`; the
    fallback, the JSON check and the output checks when there were any."""
    headers = {
        "x-request-id": answer.request_id,
        "x-tunegate-task": answer.task.name,
        "x-tunegate-variant": answer.variant.name,
        "x-tunegate-model": answer.variant.model,
        "x-tunegate-cache": answer.cache,
        "x-tunegate-cost-usd": format_usd(answer.cost_usd),
    }
    if answer.fallback_from:
        headers["x-tunegate-fallback"] = answer.fallback_from
    if answer.json_status:
        headers["x-tunegate-json"] = answer.json_status
    if answer.checks:
        headers["x-tunegate-checks"] = answer.checks
    return headers
