"""Output checks (SPEC §8, §12 Checks): pure verdicts on an answer's text, and the
corrective message of a re-ask. The only module that imports `lingua`.

    output.checks (YAML) ─► compile_checks (config load) ─► CheckSet of frozen records
    answer text ─► CheckSet.run ─► CheckVerdict: one CheckResult per check, in order

Kinds: `language` (ISO 639-1, detected offline by lingua), `max_sentences`, `max_chars`,
`contains` and `not_contains` (literals, case-sensitive; a list means all of them) and
`regex` (Python `re`, search semantics). Every check is evaluated, so each one's pass
rate is counted; a failure's detail names the check and what it saw, never the text.

Language detection: one `Detector` per config, built at load for the languages the config
names plus `CONTRAST_LANGUAGES` (so an answer in English is detected as English, not as
the nearest of the configured ones). Its models are loaded at build (about 30 MB a
language: 130 MB for de, en, fr, es); one over all of lingua's 75 would cost about a
millisecond per answer and over a GiB. Detection reads a bounded sample (`language_sample`:
the whole text up to `SAMPLE_CHARS`, else its opening and its close), since lingua's cost
grows with the text and its accuracy on these languages does not past a few sentences.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

KINDS = ("language", "max_sentences", "max_chars", "contains", "not_contains", "regex")
# Languages every detector also knows, so a wrong-language answer is told apart.
CONTRAST_LANGUAGES = ("en", "de", "fr", "es")
# Texts with fewer letters than this pass the language check: too short to tell.
MIN_LETTERS = 20
# The most characters language detection reads: a longer text is told by its first and
# last SAMPLE_CHARS / 2 (cut at spaces), so an answer that opens or closes in another
# language is still seen, at a cost that does not grow with the answer.
SAMPLE_CHARS = 300
# A sentence ends at one or more of these followed by whitespace or the end of the text.
_SENTENCE_END = re.compile(r"[.!?…]+(?:\s+|$)")


class CheckConfigError(ValueError):
    """A check that cannot work; `where` is the path below the check's entry
    (e.g. `language`), for the config loader to name with the YAML path."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


class Detector:
    """A lingua detector for a fixed, small set of languages, built once per config with
    its models loaded (so no request pays for loading them)."""

    def __init__(self, codes: Iterable[str]) -> None:
        wanted = sorted({*codes, *CONTRAST_LANGUAGES})
        languages = [Language.from_iso_code_639_1(_iso(code)) for code in wanted]
        self.codes = tuple(wanted)
        self._lingua: LanguageDetector = (
            LanguageDetectorBuilder.from_languages(*languages)
            .with_preloaded_language_models()
            .build()
        )

    def detect(self, text: str) -> str | None:
        """The ISO 639-1 code of `text`'s language (lowercase), or None if undecided;
        read from `language_sample(text)`."""
        found = self._lingua.detect_language_of(language_sample(text))
        return found.iso_code_639_1.name.lower() if found is not None else None


def language_sample(text: str, limit: int = SAMPLE_CHARS) -> str:
    """`text` if it has at most `limit` characters, else its opening and its close, each
    at most `(limit - 1) // 2` characters cut back to whole words, joined by a space."""
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    head, tail = text[:half], text[-half:]
    if text[half] != " " and " " in head:  # the head ends inside a word: drop it
        head = head[: head.rindex(" ")]
    if text[-half - 1] != " " and " " in tail:  # the tail starts inside a word
        tail = tail[tail.index(" ") + 1 :]
    return f"{head.rstrip()} {tail.lstrip()}"


def has_letters(text: str, at_least: int) -> bool:
    """Whether `text` has `at_least` letters (stops counting once it has)."""
    for ch in text:
        if ch.isalpha():
            at_least -= 1
            if at_least <= 0:
                return True
    return at_least <= 0


def detectable(code: Any) -> bool:
    """Whether lingua can detect the language with ISO 639-1 code `code`."""
    try:
        _iso(code)
    except ValueError:
        return False
    return True


def _iso(code: Any) -> IsoCode639_1:
    if not isinstance(code, str) or len(code) != 2 or not code.isalpha() or not code.islower():
        raise ValueError(code)
    return IsoCode639_1.from_str(code)


# -- the checks: frozen records, each with `failure(text)` -> detail or None -----------


@dataclass(frozen=True, slots=True)
class LanguageCheck:
    code: str
    detector: Detector
    kind: str = "language"

    def failure(self, text: str) -> str | None:
        if not has_letters(text, MIN_LETTERS):
            return None
        found = self.detector.detect(text)
        if found == self.code:
            return None
        return f"language: expected {self.code}, detected {found or 'none'}"


@dataclass(frozen=True, slots=True)
class MaxSentencesCheck:
    limit: int
    kind: str = "max_sentences"

    def failure(self, text: str) -> str | None:
        count = count_sentences(text)
        if count <= self.limit:
            return None
        return f"max_sentences: {count} sentences, at most {self.limit}"


@dataclass(frozen=True, slots=True)
class MaxCharsCheck:
    limit: int
    kind: str = "max_chars"

    def failure(self, text: str) -> str | None:
        if len(text) <= self.limit:
            return None
        return f"max_chars: {len(text)} characters, at most {self.limit}"


@dataclass(frozen=True, slots=True)
class ContainsCheck:
    literals: tuple[str, ...]
    kind: str = "contains"

    def failure(self, text: str) -> str | None:
        missing = [literal for literal in self.literals if literal not in text]
        if not missing:
            return None
        return "contains: missing " + ", ".join(_quoted(m) for m in missing)


