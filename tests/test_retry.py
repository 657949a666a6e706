"""Retry decisions (pure): what is retried, backoff, Retry-After within the deadline."""

from __future__ import annotations

import email.utils

import pytest

from tunegate import errors
from tunegate.flow.retry import Backoff, backoff_s, next_wait, parse_retry_after


def always(value: float) -> float:
    return value


@pytest.mark.parametrize(
    "error",
    [
        errors.UpstreamRateLimited("429"),
        errors.UpstreamServerError("500"),
        errors.UpstreamTimeout("t"),
        errors.UpstreamConnectionError("c"),
    ],
)
def test_transient_errors_are_retried_within_the_allowance(error: errors.UpstreamError) -> None:
    assert next_wait(error, 0, 1, 10.0, Backoff(), lambda: 0.5) is not None
    assert next_wait(error, 1, 1, 10.0, Backoff(), lambda: 0.5) is None


@pytest.mark.parametrize(
    "error",
    [
        errors.UpstreamQuotaExhausted("quota"),
        errors.UpstreamBadRequest("400"),
        errors.UpstreamAuthError("401"),
        errors.UpstreamInvalidOutput("bad json"),
    ],
)
def test_final_errors_are_never_retried(error: errors.UpstreamError) -> None:
    assert next_wait(error, 0, 5, 10.0, Backoff(), lambda: 0.5) is None


def test_retry_after_is_honoured_when_it_fits_and_skipped_when_not() -> None:
    limited = errors.UpstreamRateLimited("429", retry_after_s=2.0)
    assert next_wait(limited, 0, 1, 10.0, Backoff(), lambda: 0.5) == 2.0
    assert next_wait(limited, 0, 1, 1.5, Backoff(), lambda: 0.5) is None


def test_backoff_is_full_jitter_capped() -> None:
    backoff = Backoff(base_s=0.1, cap_s=1.0)
    assert backoff_s(0, backoff, lambda: 0.999) < 0.1
    assert backoff_s(10, backoff, lambda: 0.999) < 1.0
    assert backoff_s(3, backoff, lambda: 0.0) == 0.0


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 0.5 ", now) == 0.5
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(7, abs=1)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("-4", now) == 0.0
