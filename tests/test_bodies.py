"""Request bodies validated at the boundary (api/bodies.py): the feedback body."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tunegate.api.bodies import feedback_body
from tunegate.errors import InvalidRequest


@pytest.mark.parametrize(
    ("body", "score"),
    [
        ({"request_id": "r", "score": True}, 1.0),
        ({"request_id": "r", "score": False}, 0.0),
        ({"request_id": "r", "score": 0}, 0.0),
        ({"request_id": "r", "score": 0.25, "comment": "ok", "extra": 1}, 0.25),
    ],
)
def test_a_feedback_score_is_a_number_from_0_to_1_or_a_boolean(
    body: dict[str, Any], score: float
) -> None:
    assert float(feedback_body(orjson.dumps(body)).score) == score


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request_id": "r", "score": 1.5}, "score"),
        ({"request_id": "r", "score": -0.1}, "score"),
        ({"request_id": "r", "score": "1"}, "score"),
        ({"request_id": "r"}, "score"),
        ({"request_id": "", "score": 1}, "request_id"),
        ({"request_id": 7, "score": 1}, "request_id"),
        ({"score": 1}, "request_id"),
        ({"request_id": "r", "score": 1, "comment": 3}, "comment"),
        ([1], None),
    ],
)
def test_a_bad_feedback_body_is_a_400_naming_the_field(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        feedback_body(orjson.dumps(body))
    assert caught.value.param == param
