"""Load that flows while a fault is injected: concurrent clients calling the gateway
through the official SDK (httpx where the SDK cannot say it), every answer checked and
tallied: its status, whether a 200 was right, or that no answer came at all."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import orjson
from openai.types.chat import ChatCompletion

from tunegate.simulator.answers import answer, triage
from tunegate.simulator.scenario import ModelBehaviour

CLIENT_TIMEOUT_S = 30.0
# Error bodies kept for the secrets check at the end (each is small).
ERROR_BODIES: list[str] = []


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request's fate. `status` None: no answer at all (lost), unless `refused`: the
    connection was refused or reset because the process stopped listening (a client learns
    that at once and tries another instance; only scenarios that stop the gateway set it)."""

    status: int | None
    latency_s: float
    wrong: bool = False
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Streams: seconds to the first content chunk; in-band error after headers.
    first_chunk_s: float | None = None
    stream_error: bool = False
    note: str = ""
    # An error answer's body (its first 1,000 characters).
    body: str = ""
    # When the outcome was known (time.monotonic()).
    at: float = field(default_factory=time.monotonic)
    refused: bool = False


@dataclass
class Tally:
    """Every outcome of a scenario's load."""

    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def extend(self, other: Tally) -> None:
        self.outcomes.extend(other.outcomes)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def statuses(self) -> Counter[str]:
        return Counter(
            ("refused" if o.refused else "lost")
            if o.status is None
            else f"{o.status}" + (" (in-band error)" * o.stream_error)
            for o in self.outcomes
        )

    def count(self, status: int) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def codes(self) -> Counter[str]:
        return Counter(f"{o.status} {o.code}" for o in self.outcomes if o.code)

    @property
    def wrong(self) -> int:
        return sum(1 for o in self.outcomes if o.wrong)

    @property
    def lost(self) -> int:
        return sum(1 for o in self.outcomes if o.status is None and not o.refused)

    def latency(self, quantile: float, status: int | None = None) -> float:
        values = sorted(
            o.latency_s
            for o in self.outcomes
            if o.status is not None and (status is None or o.status == status)
        )
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(quantile * len(values)))]

    def with_status(self, status: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]


def ticket(index: int, unique: bool = True) -> str:
    """A support ticket; unique ones carry a nonce, so each is a cache miss."""
    texts = (
        "I was charged twice this month",
        "The export crashes every time, urgently need help",
        "How do I reset my password?",
        "Do you have a dark mode? no rush",
        "My invoice is wrong when you can",
        "The app is down immediately fix it",
    )
    text = texts[index % len(texts)]
    return f"{text} (ticket {os.urandom(6).hex()})" if unique else text


def expected_json(text: str) -> dict[str, str]:
    category, priority = triage(text)
    return {"category": category, "priority": priority}


def expected_reply(text: str) -> str:
    messages = [{"role": "system", "content": "Deutsch"}, {"role": "user", "content": text}]
    return answer(ModelBehaviour(), 0, "any", messages, {}).content


def sdk_client(base_url: str, key: str, **options: Any) -> openai.AsyncOpenAI:
    """A caller's client: the official SDK, its retries off unless asked for."""
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", CLIENT_TIMEOUT_S)
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key, **options)


def _error_code(body: object) -> str | None:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            code = error.get("code")
            return str(code) if code is not None else None
    return None


async def chat(
    client: openai.AsyncOpenAI,
    task: str,
    text: str,
    *,
    json_task: bool = True,
    stream: bool = False,
    headers: Mapping[str, str] | None = None,
    **params: Any,
) -> Outcome:
    """One chat completion through the SDK, its answer checked against what the
    simulator's right answer for `text` is."""
    started = time.monotonic()
    messages: Any = [{"role": "user", "content": text}]
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=task,
            messages=messages,
            stream=stream,
            extra_headers=dict(headers or {}),
            **params,
        )
        response_headers = dict(raw.headers)
        if stream:
            return await _read_stream(raw.parse(), started, text, json_task, response_headers)
        completion = raw.parse()
        assert isinstance(completion, ChatCompletion)
        content = completion.choices[0].message.content or ""
        return Outcome(
            200,
            time.monotonic() - started,
            wrong=not _right(content, text, json_task),
            headers=response_headers,
        )
    except openai.APIStatusError as exc:
        ERROR_BODIES.append(exc.response.text)
        return Outcome(
            exc.status_code,
            time.monotonic() - started,
            code=_error_code(exc.body),
            headers=dict(exc.response.headers),
            body=exc.response.text[:1000],
        )
    except (openai.APIConnectionError, httpx.HTTPError) as exc:
        return Outcome(None, time.monotonic() - started, note=_cause(exc))


