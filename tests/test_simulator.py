"""The simulated upstream, against a real server, through the official `openai` client."""

from __future__ import annotations

import functools
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tunegate.simulator import answers
from tunegate.simulator.app import HUGE_ANSWER_BYTES
from tunegate.simulator.scenario import (
    BREAKAGES,
    ModelBehaviour,
    Quality,
    is_script_kind,
    load_scenario,
)
from tunegate.state.embedded import free_port

KEY = "sk-sim-test-key"
SEED = 3
TUNED = "ft:gpt-3.5-turbo-0613:acme::7qTVM5AR"
BASE = "gpt-3.5-turbo"
FLAKY = "flaky"
SLOW = "slow-streamer"
SCENARIO = f"""
api_key: {KEY}
models:
  "{TUNED}": {{quality: {{valid: 0.98}}}}
  "{BASE}": {{quality: {{valid: 0.70, valid_with_examples: 0.92}}}}
  "{FLAKY}": {{faults: {{500: 0.5}}}}
  "{SLOW}": {{slow_chunk_ms: 15, retry_after_s: 2}}
"""
SYSTEM_JSON: ChatCompletionMessageParam = {
    "role": "system",
    "content": "Classify the support ticket. Answer with JSON.",
}
TICKET: list[ChatCompletionMessageParam] = [
    SYSTEM_JSON,
    {"role": "user", "content": "I was charged twice for my plan!"},
]
RIGHT = '{"category": "billing", "priority": "high"}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    scenario = tmp_path_factory.mktemp("sim") / "scenario.yaml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    port = free_port()
    argv = [sys.executable, "-m", "tunegate.simulator", "--port", str(port)]
    process = subprocess.Popen([*argv, "--scenario", str(scenario), "--seed", str(SEED)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/v1/models", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def control(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, verify=_tls()) as client:
        yield client


@pytest.fixture
def sim(server: str, control: httpx.Client) -> str:
    """The server's URL, with no scripted faults and no recorded requests."""
    control.delete("/_sim/script").raise_for_status()
    control.delete("/_sim/requests").raise_for_status()
    return server


@functools.cache
def _tls() -> ssl.SSLContext:
    # Building one per client costs ~50 ms; the servers here are plain HTTP anyway.
    return ssl.create_default_context()


def _client(url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key,
        base_url=f"{url}/v1",
        max_retries=0,
        timeout=5,
        http_client=openai.DefaultAsyncHttpxClient(verify=_tls()),
    )


def _raw_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"authorization": f"Bearer {KEY}"}, verify=_tls())


def _script(control: httpx.Client, model: str, *faults: str) -> None:
    control.post("/_sim/script", json={"model": model, "faults": faults}).raise_for_status()


def _received(control: httpx.Client, model: str | None = None) -> list[dict[str, Any]]:
    params = {"model": model} if model else {}
    response = control.get("/_sim/requests", params=params)
    response.raise_for_status()
    received: list[dict[str, Any]] = response.json()
    return received


def _ticket(text: str, *, examples: bool = False) -> list[ChatCompletionMessageParam]:
    shots: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "The app crashes on start."},
        {"role": "assistant", "content": '{"category": "bug", "priority": "medium"}'},
    ]
    return [SYSTEM_JSON, *(shots if examples else []), {"role": "user", "content": text}]


async def _collect(stream: openai.AsyncStream[ChatCompletionChunk], into: list[str]) -> None:
    async for chunk in stream:
        into.append(chunk.choices[0].delta.content or "")


def _is_right(content: str, text: str) -> bool:
    try:
        value: object = json.loads(content)
    except ValueError:
        return False
    category, priority = answers.triage(text)
    return value == {"category": category, "priority": priority}


# The answers over HTTP


