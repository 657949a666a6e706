"""What each benchmark target is: the gateway's and LiteLLM's configs, the bodies each
is sent, and the checks that its answers are what the scenario means."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from bench.figures import PromptKind, Scenario, Target
from bench.wrk import PROMPT, repeated_prompt

TASK = "bench-triage"
MODEL = "ft:gpt-3.5-turbo-0613:acme::7qTVM5AR"
SYSTEM = "Classify the support ticket as JSON."
PARAMS: Mapping[str, Any] = {"temperature": 0, "max_tokens": 64}
SCHEMA = {
    "type": "object",
    "required": ["category", "priority"],
    "additionalProperties": False,
    "properties": {
        "category": {"enum": ["billing", "bug", "account", "other"]},
        "priority": {"enum": ["low", "medium", "high"]},
        "summary": {"type": "string"},  # the long answers' 2 KB (mock_upstream.py)
    },
}
UPSTREAM_KEY = "sk-bench-upstream"  # what the gateway and LiteLLM send upstream; unchecked
LONG_PROMPT_BYTES = 32 * 1024


def few_shot(size: int = LONG_PROMPT_BYTES) -> str:
    """A few-shot prompt of `size` bytes: worked tickets and their answers, then the
    ticket to classify (where `PROMPT` goes, appended by `body_template`)."""
    categories = ("billing", "bug", "account", "other")
    priorities = ("low", "medium", "high")
    examples: list[str] = []
    i = 0
    while sum(len(e) for e in examples) < size - 200:
        examples.append(
            f"Ticket {i}: customer {i * 7919 % 10007} reports that order {i * 104729 % 99991} "
            f"shows a problem with their {categories[i % 4]} settings since the last update; "
            f"they ask for help before the end of the week.\n"
            f'Answer: {{"category": "{categories[i % 4]}", "priority": "{priorities[i % 3]}"}}\n'
        )
        i += 1
    text = "".join(examples)
    return text[: size - 64] + "\nTicket to classify: "


def portkey_headers(upstream_url: str) -> dict[str, str]:
    """What Portkey's gateway needs to reach the upstream as an OpenAI-compatible one."""
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{upstream_url}/v1"}


# -- what each target is sent ------------------------------------------------------------


def body_template(target: Target, stream: bool, prompt: PromptKind = "short") -> str:
    """The request body for `target` with PROMPT where the user's text goes (after a
    32 KB few-shot prompt for `long`). The gateway owns the system prompt and parameters
    (it refuses them from callers); LiteLLM gets the system message from the caller (its
    config sets the parameters); a direct call, and Portkey's gateway (a pass-through),
    get what the gateway sends upstream."""
    text = few_shot() + PROMPT if prompt == "long" else PROMPT
    user = {"role": "user", "content": text}
    system = {"role": "system", "content": SYSTEM}
    body: dict[str, Any]
    if target.startswith("tunegate"):
        body = {"model": TASK, "messages": [user]}
    elif target in ("litellm", "sdk"):
        body = {"model": TASK, "messages": [system, user]}
    else:
        body = {"model": MODEL, "messages": [system, user], **PARAMS}
    return json.dumps({**body, "stream": stream})


def gateway_config(upstream_url: str) -> dict[str, Any]:
    return {
        "upstreams": {
            "bench": {
                "base_url": f"{upstream_url}/v1",
                "api_key_env": "BENCH_UPSTREAM_KEY",
                "timeout_s": 10,
            }
        },
        "tasks": {
            TASK: {
                "output": {"type": "json", "schema": SCHEMA},
                "variants": {
                    "tuned": {
                        "upstream": "bench",
                        "model": MODEL,
                        "system": SYSTEM,
                        "params": dict(PARAMS),
                    }
                },
                "routing": {"weights": {"tuned": 100}, "retries": 0},
                "cache": {"ttl_s": 3600},
            }
        },
    }


def litellm_config(upstream_url: str, master_key: str) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": TASK,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"{upstream_url}/v1",
                    "api_key": UPSTREAM_KEY,
                    "max_retries": 0,
                    **PARAMS,
                },
            }
        ],
        "litellm_settings": {"num_retries": 0, "request_timeout": 10},
        "general_settings": {"master_key": master_key},
    }


# -- checks ------------------------------------------------------------------------------


def check_sample(
    scenario: Scenario,
    url: str,
    template: str,
    nonce: str,
    bearer: str,
    extra_headers: Mapping[str, str] | None = None,
) -> str:
    """Send what the run will send and check the answers: 200, a complete body with the
    task's JSON, and for the gateway `x-tunegate-cache` miss for unique prompts and hit
    for the repeated one (which this also puts in the cache). Raises `RuntimeError`."""
    if scenario.cache == "hit":
        prompts = [repeated_prompt(nonce)] * 2
    else:
        prompts = [f"Sample ticket {nonce}-{i}." for i in range(2)]
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    headers.update(extra_headers or {})
    seen = []
    with httpx.Client(timeout=15.0, headers=headers) as client:
        for i, prompt in enumerate(prompts):
            body = template.replace(PROMPT, prompt)
            response = client.post(url, content=body, headers={"content-type": "application/json"})
            problem = _answer_problem(response, scenario.stream)
            if problem:
                raise RuntimeError(f"{scenario.label}: sample answer {problem}")
            if scenario.target.startswith("tunegate"):
                cache = response.headers.get("x-tunegate-cache")
                expected = "hit" if scenario.cache == "hit" and i > 0 else "miss"
                if cache != expected:
                    raise RuntimeError(f"{scenario.label}: sample was a {cache}, not a {expected}")
                seen.append(f"{cache} ({response.headers.get('x-tunegate-json')})")
            else:
                seen.append(str(response.status_code))
    return ", ".join(seen)


def _answer_problem(response: httpx.Response, stream: bool) -> str | None:
    if response.status_code != 200:
        return f"has status {response.status_code}: {response.text[:200]}"
    if stream:
        if not response.text.rstrip().endswith("data: [DONE]"):
            return "is a stream that does not end with [DONE]"
        return None
    content = response.json()["choices"][0]["message"]["content"]
    try:
        parsed = json.loads(content)
    except ValueError:
        return f"is not JSON: {content[:100]!r}"
    if not (isinstance(parsed, dict) and "category" in parsed):
        return f"is {content!r}"
    return None


_LOOKUP = re.compile(r"^tunegate_cache_lookups_total\{([^}]*)\}\s+([0-9.e+]+)$", re.MULTILINE)


def cache_lookups(gateway_url: str) -> dict[str, int]:
    """The gateway's cache lookups so far for the task, by result, from its metrics."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=10.0).text
    counts: dict[str, int] = {}
    for labels, value in _LOOKUP.findall(text):
        if f'task="{TASK}"' in labels:
            result = re.search(r'result="([^"]+)"', labels)
            if result:
                counts[result.group(1)] = int(float(value))
    return counts
