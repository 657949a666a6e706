"""A simulated judge model (pure): scores the answers it is shown from what it can see in
them, with seeded noise the scenario sets (`judge_noise`, in score points).

A judge prompt is a user turn holding `Answer:` (pointwise: it answers
`{"score": 0-10, "reason": ...}`) or `Answer A:` and `Answer B:` (pairwise: it answers
`{"better": "A" | "B" | "tie", "reason": ...}`); each answer's text runs to the next
blank line followed by a heading. What the judge sees, two points each: the answer is
German, signed `Acme-Team`, at most three sentences, free of an AI disclaimer, free of
markup. Its score is their sum plus uniform noise in ±`judge_noise`, within [0, 10]; of
two answers, one is better when it scores over a point more, else it is a tie.
"""

from __future__ import annotations

import hashlib
import re

import orjson

_ANSWER = re.compile(r"^Answer:\n(.*?)(?:\n\n[A-Z][A-Za-z ]*:\n|\Z)", re.DOTALL | re.MULTILINE)
_ANSWER_A = re.compile(r"^Answer A:\n(.*?)\n\nAnswer B:\n", re.DOTALL | re.MULTILINE)
_ANSWER_B = re.compile(r"^Answer B:\n(.*?)(?:\n\n[A-Z][A-Za-z ]*:\n|\Z)", re.DOTALL | re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?…]+(?:\s+|$)")
_GERMAN_WORDS = re.compile(r"\b(Sie|Ihnen|Ihr|Ihre|und|wir|uns|für|Nachricht|Guten)\b")
_ENGLISH_WORDS = re.compile(r"\b(you|your|the|and|we|us|for|message|Hello)\b")
_DISCLAIMER = re.compile(r"\b(Als KI|As an AI)\b")


def is_judge_prompt(text: str) -> bool:
    return _ANSWER_A.search(text) is not None or _ANSWER.search(text) is not None


def judgement(prompt: str, noise: float, key: bytes) -> str:
    """The judge's JSON answer to `prompt`; `key` seeds the noise (same key, same
    answer)."""
    pair = _ANSWER_A.search(prompt)
    second = _ANSWER_B.search(prompt)
    if pair is not None and second is not None:
        a = visible_score(pair.group(1)) + _noise(noise, key + b":A")
        b = visible_score(second.group(1)) + _noise(noise, key + b":B")
        better = "A" if a - b > 1 else "B" if b - a > 1 else "tie"
        reason = "Both answers follow the rubric alike." if better == "tie" else "Closer fit."
        return orjson.dumps({"better": better, "reason": reason}).decode()
    single = _ANSWER.search(prompt)
    text = single.group(1) if single is not None else ""
    score = min(10.0, max(0.0, visible_score(text) + _noise(noise, key)))
    reason = "Follows the rubric." if score >= 8 else "Misses parts of the rubric."
    return orjson.dumps({"score": round(score, 1), "reason": reason}).decode()


def visible_score(answer: str) -> float:
    """Two points for each thing a reader sees the answer get right."""
    german = len(_GERMAN_WORDS.findall(answer)) > len(_ENGLISH_WORDS.findall(answer))
    sentences = sum(1 for piece in _SENTENCE_END.split(answer) if piece.strip())
    seen = (
        german,
        "Acme-Team" in answer,
        sentences <= 3,
        not _disclaims(answer),
        "<" not in answer,
    )
    return 2.0 * sum(seen)


def _disclaims(answer: str) -> bool:
    # The plain search first: the pattern's alternation tried at every position of a
    # 600-character answer cost more than the rest of the judgement.
    if "Als KI" not in answer and "As an AI" not in answer:
        return False
    return _DISCLAIMER.search(answer) is not None


def _noise(noise: float, key: bytes) -> float:
    if noise <= 0:
        return 0.0
    draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()) / 2**64
    return (2 * draw - 1) * noise