@pytest.mark.anyio
async def test_plain_completion_has_openai_shape_and_documented_usage(sim: str) -> None:
    async with _client(sim) as client:
        completion = await client.chat.completions.create(model=TUNED, messages=TICKET)
    assert completion.object == "chat.completion"
    assert completion.model == TUNED
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert (choice.index, choice.finish_reason, choice.message.role) == (0, "stop", "assistant")
    assert choice.message.content == RIGHT
    assert choice.message.refusal is None
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == answers.prompt_tokens(TICKET)
    assert completion.usage.completion_tokens == -(-len(RIGHT) // 4)
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


@pytest.mark.anyio
async def test_stream_sends_role_pieces_finish_and_usage(sim: str) -> None:
    async with _client(sim) as client:
        stream = await client.chat.completions.create(
            model=TUNED, messages=TICKET, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == RIGHT
    assert len([p for p in pieces if p]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == -(-len(RIGHT) // 4)


@pytest.mark.anyio
async def test_stream_without_usage_option_sends_no_usage_chunk(sim: str) -> None:
    async with _client(sim) as client:
        stream = await client.chat.completions.create(model=TUNED, messages=TICKET, stream=True)
        chunks = [chunk async for chunk in stream]
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)


@pytest.mark.anyio
async def test_text_task_answers_german_when_asked_and_english_when_broken(sim: str) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Reply to the customer in German, warmly."},
        {"role": "user", "content": "My password reset link does not work."},
    ]
    async with _client(sim) as client:
        german = await client.chat.completions.create(model=TUNED, messages=messages)
        english = await client.chat.completions.create(
            model=TUNED, messages=messages, extra_headers={"x-sim-fault": "prose"}
        )
    assert (german.choices[0].message.content or "").startswith("Guten Tag")
    assert "Konto" in (german.choices[0].message.content or "")
    assert (english.choices[0].message.content or "").startswith("Hello")


@pytest.mark.anyio
async def test_max_tokens_cuts_the_answer_with_finish_reason_length(sim: str) -> None:
    async with _client(sim) as client:
        completion = await client.chat.completions.create(
            model=TUNED, messages=TICKET, max_tokens=2
        )
    assert completion.choices[0].message.content == RIGHT[:8]
    assert completion.choices[0].finish_reason == "length"


@pytest.mark.anyio
async def test_models_lists_the_named_models(sim: str) -> None:
    async with _client(sim) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == [TUNED, BASE, FLAKY, SLOW]


# Faults


@pytest.mark.anyio
async def test_scripted_429_is_a_rate_limit_with_retry_after_then_the_queue_moves_on(
    sim: str,
    control: httpx.Client,
) -> None:
    _script(control, SLOW, "429", "ok")
    async with _client(sim) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=SLOW, messages=TICKET)
        after = await client.chat.completions.create(model=SLOW, messages=TICKET)
    assert (caught.value.code, caught.value.type) == ("rate_limit_exceeded", "requests")
    assert caught.value.response.headers["retry-after"] == "2"
    assert after.choices[0].message.content == RIGHT


@pytest.mark.anyio
async def test_forced_429_takes_its_retry_after_from_the_header(sim: str) -> None:
    headers = {"x-sim-fault": "429", "x-sim-retry-after": "7"}
    async with _client(sim) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model=TUNED, messages=TICKET, extra_headers=headers
            )
    assert caught.value.response.headers["retry-after"] == "7"


@pytest.mark.anyio
async def test_scripted_429_may_carry_its_retry_after(sim: str, control: httpx.Client) -> None:
    _script(control, TUNED, "429:0.5")
    async with _client(sim) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=TUNED, messages=TICKET)
    assert caught.value.response.headers["retry-after"] == "0.5"
    assert _received(control)[-1]["fault"] == "429:0.5"


@pytest.mark.anyio
async def test_quota_is_a_rate_limit_without_retry_after(sim: str, control: httpx.Client) -> None:
    _script(control, TUNED, "quota")
    async with _client(sim) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=TUNED, messages=TICKET)
    assert (caught.value.code, caught.value.type) == ("insufficient_quota", "insufficient_quota")
    assert "retry-after" not in caught.value.response.headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "error", "status", "code"),
    [
        ("500", openai.InternalServerError, 500, None),
        ("503", openai.InternalServerError, 503, None),
        ("400", openai.BadRequestError, 400, "context_length_exceeded"),
        ("401", openai.AuthenticationError, 401, "invalid_api_key"),
        ("404", openai.NotFoundError, 404, "model_not_found"),
    ],
)
async def test_status_faults_raise_the_sdk_error(
    sim: str,
    control: httpx.Client,
    fault: str,
    error: type[openai.APIStatusError],
    status: int,
    code: str | None,
) -> None:
    _script(control, TUNED, fault)
    async with _client(sim) as client:
        with pytest.raises(error) as caught:
            await client.chat.completions.create(model=TUNED, messages=TICKET)
    assert (caught.value.status_code, caught.value.code) == (status, code)


