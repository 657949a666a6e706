"""The simulator's text replies and judge (pure): what a flaw does to a reply, and a
judge that scores what it sees, in either position, with bounded noise."""

from __future__ import annotations

import json

import pytest

from tunegate.flow.judge import pair_prompt, point_prompt
from tunegate.simulator.judging import is_judge_prompt, judgement, visible_score
from tunegate.simulator.replies import SIGNATURE, TEXT_FLAWS, reply

QUESTION = ({"role": "user", "content": "Where is my invoice?"},)


def test_a_right_german_reply_is_three_sentences_and_signed() -> None:
    text = reply("billing", True, None)
    assert text.endswith(SIGNATURE)
    assert visible_score(text) == 10.0


@pytest.mark.parametrize("flaw", TEXT_FLAWS)
def test_each_flaw_costs_the_judge_points(flaw: str) -> None:
    assert visible_score(reply("billing", True, flaw)) < 10.0


def test_the_pointwise_judge_scores_the_answer_it_is_shown() -> None:
    good = point_prompt("Rubric.", QUESTION, reply("bug", True, None))
    bad = point_prompt("Rubric.", QUESTION, reply("bug", True, "english"))
    assert is_judge_prompt(good)
    assert json.loads(judgement(good, 0.0, b"k"))["score"] == 10.0
    assert json.loads(judgement(bad, 0.0, b"k"))["score"] == 6.0


def test_the_pairwise_judge_prefers_the_better_answer_in_either_position() -> None:
    good, bad = reply("bug", True, None), reply("bug", True, "too_long")
    first = pair_prompt("Rubric.", QUESTION, good, bad)
    second = pair_prompt("Rubric.", QUESTION, bad, good)
    assert json.loads(judgement(first, 0.0, b"k"))["better"] == "A"
    assert json.loads(judgement(second, 0.0, b"k"))["better"] == "B"
    same = pair_prompt("Rubric.", QUESTION, good, good)
    assert json.loads(judgement(same, 0.0, b"k"))["better"] == "tie"


def test_noise_stays_within_its_bound_and_is_seeded() -> None:
    prompt = point_prompt("Rubric.", QUESTION, reply("bug", True, "english"))
    scores = [json.loads(judgement(prompt, 1.5, b"k%d" % i))["score"] for i in range(200)]
    assert all(4.5 <= s <= 7.5 for s in scores)
    assert len(set(scores)) > 20
    assert judgement(prompt, 1.5, b"k1") == judgement(prompt, 1.5, b"k1")
