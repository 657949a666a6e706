"""The cost of a usage for a model: config overrides first, then genai-prices' table.

This is the only module that imports `genai_prices`. A model's price is resolved once,
the first time it is asked for (or at startup through `PriceTable.preload`), and kept
for the life of the table; the request path then costs one dict lookup and two
multiplications (~0.2 us for `price_for`, ~0.6 us for `cost_usd`). A genai-prices lookup
costs ~40-55 ms the first time in a process (it loads its data snapshot) and ~0.15-0.3 ms
for each further model, which is why it never runs per request.

Resolution order for a model name:

1. an override from the config's `pricing` section, keyed by the exact model name;
2. genai-prices' table for provider `openai`. It matches OpenAI fine-tuned names
   (`ft:BASE:org:suffix:id`) itself: every `ft:gpt-3.5-turbo...` name gets the table's
   fine-tuned price ($3 / $6 per 1M tokens), and `ft:gpt-4o-2024-...` and
   `ft:gpt-4o-mini-2024-...` get theirs;
3. otherwise the model is unknown: its cost is `None`, and one warning naming it is
   logged. That includes fine-tuned models whose base has no fine-tuned price in the table
   (e.g. `ft:gpt-4.1-...` in genai-prices 0.2.3). They are deliberately *not* priced as
   their base model, because fine-tuned inference costs more than the base, and an
   under-reported cost would make a tuned variant look cheaper than it is. The fix is a
   `pricing` entry in the gateway config.

Prices are flat per-token rates. Where the table has tiered prices, the rate below the
first tier is used; where its prices change on a date, the rate in force when the model
was resolved is kept until the process restarts.

Training prices (what tuning a base model costs per 1M training tokens), the per-example
context limits of tunable base models and OpenAI's default epochs rule live at the end:
a dated table shipped with the project, overridden by `pricing.MODEL.training`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TypeVar

from genai_prices import Usage, calc_price

logger = logging.getLogger("tunegate.pricing")

PROVIDER_ID = "openai"
_TOKENS_PER_MTOK = 1_000_000
_USD_DECIMALS = 10
T = TypeVar("T")


@dataclass(frozen=True)
class Price:
    """What a model costs, in USD per 1M tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Price.{field.name} must be a finite number >= 0, not {value!r}")


def maintained_price(model: str) -> Price | None:
    """The price genai-prices lists for `model` at provider `openai`, or None if it has none.

    Prices one token each way and scales up, rather than reading `ModelPrice` fields,
    so conditional (dated) prices are resolved by genai-prices itself and a tiered price
    yields its base rate. Exceptions other than genai-prices' `LookupError` for an
    unknown model propagate.
    """
    try:
        calc = calc_price(
            Usage(input_tokens=1, output_tokens=1), model_ref=model, provider_id=PROVIDER_ID
        )
    except LookupError:
        return None
    return Price(
        input_per_mtok=float(calc.input_price * _TOKENS_PER_MTOK),
        output_per_mtok=float(calc.output_price * _TOKENS_PER_MTOK),
    )


class PriceTable:
    """Prices by model name, each resolved once and then served from memory.

    `overrides` (the config's `pricing` section) win over the maintained table. `lookup`
    is where models without an override are priced; it defaults to genai-prices.
    """

    def __init__(
        self,
        overrides: Mapping[str, Price],
        *,
        lookup: Callable[[str], Price | None] = maintained_price,
    ) -> None:
        self._lookup = lookup
        # Misses are memoized too, so an unknown model is looked up and logged once.
        # Model names come from the config's variants, so this stays small.
        self._resolved: dict[str, Price | None] = dict(overrides)

    def preload(self, models: Iterable[str]) -> None:
        """Resolve `models` now (at startup) so that no request pays for a first lookup."""
        for model in models:
            self.price_for(model)

    def price_for(self, model: str) -> Price | None:
        """The price of `model`, or None when neither the overrides nor the table know it.

        Never raises; the first miss for a model logs one warning.
        """
        try:
            return self._resolved[model]
        except KeyError:
            price = self._resolved[model] = self._resolve(model)
            return price

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The USD cost of a usage for `model`, or None when the model's price is unknown."""
        price = self.price_for(model)
        if price is None:
            return None
        return (
            prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok
        ) / _TOKENS_PER_MTOK

    def _resolve(self, model: str) -> Price | None:
        try:
            price = self._lookup(model)
        except Exception:  # a broken price table must cost a header, never a request
            logger.warning(
                "Pricing model %r failed; its cost is reported as unknown", model, exc_info=True
            )
            return None
        if price is None:
            logger.warning(
                "No price for model %r in the pricing config or genai-prices; its cost is "
                "reported as unknown until a `pricing` entry is added",
                model,
            )
        return price