@pytest.mark.anyio
async def test_unknown_model_is_model_not_found(sim: str) -> None:
    async with _client(sim) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-nonexistent", messages=TICKET)
    assert caught.value.code == "model_not_found"


@pytest.mark.anyio
async def test_drop_is_a_connection_error(sim: str) -> None:
    async with _client(sim) as client:
        with pytest.raises(openai.APIConnectionError) as caught:
            await client.chat.completions.create(
                model=TUNED, messages=TICKET, extra_headers={"x-sim-fault": "drop"}
            )
    assert not isinstance(caught.value, openai.APITimeoutError)


@pytest.mark.anyio
async def test_drop_mid_stream_is_a_connection_error(sim: str) -> None:
    async with _client(sim) as client:
        stream = await client.chat.completions.create(
            model=TUNED, messages=TICKET, stream=True, extra_headers={"x-sim-fault": "drop"}
        )
        pieces: list[str] = []
        with pytest.raises(openai.APIConnectionError):
            await _collect(stream, pieces)
    assert pieces == ["", RIGHT[:4]]


@pytest.mark.anyio
async def test_hang_is_a_timeout(sim: str, control: httpx.Client) -> None:
    _script(control, TUNED, "hang")
    started = time.monotonic()
    async with _client(sim) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model=TUNED, messages=TICKET, timeout=0.3)
    assert time.monotonic() - started < 3


@pytest.mark.anyio
async def test_slow_stream_drips_its_chunks(sim: str, control: httpx.Client) -> None:
    _script(control, SLOW, "slow")
    async with _client(sim) as client:
        started = time.monotonic()
        stream = await client.chat.completions.create(model=SLOW, messages=TICKET, stream=True)
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        elapsed = time.monotonic() - started
    assert "".join(p or "" for p in pieces) == RIGHT
    assert elapsed >= len(answers.pieces(RIGHT)) * 0.015


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "content"),
    [
        ("invalid_json", '{"category": "billing", "pri'),
        ("fenced", f"```json\n{RIGHT}\n```"),
        ("trailing_comma", '{"category": "billing", "priority": "high",}'),
        ("missing_field", '{"category": "billing"}'),
        ("wrong_enum", '{"category": "billing", "priority": "critical"}'),
        ("prose", "This ticket is about billing and its priority is high."),
        ("valid", RIGHT),
    ],
)
async def test_output_faults_answer_200_with_that_breakage(
    sim: str, control: httpx.Client, fault: str, content: str
) -> None:
    _script(control, BASE, fault)
    async with _client(sim) as client:
        completion = await client.chat.completions.create(model=BASE, messages=TICKET)
    assert completion.choices[0].message.content == content
    assert _received(control)[-1]["fault"] == fault


