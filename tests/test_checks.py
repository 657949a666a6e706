"""Output checks (pure): each kind passing and failing, sentence counting, the corrective
message, and the configs that cannot work."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunegate.quality.checks import (
    MIN_LETTERS,
    SAMPLE_CHARS,
    CheckConfigError,
    Detector,
    compile_checks,
    corrective_message,
    count_sentences,
    language_sample,
    languages_of,
)

GERMAN = (
    "Guten Tag, vielen Dank für Ihre Nachricht. Wir prüfen Ihre Rechnung umgehend und "
    "melden uns innerhalb eines Werktages bei Ihnen. Ihr Acme-Team"
)
ENGLISH = (
    "Hello, thank you for your message. We are checking your invoice right away and "
    "will get back to you within one business day. Your Acme Team"
)
REPLY_DE: list[Any] = [
    {"language": "de"},
    {"max_sentences": 3},
    {"max_chars": 600},
    {"contains": "Ihr Acme-Team"},
    {"not_contains": ["As an AI", "Als KI"]},
    {"regex": "^[^<>]*$"},
]


def checks(specs: list[Any], reask: bool = True) -> Any:
    languages = languages_of(specs)
    return compile_checks(specs, Detector(languages) if languages else None, reask)


def test_a_good_german_reply_passes_every_check() -> None:
    verdict = checks(REPLY_DE).run(GERMAN)
    assert verdict.passed
    assert [r.kind for r in verdict.results] == [
        "language",
        "max_sentences",
        "max_chars",
        "contains",
        "not_contains",
        "regex",
    ]
    assert verdict.first_failure is None


def test_an_english_reply_fails_language_naming_both_codes() -> None:
    verdict = checks([{"language": "de"}]).run(ENGLISH)
    assert not verdict.passed
    assert verdict.first_failure == "language: expected de, detected en"


@pytest.mark.parametrize(
    ("spec", "text", "detail"),
    [
        ({"max_sentences": 2}, "One. Two! Three?", "max_sentences: 3 sentences, at most 2"),
        ({"max_chars": 5}, "äöüßéx", "max_chars: 6 characters, at most 5"),
        ({"contains": ["a", "zz"]}, "abc", 'contains: missing "zz"'),
        ({"not_contains": "Als KI"}, "Als KI kann ich", 'not_contains: found "Als KI"'),
        ({"regex": "^[^<>]*$"}, "a <b> c", 'regex: no match for "^[^<>]*$"'),
    ],
)
def test_each_cheap_check_fails_with_its_detail(
    spec: dict[str, Any], text: str, detail: str
) -> None:
    verdict = checks([spec]).run(text)
    assert verdict.first_failure == detail
    assert [r.passed for r in verdict.results] == [False]


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ({"max_sentences": 3}, "One. Two! Three?"),
        ({"max_chars": 6}, "äöüßéx"),
        ({"contains": ["a", "b"]}, "abc"),
        ({"not_contains": ["As an AI", "Als KI"]}, "Gern helfe ich."),
        ({"regex": "Team$"}, "Ihr Acme-Team"),
    ],
)
def test_each_cheap_check_passes(spec: dict[str, Any], text: str) -> None:
    assert checks([spec]).run(text).passed


def test_texts_under_twenty_letters_pass_the_language_check() -> None:
    language = checks([{"language": "de"}])
    assert language.run("Thank you, bye!").passed
    assert sum(c.isalpha() for c in "Thank you, bye!") < MIN_LETTERS


def test_long_answers_are_told_by_their_language_at_a_bounded_sample() -> None:
    language = checks([{"language": "de"}])
    long_german, long_english = " ".join([GERMAN] * 12), " ".join([ENGLISH] * 12)
    assert len(long_german) > 5 * SAMPLE_CHARS
    assert language.run(long_german).passed
    assert language.run(long_english).first_failure == "language: expected de, detected en"


WORDS = GERMAN.split()


@given(st.lists(st.sampled_from(WORDS), min_size=60, max_size=200).map(" ".join))
def test_the_sample_is_whole_words_of_the_opening_and_close(text: str) -> None:
    assert language_sample(GERMAN) == GERMAN  # short texts are read whole
    sample = language_sample(text)
    assert len(text) > SAMPLE_CHARS >= len(sample)
    assert set(sample.split()) <= set(WORDS)  # no word cut in half
    first, last = sample.split()[0], sample.split()[-1]
    assert text.startswith(first + " ") and text.endswith(" " + last)


def test_every_check_is_evaluated_and_the_message_names_each_failure() -> None:
    verdict = checks(REPLY_DE).run(ENGLISH + " As an AI. Really. <b>")
    failed = [r.kind for r in verdict.failures]
    assert failed == ["language", "max_sentences", "contains", "not_contains", "regex"]
    message = corrective_message(verdict)
    assert "language: expected de, detected en" in message
    assert "max_sentences: 5 sentences, at most 3" in message
    assert 'contains: missing "Ihr Acme-Team"' in message
    assert "previous answer" in message


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("Hallo", 1),
        ("Hallo. Wie geht's", 2),
        ("Version 3.5 ist da.", 1),
        ("Wirklich?! Ja… Gut.", 3),
        ("Ende.\n\nNoch ein Satz", 2),
        ("...", 0),
    ],
)
def test_sentences_end_at_punctuation_followed_by_space_or_end(text: str, count: int) -> None:
    assert count_sentences(text) == count


@given(st.lists(st.text(alphabet="abc xyz", min_size=1).filter(str.strip), max_size=8))
def test_joined_sentences_count_as_many_as_joined(words: list[str]) -> None:
    text = " ".join(w.strip() + "." for w in words)
    assert count_sentences(text) == len(words)


@given(st.text(max_size=80), st.integers(min_value=1, max_value=100))
def test_max_chars_counts_code_points(text: str, limit: int) -> None:
    assert checks([{"max_chars": limit}]).run(text).passed == (len(text) <= limit)


@given(st.text(min_size=1, max_size=10), st.text(max_size=40))
def test_contains_and_not_contains_are_opposites(literal: str, text: str) -> None:
    assert checks([{"contains": literal}]).run(text).passed == (literal in text)
    assert checks([{"not_contains": literal}]).run(text).passed == (literal not in text)


@pytest.mark.parametrize(
    ("specs", "where", "words"),
    [
        ([{"language": "xx"}], "0.language", "ISO 639-1"),
        ([{"language": "DE"}], "0.language", "ISO 639-1"),
        ([{"language": False}], "0.language", "quote it"),
        ([{"regex": "([a-z"}], "0.regex", "not a valid regular expression"),
        ([{"max_chars": 0}], "0.max_chars", "at least 1"),
        ([{"max_sentences": -2}], "0.max_sentences", "at least 1"),
        ([{"max_sentences": True}], "0.max_sentences", "whole number"),
        ([{"max_chars": "600"}], "0.max_chars", "whole number"),
        ([{"contains": []}], "0.contains", "non-empty list"),
        ([{"contains": [""]}], "0.contains", "non-empty string"),
        ([{"shouting": True}], "0.shouting", "unknown check"),
        ([{"max_chars": 3, "regex": "x"}], "0", "one key"),
        (
            [{"contains": "Ihr Acme-Team"}, {"not_contains": "Acme"}],
            "1.not_contains",
            "no answer can pass",
        ),
        ([{"max_chars": 5}, {"contains": "Ihr Acme-Team"}], "0.max_chars", "no answer can pass"),
    ],
)
def test_configs_that_cannot_work_are_refused_with_their_path(
    specs: list[Any], where: str, words: str
) -> None:
    with pytest.raises(CheckConfigError) as caught:
        checks(specs)
    assert caught.value.where == where
    assert words in str(caught.value)


def test_one_detector_knows_the_named_and_the_contrast_languages() -> None:
    detector = Detector(["pl"])
    assert {"pl", "en", "de"} <= set(detector.codes)
    assert detector.detect("Dzień dobry, dziękujemy za wiadomość i pozdrawiamy.") == "pl"
