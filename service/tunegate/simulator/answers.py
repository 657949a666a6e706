"""What a simulated model answers, how long it takes and what it costs in tokens: pure.

Tasks. The answer is JSON when the request has `response_format` of type `json_object`
or `json_schema`, or a system (or developer) message mentions "JSON" or "classify"; it is then the
`ticket-triage` answer `{"category": ..., "priority": ...}` derived from keywords in the
last user message (`triage`), skipping a corrective re-ask (a user turn after the model's
answer that speaks of the "previous answer"), which a model answers by answering the ticket
again. Otherwise it is a short support reply, in German when the system prompt mentions
German/Deutsch, else in English (`replies.py`). A judge prompt (`judging.py`: a user turn
with `Answer:` or `Answer A:`/`Answer B:` headings) gets a judgement, before all else.

Quality. Each model's answer is right with probability `quality.valid`, or
`quality.valid_with_examples` when the request carries few-shot examples (an assistant
turn before the last user message). The draw is a hash of (seed, model, messages), so the
same input always gets the same answer. A wrong JSON answer is one of the `BREAKAGES`,
picked by the scenario's weights; a wrong German reply carries one of the `TEXT_FLAWS`,
picked by `quality.text_flaws` (a forced JSON breakage makes it English; a text task asked
in English cannot be wrong); a wrong judgement is prose instead of JSON.

Faults. A model's random faults are drawn by a hash of (seed, model, request sequence
number), so they are reproducible and a retry of the same input can succeed.

Tokens (an approximation of OpenAI's counts, documented so tests can assert on it):
`prompt_tokens` = 3 + the sum over messages of (4 + ceil(characters of content / 4));
`completion_tokens` = ceil(characters of the answer / 4), at least 1. Streams send one
piece of up to `PIECE_CHARS` characters (about one token) per chunk.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tunegate.simulator import judging
from tunegate.simulator.replies import TEXT_FLAWS, reply
from tunegate.simulator.scenario import ModelBehaviour

PIECE_CHARS = 4
CATEGORIES = ("billing", "bug", "account", "other")
PRIORITIES = ("low", "medium", "high")

_CATEGORY_WORDS = (
    ("billing", re.compile(r"\b(charged?|refunds?|invoices?|payments?|billing|bill(ed)?)\b")),
    ("bug", re.compile(r"\b(errors?|crash(es|ed|ing)?|bugs?|broken)\b")),
    ("account", re.compile(r"\b(password|log ?in|sign ?in|accounts?)\b")),
)
_HIGH = re.compile(r"\b(urgent(ly)?|asap|immediately|down|twice)\b")
_LOW = re.compile(r"when you can|no rush|\?")
# A classifier answers JSON: the fine-tuned triage model learnt to from a short prompt.
_JSON = re.compile(r"json|classify", re.IGNORECASE)
_GERMAN = re.compile(r"german|deutsch", re.IGNORECASE)
_REASK = re.compile(r"previous answer", re.IGNORECASE)

_JUDGE_PROSE = "Both answers seem fine to me overall."


@dataclass(frozen=True, slots=True)
class Answer:
    """A model's answer and how it was meant: "valid", a breakage, or "wrong_language"."""

    content: str
    outcome: str


def triage(text: str) -> tuple[str, str]:
    """The right (category, priority) for a ticket: the first keyword group that matches
    decides the category (billing, then bug, then account, else other); urgent words make
    it high, a question or "when you can" low, else medium."""
    lowered = text.lower()
    category = "other"
    for name, words in _CATEGORY_WORDS:
        if words.search(lowered):
            category = name
            break
    if _HIGH.search(lowered):
        priority = "high"
    elif _LOW.search(lowered):
        priority = "low"
    else:
        priority = "medium"
    return category, priority


def answer(
    behaviour: ModelBehaviour,
    seed: int,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    request: Mapping[str, Any],
    forced: str | None = None,
) -> Answer:
    """The model's answer to `messages`. `forced` is an output fault (a breakage or
    "valid") that overrides the quality draw."""
    last = _last_user_text(messages)
    system = _system_text(messages)
    german = _GERMAN.search(system) is not None and not wants_json(request, messages)
    outcome = forced
    if outcome is None and german and behaviour.quality.text_valid is not None:
        key = b"text:%d:%s:%s" % (seed, model.encode(), orjson.dumps(messages))
        outcome = "valid" if _uniform(key) < behaviour.quality.text_valid else "english"
    if outcome is None:
        outcome = _draw_outcome(behaviour, seed, model, messages)
    if judging.is_judge_prompt(last):
        if outcome != "valid":
            return Answer(_JUDGE_PROSE, outcome)
        key = b"judge:%d:%s:%s" % (seed, model.encode(), orjson.dumps(messages))
        return Answer(judging.judgement(last, behaviour.judge_noise, key), "valid")
    # A ticket's category is read off it only now: a judge prompt quotes a whole answer,
    # and searching it for every category's words cost more than the judgement itself.
    category, priority = triage(last)
    if _json_format(request) or _JSON.search(system):
        return Answer(render_triage(category, priority, outcome), outcome)
    if outcome == "valid" or not german:
        return Answer(reply(category, german, None), "valid")
    flaw = outcome if outcome in TEXT_FLAWS else "english"
    if forced is None:
        flaw = _draw_flaw(behaviour, seed, model, messages)
    return Answer(reply(category, True, flaw), flaw)


