"""Model prices and costs: overrides, genai-prices' table, memoization, header format."""

from __future__ import annotations

import logging
import math
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from genai_prices import Usage, calc_price
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import gateway_config, task_config
from tunegate.config.compiled import load_config
from tunegate.errors import ConfigError
from tunegate.pricing import (
    TRAINING_PRICES_AS_OF,
    Price,
    PriceTable,
    TrainingPrice,
    billed_training_tokens,
    context_limit,
    default_epochs,
    format_usd,
    maintained_price,
    training_price,
)

FT_MODEL = "ft:gpt-3.5-turbo-0613:acme::XYZ"


class CountingLookup:
    """The real genai-prices lookup, counting the models it is asked for."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, model: str) -> Price | None:
        self.calls.append(model)
        return maintained_price(model)


def warnings_about(caplog: pytest.LogCaptureFixture, model: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "tunegate.pricing" and r.levelno == logging.WARNING and model in r.message
    ]


def test_gpt_35_turbo_has_the_tables_price() -> None:
    # The figures genai-prices 0.2.3 (pinned) lists for OpenAI gpt-3.5-turbo.
    assert PriceTable({}).price_for("gpt-3.5-turbo") == Price(0.5, 1.5)


@pytest.mark.parametrize(
    "model",
    [FT_MODEL, "ft:gpt-3.5-turbo-0613:acme::7qTVM5AR", "ft:gpt-3.5-turbo-1106:acme:triage:abc"],
)
def test_fine_tuned_gpt_35_turbo_has_the_tables_fine_tuned_price(model: str) -> None:
    table = PriceTable({})
    tuned, base = table.price_for(model), table.price_for("gpt-3.5-turbo")
    assert tuned == Price(3.0, 6.0)
    assert base is not None
    assert base.input_per_mtok > 0
    assert base.output_per_mtok > 0
    assert tuned.input_per_mtok > base.input_per_mtok
    assert tuned.output_per_mtok > base.output_per_mtok


@pytest.mark.parametrize("model", ["gpt-3.5-turbo", FT_MODEL])
def test_cost_matches_genai_prices_own_calculation(model: str) -> None:
    expected = calc_price(
        Usage(input_tokens=1234, output_tokens=567), model_ref=model, provider_id="openai"
    ).total_price
    cost = PriceTable({}).cost_usd(model, 1234, 567)
    assert cost is not None
    assert cost == pytest.approx(float(expected), rel=1e-12)


def test_fine_tuned_usage_costs_more_than_the_base_model() -> None:
    table = PriceTable({})
    tuned, base = table.cost_usd(FT_MODEL, 1000, 200), table.cost_usd("gpt-3.5-turbo", 1000, 200)
    assert tuned is not None
    assert base is not None
    assert tuned > base > 0


def test_cost_is_tokens_times_price_per_million() -> None:
    table = PriceTable({"m": Price(3.0, 6.0)})
    assert table.cost_usd("m", 1000, 500) == pytest.approx(0.006)
    assert table.cost_usd("m", 0, 0) == 0


def test_overrides_win_over_the_table_without_a_lookup() -> None:
    lookup = CountingLookup()
    table = PriceTable(
        {"gpt-3.5-turbo": Price(9.0, 18.0), "local-llama": Price(0.1, 0.2)}, lookup=lookup
    )
    assert table.price_for("gpt-3.5-turbo") == Price(9.0, 18.0)
    assert table.price_for("local-llama") == Price(0.1, 0.2)
    assert table.cost_usd("gpt-3.5-turbo", 1_000_000, 0) == pytest.approx(9.0)
    assert lookup.calls == []


def test_an_override_is_keyed_by_the_exact_model_name() -> None:
    table = PriceTable({"gpt-3.5-turbo": Price(9.0, 18.0)})
    assert table.price_for("gpt-3.5-turbo-0125") == Price(0.5, 1.5)


def test_a_price_is_looked_up_once_per_model() -> None:
    lookup = CountingLookup()
    table = PriceTable({}, lookup=lookup)
    first = table.price_for("gpt-3.5-turbo")
    assert table.price_for("gpt-3.5-turbo") is first
    assert table.cost_usd("gpt-3.5-turbo", 10, 10) is not None
    assert table.price_for(FT_MODEL) == Price(3.0, 6.0)
    assert table.price_for(FT_MODEL) == Price(3.0, 6.0)
    assert lookup.calls == ["gpt-3.5-turbo", FT_MODEL]


def test_preload_resolves_ahead_of_requests() -> None:
    lookup = CountingLookup()
    table = PriceTable({}, lookup=lookup)
    table.preload(["gpt-3.5-turbo", FT_MODEL, "gpt-3.5-turbo"])
    assert lookup.calls == ["gpt-3.5-turbo", FT_MODEL]
    table.cost_usd("gpt-3.5-turbo", 1, 1)
    table.cost_usd(FT_MODEL, 1, 1)
    assert lookup.calls == ["gpt-3.5-turbo", FT_MODEL]


@pytest.mark.parametrize("model", ["no-such-model", "ft:no-such-base-0613:acme::XYZ"])
def test_an_unknown_model_costs_none_and_is_logged_once(
    model: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tunegate.pricing")
    lookup = CountingLookup()
    table = PriceTable({}, lookup=lookup)
    for _ in range(3):
        assert table.price_for(model) is None
        assert table.cost_usd(model, 100, 100) is None
    assert len(warnings_about(caplog, model)) == 1
    assert lookup.calls == [model]


def test_a_failing_lookup_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tunegate.pricing")
    calls: list[str] = []

    def broken(model: str) -> Price | None:
        calls.append(model)
        raise ValueError("corrupt price data")

    table = PriceTable({}, lookup=broken)
    assert table.cost_usd("gpt-3.5-turbo", 10, 10) is None
    assert table.cost_usd("gpt-3.5-turbo", 10, 10) is None
    assert calls == ["gpt-3.5-turbo"]
    assert len(warnings_about(caplog, "gpt-3.5-turbo")) == 1


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_a_price_must_be_finite_and_non_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="input_per_mtok"):
        Price(bad, 1.0)
    with pytest.raises(ValueError, match="output_per_mtok"):
        Price(1.0, bad)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1e-12, "0"),
        (0.000102, "0.000102"),
        (2.5e-5, "0.000025"),
        (3e-6, "0.000003"),
        (1.5e-9, "0.0000000015"),
        (0.5, "0.5"),
        (1.0, "1"),
        (1000.0, "1000"),
        (1234.5678, "1234.5678"),
        (1e20, "100000000000000000000"),
    ],
)
def test_format_usd_examples(value: float, text: str) -> None:
    assert format_usd(value) == text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_format_usd_rejects_non_finite_values(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        format_usd(bad)


@given(st.floats(min_value=0, max_value=1000))
def test_format_usd_is_plain_decimal_and_round_trips(value: float) -> None:
    text = format_usd(value)
    assert "e" not in text.lower()
    assert Decimal(text) >= 0
    assert abs(float(text) - value) <= 1e-10
    if "." in text:
        assert not text.endswith(("0", "."))
        assert len(text.partition(".")[2]) <= 10


@pytest.mark.parametrize(
    ("examples", "epochs"),
    [(1, 25), (4, 25), (5, 20), (10, 10), (33, 3), (34, 3), (8333, 3), (8334, 2), (30000, 1)],
)
def test_default_epochs_follow_openais_rule(examples: int, epochs: int) -> None:
    assert default_epochs(examples) == epochs


def test_training_prices_come_from_the_config_else_the_dated_table() -> None:
    table = training_price("gpt-3.5-turbo-0125", {})
    assert table is not None and table.usd_per_mtok == 8.0
    assert table.source == f"tunegate's table of {TRAINING_PRICES_AS_OF} (gpt-3.5-turbo)"
    mini = training_price("gpt-4o-mini-2024-07-18", {})
    assert mini is not None and mini.usd_per_mtok == 3.0
    own = training_price("gpt-3.5-turbo", {"gpt-3.5-turbo": 6.5})
    assert own == TrainingPrice(6.5, "config pricing.gpt-3.5-turbo.training")
    assert training_price("my-llama", {}) is None


def test_context_limits_per_base_model() -> None:
    assert context_limit("gpt-3.5-turbo-0613") == 4096
    assert context_limit("gpt-3.5-turbo-0125") == 16385
    assert context_limit("gpt-3.5-turbo") == 16385
    assert context_limit("unknown") is None
    assert billed_training_tokens([10, 5000, 20], 3, 4096) == 3 * (10 + 4096 + 20)


def test_a_pricing_entry_may_carry_only_a_training_price(tmp_path: Path) -> None:
    config = gateway_config("http://127.0.0.1:9", {"triage": task_config()})
    config["pricing"] = {"gpt-3.5-turbo": {"training": 6.0}, "ft:x": {"input": 1, "output": 2}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    assert dict(loaded.training_prices) == {"gpt-3.5-turbo": 6.0}
    assert dict(loaded.pricing) == {"ft:x": (1.0, 2.0)}
    config["pricing"] = {"gpt-3.5-turbo": {"input": 1.0}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"pricing\.gpt-3\.5-turbo.*both `input` and `output`"):
        load_config(path)
