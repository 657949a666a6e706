"""Quality figures of checks and judges from stored sums (pure): Wilson rate, failures per
kind, judge score intervals, the preference over both pair directions and its decision."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.harness import gateway_config, task_config
from tunegate.config.compiled import Task, load_config
from tunegate.experiments.document import ChecksPass, document_json
from tunegate.experiments.quality import (
    check_failures,
    checks_first_try_pass,
    judge_score,
    preference,
    preference_comparison,
)
from tunegate.experiments.report import build_document
from tunegate.experiments.report_html import render_html
from tunegate.experiments.report_text import render_table
from tunegate.experiments.stats import Policy

POLICY = Policy()


def test_checks_first_try_pass_is_a_wilson_rate() -> None:
    figure = checks_first_try_pass({"chk_n": 40, "chk_first": 30}, 0.05)
    assert figure.rate == 0.75
    assert figure.ci95 is not None
    low, high = figure.ci95
    assert 0.59 < low < 0.75 < high < 0.87
    assert checks_first_try_pass({}, 0.05) == ChecksPass(rate=None, ci95=None)


def test_failures_are_counted_per_kind() -> None:
    sums = {"n": 9, "chkf:language": 3, "chkf:max_chars": 1}
    assert check_failures(sums) == {"language": 3, "max_chars": 1}


def test_judge_score_has_an_interval_and_a_wider_confidence_sequence() -> None:
    scores = [0.8, 0.9, 1.0, 0.7] * 10
    sums = {"js_n": 40, "js_s": sum(scores), "js_ss": sum(s * s for s in scores)}
    figure = judge_score(sums, POLICY)
    assert figure.n == 40 and figure.mean == pytest.approx(0.85)
    ci, cs = figure.ci95, figure.anytime_ci95
    assert ci is not None and cs is not None
    assert cs[0] < ci[0] < 0.85 < ci[1] < cs[1]


def test_preference_adds_both_directions_with_ties_counted_half() -> None:
    pairs = {
        # tuned answered the caller: 6 pairs, tuned better in 3, 2 ties, few_shot 1.
        ("tuned", "few_shot"): {"jp_n": 6, "jp_ties": 2, "jp_primary": 3},
        # few_shot answered: 4 pairs, few_shot better in 1, no ties, so tuned in 3.
        ("few_shot", "tuned"): {"jp_n": 4, "jp_ties": 0, "jp_primary": 1},
    }
    figure = preference(pairs, "tuned", "few_shot", POLICY)
    assert figure is not None
    assert figure.pairs == 10 and figure.ties == 2
    assert figure.tuned_win_rate == pytest.approx((3 + 3 + 1) / 10)
    assert preference({}, "tuned", "few_shot", POLICY) is None


def test_a_preference_near_one_half_with_many_pairs_is_equivalent() -> None:
    n = 200_000
    pairs = {("tuned", "few_shot"): {"jp_n": n, "jp_ties": n // 2, "jp_primary": n // 4}}
    compared = preference_comparison(pairs, ("tuned", "few_shot"), Policy(quality_margin=0.02))
    assert compared is not None
    assert compared.difference == pytest.approx(0.0)
    assert compared.verdict == "equivalent"
    few = {("tuned", "few_shot"): {"jp_n": 20, "jp_ties": 10, "jp_primary": 5}}
    undecided = preference_comparison(few, ("tuned", "few_shot"), POLICY)
    assert undecided is not None and undecided.verdict == "undecided"


def reply_task(tmp_path: Path) -> Task:
    task = task_config(output={"type": "text", "checks": [{"max_chars": 600}]})
    task["routing"]["shadow"] = {"variant": "few_shot", "rate": 0.5}
    task["judge"] = {"upstream": "sim", "model": "gpt-4o-mini", "rate": 1.0, "rubric": "Short."}
    task["judge"]["pairwise"] = True
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:1", {"reply": task})))
    return load_config(path).tasks["reply"]


def sums(n: int, passed: int, score: float) -> dict[str, float]:
    return {
        "n": n,
        "ok": n,
        "chk_n": n,
        "chk_first": passed,
        "chkf:max_chars": n - passed,
        "js_n": n,
        "js_s": n * score,
        "js_ss": n * score * score + 0.5,
    }


def test_the_document_report_and_page_carry_the_quality_figures(tmp_path: Path) -> None:
    pairs = {("tuned", "few_shot"): {"n": 40, "jp_n": 40, "jp_ties": 8, "jp_primary": 24}}
    built = build_document(
        reply_task(tmp_path),
        {"tuned": sums(60, 57, 0.9), "few_shot": sums(50, 40, 0.7)},
        pairs=pairs,
    )
    document = document_json(built)
    tuned = document["variants"]["tuned"]
    assert tuned["checks_first_try_pass"]["rate"] == pytest.approx(0.95)
    assert tuned["check_failures"] == {"max_chars": 3}
    assert tuned["judge_score"]["n"] == 60
    assert tuned["judge_score"]["mean"] == pytest.approx(0.9)
    preference = document["shadow"]["preference"]
    assert preference["tuned_win_rate"] == pytest.approx((24 + 4) / 40)
    figures = document["decision"]["figures"]
    assert {"checks_first_try_pass", "judge_score", "preference"} <= set(figures)
    assert set(document["comparison"]["figures"]) >= {"judge_score", "preference"}
    table = render_table(built)
    assert "checks first-try pass" in table and "95.0% [" in table
    assert "max_chars 3" in table
    assert "judge preference: tuned wins 0.700 of 40 pairs (8 ties" in table
    page = render_html(built)
    assert "output checks passed first try" in page
    assert "judge score (score/10)" in page
    assert "judge preference for tuned" in page