@pytest.mark.anyio
async def test_huge_answers_megabytes_whatever_max_tokens_says(
    sim: str, control: httpx.Client
) -> None:
    _script(control, TUNED, "huge", "huge")
    async with _client(sim) as client:
        completion = await client.chat.completions.create(
            model=TUNED, messages=TICKET, max_tokens=16
        )
        stream = await client.chat.completions.create(model=TUNED, messages=TICKET, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    content = completion.choices[0].message.content or ""
    assert content.startswith(RIGHT[:64])
    assert len(content) >= HUGE_ANSWER_BYTES
    assert completion.usage is not None and completion.usage.completion_tokens > 1_000_000
    assert len(pieces) == 3 and len(pieces[1]) >= HUGE_ANSWER_BYTES
    assert [r["fault"] for r in _received(control)] == ["huge", "huge"]


@pytest.mark.anyio
async def test_random_faults_follow_the_seeded_sequence_and_ok_skips_them(
    sim: str, control: httpx.Client
) -> None:
    behaviour = ModelBehaviour(faults=(("500", 0.5),))
    expected = [answers.draw_fault(behaviour, SEED, FLAKY, n) for n in range(40, 80)]
    _script(control, FLAKY, *["ok"] * 40)
    async with _raw_client() as client:
        statuses = [
            (await client.post(f"{sim}/v1/chat/completions", json=body)).status_code
            for body in [{"model": FLAKY, "messages": TICKET}] * 80
        ]
    assert statuses[:40] == [200] * 40
    assert statuses[40:] == [500 if fault else 200 for fault in expected]
    assert 10 < expected.count("500") < 30


@pytest.mark.anyio
async def test_unknown_forced_fault_is_a_bad_request(sim: str, control: httpx.Client) -> None:
    async with _client(sim) as client:
        with pytest.raises(openai.BadRequestError, match="unknown fault"):
            await client.chat.completions.create(
                model=TUNED, messages=TICKET, extra_headers={"x-sim-fault": "gremlins"}
            )
    async with _raw_client() as raw:
        response = await raw.post(f"{sim}/_sim/script", json={"model": TUNED, "faults": ["?"]})
    assert response.status_code == 400


# Quality


@pytest.mark.anyio
async def test_quality_rates_come_out_near_the_configured_ones(sim: str) -> None:
    words = ["invoice is wrong", "app crashes", "cannot login", "want a sticker"]
    moods = ["", " urgent", " when you can", " asap please"]
    texts = [f"Ticket {n}: my {words[n % 4]}{moods[n // 4 % 4]}." for n in range(200)]
    cases = [(TUNED, False, 0.98), (BASE, False, 0.70), (BASE, True, 0.92)]
    right = [0] * len(cases)
    async with _raw_client() as client:
        for case, (model, examples, _) in enumerate(cases):
            for text in texts:
                body = {"model": model, "messages": _ticket(text, examples=examples)}
                reply = (await client.post(f"{sim}/v1/chat/completions", json=body)).json()
                right[case] += _is_right(reply["choices"][0]["message"]["content"], text)
    for count, (_, _, configured) in zip(right, cases, strict=True):
        assert count / len(texts) == pytest.approx(configured, abs=0.07)
    # The server's draws are the pure model's, under the server's seed.
    base = ModelBehaviour(quality=Quality(valid=0.70, valid_with_examples=0.92))
    expected = sum(
        answers.answer(base, SEED, BASE, _ticket(text), {}).outcome == "valid" for text in texts
    )
    assert right[1] == expected


@pytest.mark.anyio
async def test_same_input_gets_the_same_answer(sim: str) -> None:
    async with _client(sim) as client:
        for n in range(20):
            messages = _ticket(f"Ticket {n}: the invoice looks off")
            first = await client.chat.completions.create(model=BASE, messages=messages)
            again = await client.chat.completions.create(model=BASE, messages=messages)
            assert first.choices[0].message.content == again.choices[0].message.content


def test_answers_are_a_function_of_seed_and_input() -> None:
    behaviour = ModelBehaviour(quality=Quality(valid=0.5))
    inputs = [_ticket(f"Ticket {n}: refund please") for n in range(200)]

    def outcomes(seed: int) -> list[str]:
        return [answers.answer(behaviour, seed, BASE, m, {}).outcome for m in inputs]

    assert outcomes(1) == outcomes(1)
    assert outcomes(1) != outcomes(2)
    assert set(outcomes(1)) == {"valid", *BREAKAGES}


def test_breakage_weights_pick_only_the_weighted_kinds() -> None:
    behaviour = ModelBehaviour(quality=Quality(valid=0.0, breakages=(("prose", 1.0),)))
    for n in range(50):
        got = answers.answer(behaviour, 0, BASE, _ticket(f"#{n}"), {})
        assert got.outcome == "prose"
        assert "{" not in got.content


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I was charged twice!", ("billing", "high")),
        ("Where is my invoice?", ("billing", "low")),
        ("The export is broken", ("bug", "medium")),
        ("App is down, fix it immediately", ("other", "high")),
        ("I forgot my password, reply when you can", ("account", "low")),
        ("Do you ship to Norway", ("other", "medium")),
    ],
)
def test_triage_follows_the_keywords(text: str, expected: tuple[str, str]) -> None:
    assert answers.triage(text) == expected


def test_a_corrective_reask_is_answered_with_the_ticket_again() -> None:
    broken = '{"category": "billing"}'
    reask = "Your previous answer was not valid: 'priority' is a required property."
    messages = [
        *_ticket("I was charged twice!", examples=True),
        {"role": "assistant", "content": broken},
        {"role": "user", "content": reask},
    ]
    got = answers.answer(ModelBehaviour(), 0, TUNED, messages, {})
    assert json.loads(got.content) == {"category": "billing", "priority": "high"}
    # A ticket that happens to say those words is still the ticket.
    ticket = _ticket("My previous answer to the invoice question was charged twice!")
    assert json.loads(answers.answer(ModelBehaviour(), 0, TUNED, ticket, {}).content) == {
        "category": "billing",
        "priority": "high",
    }


