"""The request flow on its own: `Gateway` over a scripted fake upstream, a clock the test
moves and a sleep that only records and moves it. Retries, backoff, Retry-After, the
deadline and fallback, decided without waiting on the wall clock (the end-to-end
counterparts, against the simulator, are in test_gateway.py)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import BASE, TUNED, gateway_config, task_config
from tunegate.config.compiled import GatewayConfig, Variant, load_config
from tunegate.errors import (
    AllAttemptsFailed,
    DeadlineExceeded,
    UpstreamError,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
)
from tunegate.flow.gateway import Gateway
from tunegate.flow.retry import Backoff
from tunegate.flow.upstream import Completion, Delta
from tunegate.pricing import Price, PriceTable
from tunegate.records import Call, Outcome

pytestmark = pytest.mark.anyio

VALID = '{"category": "billing", "priority": "high"}'
UPSTREAM_TIMEOUT_S = 5.0  # gateway_config's upstream timeout


class Clock:
    """Monotonic seconds that move only when the test (or the fake upstream) says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class HalfRandom(random.Random):
    """Every draw is 0.5: full-jitter backoff waits exactly half its ceiling."""

    def random(self) -> float:
        return 0.5


@dataclass
class Hang:
    """An attempt that gets no answer: the client gives up after its timeout."""


@dataclass
class Slow:
    """An answer that takes `seconds`."""

    seconds: float
    content: str = VALID


Step = str | UpstreamError | Hang | Slow


@dataclass
class FakeUpstream:
    """Answers each model's attempts from a script (a string is an answer's content);
    an empty script answers VALID. Records every attempt it received."""

    clock: Clock
    scripts: dict[str, list[Step]] = field(default_factory=dict)
    received: list[tuple[str, float, list[Mapping[str, Any]]]] = field(default_factory=list)

    def timeout_for(self, variant: Variant) -> float:
        return UPSTREAM_TIMEOUT_S

    async def complete(
        self,
        variant: Variant,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        timeout_s: float,
    ) -> Completion:
        self.received.append((variant.model, timeout_s, list(messages)))
        script = self.scripts.get(variant.model) or []
        step: Step = script.pop(0) if script else VALID
        if isinstance(step, Hang):
            self.clock.now += timeout_s
            raise UpstreamTimeout(f"{variant.model}: no answer within {timeout_s:.3g} s")
        if isinstance(step, UpstreamError):
            raise step
        if isinstance(step, Slow):
            self.clock.now += step.seconds
            step = step.content
        return Completion(step, "stop", 10, 5)

    async def stream(
        self,
        variant: Variant,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        timeout_s: float,
    ) -> AsyncIterator[Delta]:
        completion = await self.complete(variant, messages, params, timeout_s)
        yield Delta(content=completion.content)
        yield Delta(finish_reason="stop", prompt_tokens=10, completion_tokens=5)

    def models(self) -> list[str]:
        return [model for model, _, _ in self.received]


@dataclass
class Flow:
    """A gateway over the fake, and what it slept and recorded."""

    gateway: Gateway
    upstream: FakeUpstream
    clock: Clock
    config: GatewayConfig
    slept: list[float] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    def call(self, task: str, text: str = "I was charged twice!") -> Call:
        return Call(
            request_id="req-1",
            task=self.config.tasks[task],
            messages=({"role": "user", "content": text},),
            params={},
        )