def format_usd(value: float) -> str:
    """`value` as a fixed-point decimal for the `x-tunegate-cost-usd` header.

    Rounded to 10 decimal places (a 1e-10 USD resolution, enough for a single token of
    the cheapest models), then trailing zeros and a bare trailing point are stripped:
    `0.000102`, `1.5`, `1000`, and `0` for zero or anything that rounds to it. Never uses
    scientific notation. Raises ValueError for NaN or an infinity, which no `Price` can
    produce.
    """
    if not math.isfinite(value):
        raise ValueError(f"A USD amount must be finite, not {value!r}")
    text = f"{value:.{_USD_DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


# -- training (SPEC §12 "Training prices") ------------------------------------------------

# OpenAI's published fine-tuning prices, USD per 1M training tokens, by base model (the
# longest matching prefix of a model name wins). A `pricing.MODEL.training` entry in the
# config overrides them; update this table (and its date) when OpenAI's prices change.
TRAINING_PRICES_AS_OF = "2025-06-01"
TRAINING_PRICES: Mapping[str, float] = {
    "gpt-3.5-turbo": 8.0,
    "gpt-4o-mini": 3.0,
    "gpt-4o": 25.0,
    "gpt-4.1-nano": 1.5,
    "gpt-4.1-mini": 5.0,
    "gpt-4.1": 25.0,
    "davinci-002": 6.0,
    "babbage-002": 0.4,
}
# The most tokens one training example may have, by base model (longest prefix wins).
CONTEXT_LIMITS: Mapping[str, int] = {
    "gpt-3.5-turbo-0613": 4_096,
    "gpt-3.5-turbo": 16_385,  # 0125, 1106 and the alias, which points at 0125
    "gpt-4o-mini": 65_536,
    "gpt-4o": 65_536,
    "gpt-4.1": 65_536,
    "davinci-002": 16_384,
    "babbage-002": 16_384,
}


@dataclass(frozen=True)
class TrainingPrice:
    """USD per 1M training tokens and where the figure comes from."""

    usd_per_mtok: float
    source: str


def _longest_prefix(model: str, table: Mapping[str, T]) -> tuple[str, T] | None:
    matches = [name for name in table if model == name or model.startswith(name + "-")]
    if not matches:
        return None
    best = max(matches, key=len)
    return best, table[best]


def training_price(base_model: str, overrides: Mapping[str, float]) -> TrainingPrice | None:
    """The training price of `base_model`: the config's `pricing` entry, else the table."""
    if base_model in overrides:
        return TrainingPrice(overrides[base_model], f"config pricing.{base_model}.training")
    found = _longest_prefix(base_model, TRAINING_PRICES)
    if found is None:
        return None
    name, price = found
    return TrainingPrice(price, f"tunegate's table of {TRAINING_PRICES_AS_OF} ({name})")


def context_limit(base_model: str) -> int | None:
    """The most tokens one training example of `base_model` may have (None: unknown)."""
    found = _longest_prefix(base_model, CONTEXT_LIMITS)
    return found[1] if found else None


def default_epochs(examples: int) -> int:
    """The epochs OpenAI picks for `examples` training examples when none are given."""
    if examples * 3 < 100:
        return min(25, 100 // max(1, examples))
    if examples * 3 > 25_000:
        return max(1, 25_000 // examples)
    return 3


def billed_training_tokens(example_tokens: Iterable[int], epochs: int, limit: int | None) -> int:
    """The sum of min(context limit, example tokens), times epochs (SPEC §12)."""
    return epochs * sum(min(n, limit) if limit else n for n in example_tokens)