def test_json_is_answered_when_response_format_or_system_asks() -> None:
    plain: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
    assert answers.wants_json({"response_format": {"type": "json_object"}}, plain)
    assert not answers.wants_json({}, plain)
    assert answers.wants_json({}, [{"role": "system", "content": "reply in json"}, *plain])


# What the simulator received, and keys


@pytest.mark.anyio
async def test_requests_record_what_was_sent_and_never_the_key(
    sim: str, control: httpx.Client
) -> None:
    async with _client(sim) as client:
        await client.chat.completions.create(
            model=TUNED, messages=TICKET, temperature=0, response_format={"type": "json_object"}
        )
        await client.chat.completions.create(model=BASE, messages=TICKET)
    async with _raw_client() as raw:
        response = await raw.get(f"{sim}/_sim/requests", params={"model": TUNED})
    assert KEY not in response.text
    [received] = response.json()
    assert received == {
        "model": TUNED,
        "messages": TICKET,
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "has_authorization": True,
        "fault": None,
    }
    assert len(_received(control)) == 2
    async with _raw_client() as raw:
        (await raw.delete(f"{sim}/_sim/requests")).raise_for_status()
    assert _received(control) == []


@pytest.mark.anyio
async def test_wrong_or_missing_key_is_invalid_api_key(sim: str, control: httpx.Client) -> None:
    async with _client(sim, key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model=TUNED, messages=TICKET)
    assert caught.value.code == "invalid_api_key"
    async with httpx.AsyncClient(verify=_tls()) as anonymous:
        body = {"model": TUNED, "messages": TICKET}
        response = await anonymous.post(f"{sim}/v1/chat/completions", json=body)
    assert response.status_code == 401
    assert [r["has_authorization"] for r in _received(control)] == [True, False]


@pytest.mark.anyio
async def test_concurrent_requests_are_all_answered(sim: str, control: httpx.Client) -> None:
    results: list[str] = []
    async with _client(sim) as client:

        async def one(n: int) -> None:
            completion = await client.chat.completions.create(
                model=TUNED, messages=_ticket(f"#{n} refund")
            )
            results.append(completion.choices[0].message.content or "")

        async with anyio.create_task_group() as group:
            for n in range(50):
                group.start_soon(one, n)
    assert len(results) == 50
    assert len(_received(control, TUNED)) == 50


# Scenario files


def test_no_scenario_file_accepts_any_model_perfectly() -> None:
    scenario = load_scenario(None)
    behaviour = scenario.behaviour_for("anything")
    assert behaviour == ModelBehaviour()
    assert scenario.listed_models() == []


def test_scenario_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    scenario = load_scenario(path)
    assert scenario.api_key == KEY
    assert scenario.behaviour_for("unknown") is None
    flaky = scenario.behaviour_for(FLAKY)
    assert flaky is not None
    assert flaky.faults == (("500", 0.5),)


def test_demo_scenario_is_valid() -> None:
    demo = Path(__file__).parent.parent / "config" / "simulator" / "demo.yaml"
    scenario = load_scenario(demo)
    assert TUNED in scenario.listed_models()
    assert BASE in scenario.listed_models()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("models: {m: {latncy_ms: 5}}", "models.m.latncy_ms: unknown key"),
        ("models: {m: {faults: {gremlins: 0.1}}}", "models.m.faults: Value error, unknown fault"),
        ("models: {m: {faults: {500: 0.7, 429: 0.5}}}", "models.m.faults: Value error, the rates"),
        ("models: {m: {quality: {valid: 1.5}}}", "models.m.quality.valid: Input should be"),
        ("models: [oops", "not valid YAML at line 1"),
    ],
)
def test_bad_scenario_names_the_file_and_path(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.yaml") as caught:
        load_scenario(path)
    assert where in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "known"),
    [
        ("ok", True),
        ("hang", True),
        ("429:2", True),
        ("429:0.5", True),
        ("429:", False),
        ("429:-1", False),
        ("429:soon", False),
        ("teapot", False),
    ],
)
def test_script_kinds(kind: str, known: bool) -> None:
    assert is_script_kind(kind) is known


def test_missing_scenario_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the scenario file"):
        load_scenario(tmp_path / "nowhere.yaml")
