"""Variant choice: weights, sticky units, fallback order (pure, no servers)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.harness import gateway_config, task_config
from tunegate.config.compiled import Task, load_config
from tunegate.flow import router


def make_task(tmp_path: Path, weights: dict[str, float], sticky: str = "user") -> Task:
    config = gateway_config(
        "http://127.0.0.1:1",
        {"triage": task_config(weights=weights, routing={"sticky": sticky})},
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path).tasks["triage"]


def test_weights_100_0_and_0_100_always_pick_the_weighted_variant(tmp_path: Path) -> None:
    rng = random.Random(1).random
    only_tuned = make_task(tmp_path, {"tuned": 100, "few_shot": 0}, sticky="none")
    only_few = make_task(tmp_path, {"tuned": 0, "few_shot": 100}, sticky="none")
    assert {router.choose_variant(only_tuned, None, rng) for _ in range(500)} == {"tuned"}
    assert {router.choose_variant(only_few, None, rng) for _ in range(500)} == {"few_shot"}


def test_sticky_units_keep_their_variant_and_split_by_weight(tmp_path: Path) -> None:
    task = make_task(tmp_path, {"tuned": 70, "few_shot": 30})
    rng = random.Random(2).random
    first = {f"user-{i}": router.choose_variant(task, f"user-{i}", rng) for i in range(1000)}
    again = {unit: router.choose_variant(task, unit, rng) for unit in first}
    assert first == again
    share = Counter(first.values())["tuned"] / 1000
    assert 0.65 <= share <= 0.75


def test_a_weight_change_moves_only_units_crossing_the_boundary(tmp_path: Path) -> None:
    before = make_task(tmp_path, {"tuned": 50, "few_shot": 50})
    after = make_task(tmp_path, {"tuned": 60, "few_shot": 40})
    rng = random.Random(3).random
    units = [f"u{i}" for i in range(2000)]
    moved = [
        u
        for u in units
        if router.choose_variant(before, u, rng) != router.choose_variant(after, u, rng)
    ]
    # Only few_shot -> tuned moves happen, about 10% of units.
    assert all(router.choose_variant(after, u, rng) == "tuned" for u in moved)
    assert 0.06 <= len(moved) / len(units) <= 0.14


def test_unweighted_random_choice_follows_the_weights(tmp_path: Path) -> None:
    task = make_task(tmp_path, {"tuned": 90, "few_shot": 10}, sticky="none")
    rng = random.Random(4).random
    share = Counter(router.choose_variant(task, None, rng) for _ in range(5000))["tuned"] / 5000
    assert 0.88 <= share <= 0.92


@pytest.mark.parametrize(
    ("first", "order"), [("tuned", ("tuned", "few_shot")), ("few_shot", ("few_shot", "tuned"))]
)
def test_attempt_order_skips_the_variant_already_tried(
    tmp_path: Path, first: str, order: tuple[str, ...]
) -> None:
    task = make_task(tmp_path, {"tuned": 50, "few_shot": 50})
    assert router.attempt_order(task, first) == order


def test_unit_point_is_in_unit_interval_and_salted() -> None:
    points = [router.unit_point("salt", "task", f"u{i}") for i in range(1000)]
    assert all(0 <= p < 1 for p in points)
    assert router.unit_point("a", "task", "u") != router.unit_point("b", "task", "u")