@dataclass(frozen=True, slots=True)
class NotContainsCheck:
    literals: tuple[str, ...]
    kind: str = "not_contains"

    def failure(self, text: str) -> str | None:
        found = [literal for literal in self.literals if literal in text]
        if not found:
            return None
        return "not_contains: found " + ", ".join(_quoted(f) for f in found)


@dataclass(frozen=True, slots=True)
class RegexCheck:
    pattern: re.Pattern[str]
    kind: str = "regex"

    def failure(self, text: str) -> str | None:
        if self.pattern.search(text) is not None:
            return None
        return f"regex: no match for {_quoted(self.pattern.pattern)}"


Check = (
    LanguageCheck
    | MaxSentencesCheck
    | MaxCharsCheck
    | ContainsCheck
    | NotContainsCheck
    | RegexCheck
)


def count_sentences(text: str) -> int:
    """Sentences in `text`: the non-blank pieces between sentence ends (SPEC §12)."""
    return sum(1 for piece in _SENTENCE_END.split(text) if piece.strip())


def _quoted(literal: str) -> str:
    return '"' + literal.replace('"', '\\"') + '"'


# -- verdicts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    kind: str
    passed: bool
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class CheckVerdict:
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    @property
    def first_failure(self) -> str | None:
        failures = self.failures
        return failures[0].detail if failures else None


@dataclass(frozen=True, slots=True)
class CheckSet:
    """A task's checks, in evaluation order, and what to do when one fails."""

    checks: tuple[Check, ...]
    reask: bool = True

    def run(self, text: str) -> CheckVerdict:
        """Evaluate every check on `text`."""
        results = []
        for check in self.checks:
            detail = check.failure(text)
            results.append(CheckResult(check.kind, detail is None, detail))
        return CheckVerdict(tuple(results))

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.checks if isinstance(c, LanguageCheck))


def corrective_message(verdict: CheckVerdict) -> str:
    """The user turn of a re-ask after an answer failed checks: names each failure."""
    failed = "; ".join(r.detail or r.kind for r in verdict.failures)
    return (
        f"Your previous answer failed these checks: {failed}. Answer the same request "
        "again so that it passes every one of them."
    )


# -- compiling the config ---------------------------------------------------------------


def languages_of(specs: Sequence[Any]) -> set[str]:
    """The language codes `specs` name that a detector can know (for one `Detector`
    per config); unknown codes are reported by `compile_checks`."""
    return {
        spec["language"]
        for spec in specs
        if isinstance(spec, Mapping) and detectable(spec.get("language"))
    }


def compile_checks(specs: Sequence[Any], detector: Detector | None, reask: bool) -> CheckSet:
    """Compile `output.checks`; raise `CheckConfigError` with the path below the list
    (`2.regex`) naming the first problem. `detector` must know every language named."""
    checks = tuple(_compile_one(i, spec, detector) for i, spec in enumerate(specs))
    _refuse_impossible(checks)
    return CheckSet(checks, reask)


def _compile_one(index: int, spec: Any, detector: Detector | None) -> Check:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise CheckConfigError(
            str(index), f"each check is a mapping with one key, one of: {', '.join(KINDS)}"
        )
    ((kind, value),) = spec.items()
    where = f"{index}.{kind}"
    if kind not in KINDS:
        raise CheckConfigError(where, f"unknown check; use one of: {', '.join(KINDS)}")
    if kind == "language":
        if isinstance(value, bool):  # YAML reads a bare `no` (Norwegian) as false
            raise CheckConfigError(where, "a code, not a boolean: quote it ('no')")
        if not detectable(value):
            raise CheckConfigError(
                where, f"{value!r} is not an ISO 639-1 code the language detector knows"
            )
        if detector is None or value not in detector.codes:
            raise CheckConfigError(where, "the config's language detector does not know it")
        return LanguageCheck(value, detector)
    if kind in ("max_sentences", "max_chars"):
        if type(value) is not int or value < 1:
            raise CheckConfigError(where, "must be a whole number of at least 1")
        return MaxSentencesCheck(value) if kind == "max_sentences" else MaxCharsCheck(value)
    if kind == "regex":
        return RegexCheck(_pattern(where, value))
    literals = _literals(where, value)
    return ContainsCheck(literals) if kind == "contains" else NotContainsCheck(literals)


def _pattern(where: str, value: Any) -> re.Pattern[str]:
    if not isinstance(value, str) or not value:
        raise CheckConfigError(where, "must be a non-empty regular expression")
    try:
        return re.compile(value)
    except re.error as exc:
        raise CheckConfigError(where, f"not a valid regular expression: {exc}") from None


def _literals(where: str, value: Any) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise CheckConfigError(where, "must be a string or a non-empty list of strings")
    if not all(isinstance(v, str) and v for v in values):
        raise CheckConfigError(where, "every literal must be a non-empty string")
    return tuple(values)


def _refuse_impossible(checks: tuple[Check, ...]) -> None:
    """Refuse checks no answer can pass together (SPEC §12)."""
    required = [lit for c in checks if isinstance(c, ContainsCheck) for lit in c.literals]
    for index, check in enumerate(checks):
        if isinstance(check, NotContainsCheck):
            for forbidden in check.literals:
                for literal in required:
                    if forbidden in literal:
                        raise CheckConfigError(
                            f"{index}.not_contains",
                            f"forbids {_quoted(forbidden)}, which a `contains` check requires "
                            f"(in {_quoted(literal)}): no answer can pass both",
                        )
        if isinstance(check, MaxCharsCheck) and required:
            longest = max(required, key=len)
            if len(longest) > check.limit:
                raise CheckConfigError(
                    f"{index}.max_chars",
                    f"{check.limit} is below the {len(longest)} characters of the required "
                    f"{_quoted(longest)}: no answer can pass both",
                )
