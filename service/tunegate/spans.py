"""What the request flow reports as it works, for tracing (SPEC §11): the interface the
flow and its background calls (shadows, judges) call, implemented above them by
`observability/tracing.py` and handed in by the app when tracing is on. `NO_SPANS`, the
default, does nothing: the flow never imports observability, and pays a method call.

Privacy is the implementation's: the flow hands over messages and answer text, and only a
task with `log_payloads: true` has them put on a span.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, Protocol

from tunegate.config.compiled import Task, Variant

Message = Mapping[str, Any]
# Why an attempt was made: the chosen variant's first try, a retry of it, a corrective
# re-ask, a fallback variant, or a background call (shadow, judge).
Purpose = Literal["first", "retry", "reask", "fallback", "shadow", "judge"]
LookupResult = Literal["hit", "miss", "error"]


class AttemptSpan(Protocol):
    """One upstream attempt; ended by `answered` or `failed` (a stream's when it ends)."""

    def first_token(self) -> None:
        """A stream's first delta arrived (time to first token)."""

    def answered(
        self, model: str, finish_reason: str, input_tokens: int, output_tokens: int, text: str
    ) -> None:
        """The attempt answered: `model` is the one the upstream reports."""

    def failed(self, error_type: str) -> None:
        """The attempt failed; `error_type` is a bounded label (an `UpstreamError.kind`).
        After `answered` (the deadline passed on the way out) it changes nothing."""


class LookupSpan(Protocol):
    def found(self, result: LookupResult) -> None:
        """The cache lookup ended with `result`; a second call changes nothing."""


class Spans(Protocol):
    def attempt(
        self, task: Task, variant: Variant, messages: Sequence[Message], purpose: Purpose
    ) -> AttemptSpan:
        """Start the span of one upstream attempt, a child of the request (or of the
        background call it runs in)."""

    def cache_lookup(self) -> LookupSpan:
        """Start the span of the request's cache lookup."""

    def background(
        self, name: str, task: Task, variant: Variant, request_id: str
    ) -> AbstractContextManager[None]:
        """A background call made for a request (shadow, judge): its own trace, linked to
        the request's; attempts started inside are its children. Enter it where the
        background work runs, in a context copied from the request's."""


class NoSpan:
    """An attempt or lookup span that records nothing."""

    __slots__ = ()

    def first_token(self) -> None:
        pass

    def answered(
        self, model: str, finish_reason: str, input_tokens: int, output_tokens: int, text: str
    ) -> None:
        pass

    def failed(self, error_type: str) -> None:
        pass

    def found(self, result: LookupResult) -> None:
        pass


NO_SPAN = NoSpan()


class NoSpans:
    """Tracing off: every span is the same object that does nothing."""

    __slots__ = ()
    _span = NO_SPAN
    _context: AbstractContextManager[None] = nullcontext()

    def attempt(
        self, task: Task, variant: Variant, messages: Sequence[Message], purpose: Purpose
    ) -> AttemptSpan:
        return self._span

    def cache_lookup(self) -> LookupSpan:
        return self._span

    def background(
        self, name: str, task: Task, variant: Variant, request_id: str
    ) -> AbstractContextManager[None]:
        return self._context


NO_SPANS: Spans = NoSpans()
