"""Configs for tests and benchmarks: a `ticket-triage`-like task with a tuned and a
few-shot variant, and a gateway config pointing at a simulator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TUNED = "ft:gpt-3.5-turbo-0613:acme::7qTVM5AR"
BASE = "gpt-3.5-turbo"
TRIAGE_SCHEMA = {
    "type": "object",
    "required": ["category", "priority"],
    "additionalProperties": False,
    "properties": {
        "category": {"enum": ["billing", "bug", "account", "other"]},
        "priority": {"enum": ["low", "medium", "high"]},
    },
}


def task_config(
    *,
    output: Mapping[str, Any] | None = None,
    weights: Mapping[str, float] | None = None,
    routing: Mapping[str, Any] | None = None,
    **task: Any,
) -> dict[str, Any]:
    """A `ticket-triage`-like task with a tuned and a few-shot variant."""
    return {
        "output": dict(output or {"type": "json", "schema": TRIAGE_SCHEMA}),
        "variants": {
            "tuned": {
                "upstream": "sim",
                "model": TUNED,
                "system": "Classify the support ticket as JSON.",
                "params": {"temperature": 0, "max_tokens": 64},
            },
            "few_shot": {
                "upstream": "sim",
                "model": BASE,
                "system": "You classify support tickets. Answer only with JSON.",
                "examples": [
                    {
                        "user": "I was charged twice.",
                        "assistant": '{"category": "billing", "priority": "high"}',
                    }
                ],
                "params": {"temperature": 0, "max_tokens": 64},
            },
        },
        "routing": {
            "weights": dict(weights or {"tuned": 100, "few_shot": 0}),
            "fallback": ["few_shot", "tuned"],
            "retries": 1,
            "json_retries": 1,
            **(routing or {}),
        },
        **task,
    }


def gateway_config(sim_url: str, tasks: Mapping[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "upstreams": {
            "sim": {"base_url": f"{sim_url}/v1", "api_key_env": "SIM_KEY", "timeout_s": 5}
        },
        "tasks": dict(tasks),
        **top,
    }
