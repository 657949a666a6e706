"""`Outcome`s made to order for the recorders' tests and benchmarks (metrics, experiments,
limits): what a request was and how it ended, without running one."""

from __future__ import annotations

import uuid
from typing import Any

from tests.testkit.configs import TUNED
from tunegate.records import Outcome, UpstreamCall


def served(**fields: Any) -> Outcome:
    """The tuned variant answered on its first call, a sample with valid JSON, a cache
    miss (12.5 ms, 120 + 12 tokens, 0.000432 USD); `fields` override any field."""
    values: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "task": "ticket-triage",
        "tenant": "acme",
        "chosen": "tuned",
        "served": "tuned",
        "served_model": TUNED,
        "sample": True,
        "status": "ok",
        "cache": "miss",
        "cache_lookup": "miss",
        "seconds": 0.0125,
        "calls": (UpstreamCall("tuned", TUNED, 0.0120, 120, 12, 0.000432),),
        "json_results": (("tuned", "valid"),),
    }
    values.update(fields)
    return Outcome(**values)


def sample(task: str, variant: str = "tuned") -> Outcome:
    """A sample of `variant` and nothing more: no upstream call, no JSON check, no cache."""
    return served(
        task=task,
        tenant=None,
        chosen=variant,
        served=variant,
        cache="bypass",
        cache_lookup="bypass",
        seconds=0.1,
        calls=(),
        json_results=(),
    )