def render_triage(category: str, priority: str, outcome: str) -> str:
    """The triage answer, right ("valid") or broken the way `outcome` names."""
    valid = f'{{"category": "{category}", "priority": "{priority}"}}'
    if outcome == "invalid_json":
        return valid[: len(valid) * 2 // 3]
    if outcome == "fenced":
        return f"```json\n{valid}\n```"
    if outcome == "trailing_comma":
        return f'{{"category": "{category}", "priority": "{priority}",}}'
    if outcome == "missing_field":
        return f'{{"category": "{category}"}}'
    if outcome == "wrong_enum":
        return f'{{"category": "{category}", "priority": "critical"}}'
    if outcome == "prose":
        return f"This ticket is about {category} and its priority is {priority}."
    return valid


def wants_json(request: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the model answers JSON: asked by `response_format` or the system prompt."""
    return _json_format(request) or _JSON.search(_system_text(messages)) is not None


def has_examples(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether an assistant turn comes before the last user message (few-shot examples)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return any(m.get("role") == "assistant" for m in messages[:last_user])


def draw_fault(behaviour: ModelBehaviour, seed: int, model: str, sequence: int) -> str | None:
    """The random fault of the model's `sequence`-th request, or None."""
    if not behaviour.faults:
        return None
    draw = _uniform(f"fault:{seed}:{model}:{sequence}".encode())
    for kind, rate in behaviour.faults:
        if draw < rate:
            return kind
        draw -= rate
    return None


def delay_s(behaviour: ModelBehaviour, seed: int, model: str, sequence: int) -> float:
    """The wait before the model's answer starts: its latency plus seeded jitter."""
    wait = behaviour.latency_ms
    if behaviour.jitter_ms:
        wait += behaviour.jitter_ms * _uniform(f"jitter:{seed}:{model}:{sequence}".encode())
    return wait / 1000


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    return 3 + sum(4 + math.ceil(len(_text(m.get("content"))) / 4) for m in messages)


def completion_tokens(content: str) -> int:
    return max(1, math.ceil(len(content) / 4))


def pieces(content: str) -> list[str]:
    """The content cut into the pieces a stream sends, one per chunk."""
    return [content[i : i + PIECE_CHARS] for i in range(0, len(content), PIECE_CHARS)]


def _draw_outcome(
    behaviour: ModelBehaviour, seed: int, model: str, messages: Sequence[Mapping[str, Any]]
) -> str:
    quality = behaviour.quality
    rate = quality.valid
    if quality.valid_with_examples is not None and has_examples(messages):
        rate = quality.valid_with_examples
    if rate >= 1:
        return "valid"
    key = b"quality:%d:%s:%s" % (seed, model.encode(), orjson.dumps(messages))
    digest = hashlib.blake2b(key, digest_size=16).digest()
    if int.from_bytes(digest[:8]) / 2**64 < rate:
        return "valid"
    pick = int.from_bytes(digest[8:]) / 2**64 * sum(w for _, w in quality.breakages)
    for kind, weight in quality.breakages:
        if pick < weight:
            return kind
        pick -= weight
    return quality.breakages[-1][0]


def _draw_flaw(
    behaviour: ModelBehaviour, seed: int, model: str, messages: Sequence[Mapping[str, Any]]
) -> str:
    flaws = behaviour.quality.text_flaws
    key = b"flaw:%d:%s:%s" % (seed, model.encode(), orjson.dumps(messages))
    pick = _uniform(key) * sum(w for _, w in flaws)
    for kind, weight in flaws:
        if pick < weight:
            return kind
        pick -= weight
    return flaws[-1][0]


def _uniform(key: bytes) -> float:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()) / 2**64


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The ticket: the last user turn, skipping corrective re-asks (a user turn right
    after the model's answer that speaks of that "previous answer"), which a model
    answers by answering the ticket again."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") != "user":
            continue
        text = _text(message.get("content"))
        after_answer = index > 0 and messages[index - 1].get("role") == "assistant"
        if after_answer and _REASK.search(text):
            continue
        return text
    return ""


def _system_text(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(
        _text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )


def _json_format(request: Mapping[str, Any]) -> bool:
    response_format = request.get("response_format")
    return isinstance(response_format, Mapping) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )


def _text(content: Any) -> str:
    """A message's text: the string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""