def _cause(exc: BaseException) -> str:
    """The exception's type, and its cause's (the transport's error under the SDK's)."""
    cause = exc.__cause__
    return type(exc).__name__ + (f"/{type(cause).__name__}" if cause is not None else "")


async def _read_stream(
    stream: Any, started: float, text: str, json_task: bool, headers: dict[str, str]
) -> Outcome:
    pieces: list[str] = []
    first: float | None = None
    finished = False
    try:
        async for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta.content
                if delta:
                    pieces.append(delta)
                    if first is None:
                        first = time.monotonic() - started
                if chunk.choices[0].finish_reason:
                    finished = True
    except openai.APIError:
        # An error event after the headers: the stream says it failed, never silently.
        return Outcome(200, time.monotonic() - started, headers=headers, stream_error=True)
    except (httpx.HTTPError, openai.APIConnectionError) as exc:
        return Outcome(None, time.monotonic() - started, note=type(exc).__name__)
    content = "".join(pieces)
    right = finished and _right(content, text, json_task)
    return Outcome(
        200,
        time.monotonic() - started,
        wrong=not right,
        headers=headers,
        first_chunk_s=first,
        note="" if finished else "truncated",
    )


def _right(content: str, text: str, json_task: bool) -> bool:
    if not json_task:
        return content == expected_reply(text)
    try:
        return bool(orjson.loads(content) == expected_json(text))
    except orjson.JSONDecodeError:
        return False


async def http_call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    content: Any = None,
    headers: Mapping[str, str] | None = None,
    expect_json: bool = False,
) -> Outcome:
    """One raw HTTP request, for what the SDK cannot send (bad bodies, chunked uploads)."""
    started = time.monotonic()
    try:
        response = await client.request(method, url, content=content, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(None, time.monotonic() - started, note=type(exc).__name__)
    code = None
    if response.status_code >= 400:
        ERROR_BODIES.append(response.text)
        try:
            code = _error_code(response.json())
        except ValueError:
            code = "not-json"
    return Outcome(
        response.status_code,
        time.monotonic() - started,
        code=code,
        headers=dict(response.headers),
        body=response.text[:1000] if response.status_code >= 400 else "",
    )


Request = Callable[[int], Awaitable[Outcome]]


async def run_load(
    request: Request,
    *,
    concurrency: int,
    duration_s: float | None = None,
    total: int | None = None,
    during: Awaitable[object] | None = None,
) -> Tally:
    """Run `concurrency` workers calling `request(i)` until `duration_s` passes or
    `total` requests were sent, with `during` (the fault's timeline) running meanwhile;
    with `during` and no limit, the load runs until `during` ends."""
    tally = Tally()
    counter = iter(range(1 << 62))
    stop_at = None if duration_s is None else time.monotonic() + duration_s
    done = asyncio.Event()

    async def worker() -> None:
        while not done.is_set():
            if stop_at is not None and time.monotonic() >= stop_at:
                return
            index = next(counter)
            if total is not None and index >= total:
                return
            tally.add(await request(index))

    async def timeline() -> None:
        if during is None:
            return
        try:
            await during
        except BaseException:
            done.set()  # the workers stop at their next request
            raise
        finally:
            if duration_s is None and total is None:
                done.set()

    await asyncio.gather(timeline(), *(worker() for _ in range(concurrency)))
    return tally