@pytest.fixture
def flow(tmp_path: Path) -> Flow:
    tasks = {
        "triage": task_config(routing={"retries": 2}),
        "slow": task_config(deadline_s=1.5, routing={"retries": 3}),
        "once": task_config(routing={"retries": 0, "fallback": []}),
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:9", tasks)))
    config = load_config(path)
    clock = Clock()
    upstream = FakeUpstream(clock)
    prices = PriceTable({TUNED: Price(1.0, 2.0), BASE: Price(0.5, 1.0)}, lookup=lambda _: None)
    slept: list[float] = []
    outcomes: list[Outcome] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    gateway = Gateway(
        upstream,
        prices,
        recorders=[outcomes.append],
        clock=clock,
        rng=HalfRandom(),
        backoff=Backoff(base_s=0.1, cap_s=0.3),
        sleep=sleep,
    )
    return Flow(gateway, upstream, clock, config, slept, outcomes)


async def test_server_errors_are_retried_with_full_jitter_backoff(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = [UpstreamServerError("503"), UpstreamServerError("503")]
    answer = await flow.gateway.answer(flow.call("triage"))
    assert (answer.variant.name, answer.fallback_from) == ("tuned", None)
    assert flow.upstream.models() == [TUNED] * 3
    # Half of min(cap, base * 2**n): 0.05 after the first failure, 0.1 after the second.
    assert flow.slept == [0.05, 0.1]
    [outcome] = flow.outcomes
    assert outcome.status == "ok"
    assert [c.error for c in outcome.calls] == ["server_error", "server_error", None]


async def test_backoff_stops_at_its_cap(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = [UpstreamServerError("503")] * 3
    await flow.gateway.answer(flow.call("slow"))
    assert flow.slept == [0.05, 0.1, 0.15]  # half of 0.1, 0.2, then the 0.3 cap


async def test_a_retry_after_that_fits_is_waited_exactly(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = [UpstreamRateLimited("429", retry_after_s=1.0)]
    answer = await flow.gateway.answer(flow.call("triage"))
    assert answer.variant.name == "tuned"
    assert flow.slept == [1.0]
    assert flow.outcomes[0].seconds == pytest.approx(1.0)


async def test_a_retry_after_beyond_the_deadline_falls_back_without_waiting(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = [UpstreamRateLimited("429", retry_after_s=30.0)]
    answer = await flow.gateway.answer(flow.call("slow"))
    assert (answer.variant.name, answer.fallback_from) == ("few_shot", "tuned")
    assert flow.slept == []
    assert flow.upstream.models() == [TUNED, BASE]
    [outcome] = flow.outcomes
    assert outcome.status == "fallback"
    assert outcome.fallbacks == (("tuned", "few_shot", "rate_limited"),)


async def test_what_cannot_succeed_again_is_not_retried(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = [UpstreamQuotaExhausted("quota")]
    answer = await flow.gateway.answer(flow.call("triage"))
    assert (answer.variant.name, answer.fallback_from) == ("few_shot", "tuned")
    assert flow.upstream.models() == [TUNED, BASE]
    assert flow.slept == []


async def test_an_attempt_gets_only_the_time_left_before_the_deadline(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = [Slow(1.0, "not json"), Slow(0.2)]
    await flow.gateway.answer(flow.call("slow"))
    # The re-ask after the invalid answer: 1.5 s deadline, 1.0 s already gone.
    assert [timeout for _, timeout, _ in flow.upstream.received] == [1.5, pytest.approx(0.5)]


async def test_a_hang_ends_in_deadline_exceeded_at_the_deadline(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = [Hang()] * 5
    flow.upstream.scripts[BASE] = [Hang()] * 5
    with pytest.raises(DeadlineExceeded) as caught:
        await flow.gateway.answer(flow.call("slow"))
    assert caught.value.status == 504
    # One attempt took the whole deadline; nothing was left for a retry or the fallback.
    assert flow.upstream.received[0][:2] == (TUNED, 1.5)
    assert flow.upstream.models() == [TUNED]
    assert flow.slept == []
    [outcome] = flow.outcomes
    assert (outcome.status, outcome.served, outcome.seconds) == ("deadline", None, 1.5)


async def test_invalid_json_is_asked_again_with_the_error(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = ['{"category": "nonsense"}']
    answer = await flow.gateway.answer(flow.call("triage"))
    assert (answer.json_status, answer.parsed["category"]) == ("valid", "billing")
    first, second = (messages for _, _, messages in flow.upstream.received)
    assert second[: len(first)] == first
    assert second[-2] == {"role": "assistant", "content": '{"category": "nonsense"}'}
    assert second[-1]["role"] == "user"
    assert flow.outcomes[0].json_results == (("tuned", "invalid"), ("tuned", "valid"))


async def test_every_variant_failing_is_all_attempts_failed_with_its_cost(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = ['{"category": "nonsense"}', "still not json"]
    flow.upstream.scripts[BASE] = [UpstreamServerError("503")] * 3
    with pytest.raises(AllAttemptsFailed) as caught:
        await flow.gateway.answer(flow.call("triage"))
    assert caught.value.status == 502
    assert caught.value.should_retry  # the 503s might pass on a later try
    # The two invalid answers cost 2 * (10 * 1.0 + 5 * 2.0) / 1e6.
    assert caught.value.headers["x-tunegate-cost-usd"] == "0.00004"
    assert flow.outcomes[0].status == "error"


async def test_no_fallback_and_no_retry_means_one_attempt(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = [UpstreamServerError("503")]
    with pytest.raises(AllAttemptsFailed):
        await flow.gateway.answer(flow.call("once"))
    assert flow.upstream.models() == [TUNED]
    assert flow.slept == []


async def test_a_stream_retries_until_its_first_delta(flow: Flow) -> None:
    flow.upstream.scripts[TUNED] = [UpstreamServerError("503"), "Hello"]
    head, deltas = await flow.gateway.stream(flow.call("triage"))
    assert head.variant.name == "tuned"
    assert [d.content async for d in deltas] == ["Hello", ""]
    assert flow.slept == [0.05]
    assert flow.outcomes[0].status == "ok"
