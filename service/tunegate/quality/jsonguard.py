"""The JSON output guard (SPEC §3 JSON enforcement): pure, and the only module that
imports `jsonschema` and `json_repair`.

    answer text ─► strip whitespace and one code fence ─► parse
                     └─ parse failed ─► repair (json-repair) ─► parse
                 ─► validate against the task's compiled schema ─► Verdict

`valid` means the answer parsed as sent (surrounding whitespace and a code fence are
packaging, not breakage) and satisfied the schema; `repaired` means it needed json-repair
first; `invalid` means no JSON value, or one that breaks the schema. The text returned to
callers is the validated value re-serialized compactly, so it is byte-for-byte the same
for the same value whatever the model's spacing, and a repaired answer is never passed on
in its broken form. Error messages name the JSON path and the schema keyword, never the
answer's text.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import json_repair
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError as _JsonschemaSchemaError
from jsonschema.exceptions import ValidationError, best_match


class SchemaError(ValueError):
    """A schema that is not valid JSON Schema (draft 2020-12)."""


@dataclass(frozen=True, eq=False)
class CompiledSchema:
    """A schema checked and compiled once, at config load."""

    validator: Draft202012Validator
    canonical: bytes


def compile_schema(schema: Mapping[str, Any]) -> CompiledSchema:
    try:
        Draft202012Validator.check_schema(schema)
    except _JsonschemaSchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise SchemaError(f"at {where}: {exc.message}") from None
    return CompiledSchema(
        validator=Draft202012Validator(schema),
        canonical=orjson.dumps(schema, option=orjson.OPT_SORT_KEYS),
    )


Status = Literal["valid", "repaired", "invalid"]


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Status
    value: Any
    text: str
    error: str | None = None


def _strip(text: str) -> str:
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        inner = text[3:-3]
        newline = inner.find("\n")
        # Drop a language tag such as ```json on the opening line.
        if (newline != -1 and inner[:newline].strip().isalnum()) or (
            newline != -1 and not inner[:newline].strip()
        ):
            inner = inner[newline + 1 :]
        text = inner.strip()
    return text


def check(text: str, schema: CompiledSchema | None) -> Verdict:
    """The verdict on one answer for a JSON task."""
    stripped = _strip(text)
    if len(stripped) <= _MEMO_MAX_CHARS:
        # Short answers repeat (a classifier has few distinct ones): remember verdicts.
        return _memo_verdict(stripped, schema)
    return _verdict(stripped, schema)


# Verdicts are immutable records; `value` is shared between callers and never mutated.
_MEMO_MAX_CHARS = 512


def _verdict(stripped: str, schema: CompiledSchema | None) -> Verdict:
    status: Status = "valid"
    try:
        value = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        status = "repaired"
        value = _repair(stripped)
        if value is None:
            return Verdict("invalid", None, "", "the answer is not JSON")
    if schema is not None:
        error = best_match(schema.validator.iter_errors(value))
        if error is not None:
            return Verdict("invalid", None, "", describe(error))
    return Verdict(status, value, orjson.dumps(value).decode())


_memo_verdict = functools.lru_cache(maxsize=4096)(_verdict)


def _repair(text: str) -> Any:
    """What json-repair makes of `text`, when that is an object or an array: a bare
    string or number repaired out of prose is no answer."""
    if "{" not in text and "[" not in text:
        return None
    try:
        value = json_repair.loads(text, skip_json_loads=True)
    except Exception:  # json-repair documents no exceptions; any failure means no JSON
        return None
    if isinstance(value, dict | list) and value:
        return value
    return None


# Keywords whose expected value is short and safe to quote back to the model.
_SHOWN_KEYWORDS = frozenset(
    {"enum", "const", "type", "minimum", "maximum", "minLength", "maxLength", "pattern"}
)


def describe(error: ValidationError) -> str:
    """`$.path: <what the schema expects> (keyword)`, without echoing the answer."""
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    keyword = str(error.validator)
    expected: Any = error.validator_value
    if keyword == "required":
        present = error.instance if isinstance(error.instance, dict) else {}
        missing = [name for name in expected if name not in present]
        return f"{path}: missing required properties {missing} (required)"
    if keyword == "additionalProperties":
        return f"{path}: only the properties the schema lists are allowed (additionalProperties)"
    if keyword in _SHOWN_KEYWORDS:
        return f"{path}: must satisfy {keyword}={orjson.dumps(expected).decode()} ({keyword})"
    return f"{path}: fails the schema's {keyword!r} rule ({keyword})"


def corrective_message(verdict: Verdict) -> str:
    """The user turn of a re-ask after an invalid answer."""
    return (
        f"Your previous answer was not valid: {verdict.error}. Answer again with only the "
        "JSON value that satisfies the required format, and nothing else."
    )
