"""The experiments document's records and their JSON (experiments/document.py): the JSON
has the documented names in their order, and reads back into the same records."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests import test_experiments_quality as quality
from tests.test_report_html import document as charted_document
from tunegate.experiments.document import (
    DocumentError,
    ExperimentsDocument,
    document_from_json,
    document_json,
)
from tunegate.experiments.report import build_document


def documents(tmp_path: Path) -> list[ExperimentsDocument]:
    """A task with shadow pairs and break-even, one with checks, judge and preference, and
    one without samples."""
    judged = build_document(
        quality.reply_task(tmp_path),
        {"tuned": quality.sums(60, 57, 0.9), "few_shot": quality.sums(50, 40, 0.7)},
        pairs={("tuned", "few_shot"): {"n": 40, "jp_n": 40, "jp_ties": 8, "jp_primary": 24}},
    )
    empty = build_document(quality.reply_task(tmp_path), {})
    return [charted_document(tmp_path), judged, empty]


def test_the_json_reads_back_into_the_same_records(tmp_path: Path) -> None:
    for document in documents(tmp_path):
        sent = orjson.dumps(document_json(document))
        assert document_from_json(orjson.loads(sent)) == document
        assert orjson.dumps(document_json(document_from_json(orjson.loads(sent)))) == sent


def test_the_json_has_the_documented_names_in_order(tmp_path: Path) -> None:
    data = document_json(documents(tmp_path)[1])
    assert list(data) == [
        "task", "tuned", "variants", "comparison", "break_even", "shadow", "decision",
    ]  # fmt: skip
    tuned = data["variants"]["tuned"]
    assert list(tuned)[:5] == ["model", "tuned", "requests", "successes", "success_rate"]
    assert tuned["checks_first_try_pass"] == {
        "rate": 0.95,
        "ci95": pytest.approx([0.86, 0.98], abs=0.01),
    }
    assert tuned["check_failures"] == {"max_chars": 3}
    assert list(tuned["judge_score"]) == ["n", "mean", "ci95", "anytime_ci95"]
    assert list(data["shadow"]["preference"]) == [
        "pairs", "ties", "tuned_win_rate", "ci95", "anytime_ci95",
    ]  # fmt: skip
    assert list(data["decision"]) == ["status", "recommendation", "reason", "policy", "figures"]
    assert {"checks_first_try_pass", "judge_score", "preference"} <= set(
        data["decision"]["figures"]
    )
    figure = data["comparison"]["figures"]["judge_score"]
    assert list(figure) == [
        "difference", "ci95", "p_value", "anytime_ci95", "decision", "verdict",
        "samples_needed_per_variant", "more_samples_needed",
    ]  # fmt: skip
    assert isinstance(figure["ci95"], list)  # intervals are JSON arrays, [low, high]


@pytest.mark.parametrize(
    "data",
    [None, [], {"task": "t"}, {"task": "t", "tuned": None, "variants": []}],
)
def test_what_is_no_document_is_refused_with_a_message(data: object) -> None:
    with pytest.raises(DocumentError, match="not an experiments document"):
        document_from_json(data)
