"""The JSON guard (pure): strip, parse, repair, validate, and what it says when it fails."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import TRIAGE_SCHEMA
from tunegate.quality.jsonguard import SchemaError, check, compile_schema, corrective_message

SCHEMA = compile_schema(TRIAGE_SCHEMA)
RIGHT = {"category": "billing", "priority": "high"}


def test_valid_json_is_valid_and_compact() -> None:
    verdict = check('{"category": "billing",  "priority": "high"}', SCHEMA)
    assert verdict.status == "valid"
    assert verdict.value == RIGHT
    assert verdict.text == '{"category":"billing","priority":"high"}'
    assert verdict.error is None


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"category": "billing", "priority": "high"}\n```',
        '```\n{"category": "billing", "priority": "high"}\n```',
        '  \n```JSON\n{"category": "billing", "priority": "high"}```  ',
    ],
)
def test_a_fence_around_valid_json_is_packaging_not_breakage(text: str) -> None:
    verdict = check(text, SCHEMA)
    assert verdict.status == "valid"
    assert verdict.value == RIGHT


@pytest.mark.parametrize(
    "text",
    [
        '{"category": "billing", "priority": "high",}',
        "{'category': 'billing', 'priority': 'high'}",
        '{"category": "billing", "priority": "high"',
        'Sure! {"category": "billing", "priority": "high"}',
    ],
)
def test_trivial_breakage_is_repaired(text: str) -> None:
    verdict = check(text, SCHEMA)
    assert verdict.status == "repaired"
    assert verdict.value == RIGHT
    assert json.loads(verdict.text) == RIGHT


def test_a_missing_required_field_is_invalid_naming_path_and_keyword() -> None:
    verdict = check('{"category": "billing"}', SCHEMA)
    assert verdict.status == "invalid"
    assert verdict.error == "$: missing required properties ['priority'] (required)"
    assert verdict.value is None


def test_a_wrong_enum_value_is_invalid_naming_the_allowed_values() -> None:
    verdict = check('{"category": "billing", "priority": "urgent-canary"}', SCHEMA)
    assert verdict.status == "invalid"
    assert verdict.error is not None
    assert verdict.error.startswith("$.priority: must satisfy enum=")
    assert "(enum)" in verdict.error
    assert "urgent-canary" not in verdict.error  # the answer's text is never echoed


@pytest.mark.parametrize(
    "text", ["I think this is a billing issue.", "", "   ", "42", '"billing"', "null", "{}"]
)
def test_prose_and_bare_values_are_invalid(text: str) -> None:
    assert check(text, SCHEMA).status == "invalid"


def test_parse_failures_never_echo_the_answer() -> None:
    verdict = check("canary-secret-text with no json at all", SCHEMA)
    assert verdict.status == "invalid"
    assert verdict.error is not None
    assert "canary" not in verdict.error


def test_without_a_schema_any_json_object_passes() -> None:
    assert check('{"anything": [1, 2]}', None).status == "valid"
    assert check("[1, 2,]", None).status == "repaired"


@pytest.mark.parametrize(
    "schema",
    [{"type": "objekt"}, {"required": "category"}, {"properties": {"a": {"enum": "x"}}}],
)
def test_a_bad_schema_is_refused_at_compile_time(schema: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        compile_schema(schema)


def test_the_corrective_message_carries_the_validators_message() -> None:
    verdict = check('{"category": "billing"}', SCHEMA)
    message = corrective_message(verdict)
    assert verdict.error is not None
    assert verdict.error in message


triage_objects = st.fixed_dictionaries(
    {
        "category": st.sampled_from(["billing", "bug", "account", "other"]),
        "priority": st.sampled_from(["low", "medium", "high"]),
    }
)
whitespace = st.text(alphabet=" \t\n\r", max_size=5)


@given(triage_objects, st.integers(min_value=0, max_value=4), whitespace, whitespace, st.booleans())
def test_any_valid_object_comes_back_equal(
    value: dict[str, str], indent: int, before: str, after: str, fenced: bool
) -> None:
    text = json.dumps(value, indent=indent or None)
    if fenced:
        text = f"```json\n{text}\n```"
    verdict = check(before + text + after, SCHEMA)
    assert verdict.status == "valid"
    assert verdict.value == value


@given(st.text(max_size=200))
def test_whatever_passes_is_schema_valid(text: str) -> None:
    verdict = check(text, SCHEMA)
    if verdict.status != "invalid":
        assert check(verdict.text, SCHEMA).status == "valid"
        assert json.loads(verdict.text) == verdict.value


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=10,
    )
)
def test_arbitrary_json_never_raises(value: Any) -> None:
    verdict = check(json.dumps(value), SCHEMA)
    assert verdict.status in ("valid", "invalid")
