"""The judge end to end (simulator with a judge model, gateway, embedded store): scores
land on the variant that made the answer, pairs are shown in random order and counted
for the right variant, a judge that fails, hangs or answers garbage changes no caller's
answer, and judgements are bounded per process (skipped, never queued) and wait for a lull
between requests (but not forever) before each of their CPU steps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import (
    BASE,
    TUNED,
    Gateway,
    Simulator,
    gateway_config,
    metric,
    running_gateway,
    simulator_with,
    task_config,
    wait_until,
)
from tunegate.config.compiled import Task, Variant, load_config
from tunegate.errors import ConfigError
from tunegate.flow.background import Lull
from tunegate.flow.judge import Judged, Judges
from tunegate.flow.upstream import Completion
from tunegate.pricing import PriceTable
from tunegate.records import JudgeOutcome

JUDGE = "gpt-4o-mini"
HTTP = httpx.Client(timeout=10)
RUBRIC = 'German, formal "Sie", at most three sentences, signed "Ihr Acme-Team".'


def reply_task(**routing: Any) -> dict[str, Any]:
    task = task_config(output={"type": "text"}, routing={"sticky": "none", **routing})
    for variant in task["variants"].values():
        variant["system"] = "Antworte dem Kunden auf Deutsch."
        variant["examples"] = []
        variant["params"] = {"max_tokens": 256}
    task["judge"] = {"upstream": "sim", "model": JUDGE, "rate": 1.0, "rubric": RUBRIC}
    return task


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    # The tuned model answers right; the base model in English (the judge sees it).
    scenario = {
        "models": {
            TUNED: {"quality": {"valid": 1.0}},
            BASE: {"quality": {"valid": 0.0, "text_flaws": {"english": 1}}},
            JUDGE: {},
        }
    }
    with simulator_with(scenario, tmp_path_factory.mktemp("scenario")) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def gw(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    paired = reply_task(weights={"tuned": 100, "few_shot": 0})
    paired["routing"]["shadow"] = {"variant": "few_shot", "rate": 1.0}
    paired["judge"]["pairwise"] = True
    tasks = {
        "split": reply_task(weights={"tuned": 50, "few_shot": 50}),
        "paired": paired,
        "alone": reply_task(weights={"tuned": 100, "few_shot": 0}),
    }
    with running_gateway(tmp_path_factory.mktemp("gw"), gateway_config(sim.url, tasks)) as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def fresh(sim: Simulator) -> None:
    sim.reset()


def ask(gw: Gateway, task: str) -> httpx.Response:
    body = {"model": task, "messages": [{"role": "user", "content": f"Bill? {uuid.uuid4()}"}]}
    response = HTTP.post(f"{gw.url}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


def document(gw: Gateway, task: str) -> dict[str, Any]:
    found: dict[str, Any] = HTTP.get(f"{gw.url}/v1/experiments/{task}").json()
    return found


def judged(gw: Gateway, task: str, kind: str, result: str, count: float) -> bool:
    labels = {"task": task, "kind": kind, "result": result}
    return wait_until(lambda: metric(gw, "tunegate_judge_requests_total", **labels) >= count)


def test_scores_land_on_the_variant_that_answered(gw: Gateway, sim: Simulator) -> None:
    served = [ask(gw, "split").headers["x-tunegate-variant"] for _ in range(30)]
    assert judged(gw, "split", "point", "ok", 30)
    variants = document(gw, "split")["variants"]
    for name, expected in (("tuned", 1.0), ("few_shot", 0.6)):
        score = variants[name]["judge_score"]
        assert score["n"] == served.count(name) == variants[name]["requests"]
        if score["n"]:
            assert score["mean"] == pytest.approx(expected)
    # The judge saw the rubric, the caller's question and the answer.
    prompt = sim.requests(JUDGE)[0]["messages"][-1]["content"]
    assert RUBRIC in prompt and "Bill?" in prompt and "\nAnswer:\n" in prompt
    count = metric(gw, "tunegate_judge_score_count", task="split", variant="tuned")
    assert count == served.count("tuned")
    assert metric(gw, "tunegate_judge_cost_usd_total", task="split", model=JUDGE) > 0


def test_the_judges_cost_is_never_the_callers(gw: Gateway) -> None:
    before = metric(gw, "tunegate_cost_usd_total", task="alone", variant="tuned", model=TUNED)
    response = ask(gw, "alone")
    assert judged(gw, "alone", "point", "ok", 1)
    after = metric(gw, "tunegate_cost_usd_total", task="alone", variant="tuned", model=TUNED)
    assert float(response.headers["x-tunegate-cost-usd"]) == pytest.approx(after - before)


@pytest.mark.parametrize(
    ("faults", "result"), [(["500"], "error"), (["prose", "prose"], "invalid")]
)
def test_a_failing_judge_changes_no_answer(
    gw: Gateway, sim: Simulator, faults: list[str], result: str
) -> None:
    before = metric(gw, "tunegate_judge_requests_total", task="alone", kind="point", result=result)
    sim.script(JUDGE, *faults)
    response = ask(gw, "alone")
    assert response.json()["choices"][0]["message"]["content"].endswith("Ihr Acme-Team")
    assert judged(gw, "alone", "point", result, before + 1)
    assert len(sim.requests(JUDGE)) == len(faults)  # one attempt, at most one re-ask


def test_a_judge_that_hangs_past_the_deadline_keeps_no_caller_waiting(
    gw: Gateway, sim: Simulator
) -> None:
    sim.script(JUDGE, "hang", "hang")
    for _ in range(2):
        # The client gives up long before the judge's 5 s upstream timeout would end.
        body = {"model": "alone", "messages": [{"role": "user", "content": str(uuid.uuid4())}]}
        response = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=2.0)
        assert response.status_code == 200
    assert wait_until(lambda: len(sim.requests(JUDGE)) == 2)


def test_pairs_are_shown_in_random_order_and_counted_for_the_right_variant(
    gw: Gateway, sim: Simulator
) -> None:
    pairs = 40
    for _ in range(pairs):
        ask(gw, "paired")
    assert judged(gw, "paired", "pair", "ok", pairs)
    prompts = [
        r["messages"][-1]["content"]
        for r in sim.requests(JUDGE)
        if "Answer A:" in r["messages"][-1]["content"]
    ]
    assert len(prompts) == pairs
    tuned_first = sum(
        "Ihr Acme-Team" in p.split("Answer A:")[1].split("Answer B:")[0] for p in prompts
    )
    assert 8 <= tuned_first <= pairs - 8  # binomial(40, 0.5): outside this is < 1e-4
    # The judge always prefers the German answer, wherever it stands: a win for tuned.
    preference = document(gw, "paired")["shadow"]["preference"]
    assert preference["pairs"] == pairs
    assert preference["ties"] == 0
    assert preference["tuned_win_rate"] == 1.0
    assert preference["ci95"][0] > 0.5
    decision = document(gw, "paired")["decision"]["figures"]
    assert decision["preference"] == "tuned better"


class Stalled:
    """A judge upstream whose calls wait until released; `asked` is set by the first."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked = asyncio.Event()
        self.calls = 0

    def timeout_for(self, variant: Variant) -> float:
        return 30.0

    async def complete(
        self,
        variant: Variant,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        timeout_s: float,
    ) -> Completion:
        self.calls += 1
        self.asked.set()
        await self.release.wait()
        return Completion('{"score": 7, "reason": "ok"}', "stop", 10, 5)


@pytest.mark.anyio
async def test_at_most_sixteen_judgements_run_and_the_rest_are_skipped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:1", {"t": reply_task()})))
    task = load_config(path).tasks["t"]
    upstream, outcomes = Stalled(), list[JudgeOutcome]()
    judges = Judges(upstream, PriceTable({}), [outcomes.append])
    for i in range(20):
        judges.point(Judged(f"r{i}", task, "tuned", (), "Guten Tag. Ihr Acme-Team"))
    for _ in range(3):  # each judgement's task starts, then reaches its upstream call
        await asyncio.sleep(0)
    assert upstream.calls == 16
    assert [o.status for o in outcomes] == ["skipped"] * 4
    upstream.release.set()
    await judges.aclose()
    assert sorted(o.status for o in outcomes) == ["ok"] * 16 + ["skipped"] * 4
    assert {o.score for o in outcomes if o.status == "ok"} == {7.0}


def judge_task(tmp_path: Path) -> Task:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:1", {"t": reply_task()})))
    return load_config(path).tasks["t"]


async def turns(n: int = 5) -> None:
    """Let every ready task run `n` steps."""
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_a_judgement_waits_for_a_lull_to_ask_and_again_to_record(tmp_path: Path) -> None:
    task, busy = judge_task(tmp_path), [1]  # the judged request is still being served
    lull = Lull(lambda: busy[0])
    upstream, outcomes = Stalled(), list[JudgeOutcome]()
    judges = Judges(upstream, PriceTable({}), [outcomes.append], lull=lull, patience_s=60)
    judges.point(Judged("r1", task, "tuned", (), "Guten Tag. Ihr Acme-Team"))
    await turns()
    assert upstream.calls == 0  # nothing is built or sent while a request is served
    busy[0] = 0
    lull.begin()
    await asyncio.wait_for(upstream.asked.wait(), timeout=5)
    busy[0] = 1  # the next request came in before the judge answered
    upstream.release.set()
    await turns()
    assert outcomes == []  # the answer waits to be checked and recorded
    busy[0] = 0
    lull.begin()
    await judges.aclose()
    assert [(o.status, o.score) for o in outcomes] == [("ok", 7.0)]


@pytest.mark.anyio
async def test_under_steady_load_a_judgement_still_runs_after_its_patience(
    tmp_path: Path,
) -> None:
    task = judge_task(tmp_path)
    lull = Lull(lambda: 3)  # requests always in flight: no lull ever comes
    upstream, outcomes = Stalled(), list[JudgeOutcome]()
    upstream.release.set()
    judges = Judges(upstream, PriceTable({}), [outcomes.append], lull=lull, patience_s=0.01)
    judges.point(Judged("r1", task, "tuned", (), "Guten Tag. Ihr Acme-Team"))
    await turns()
    assert upstream.calls == 0
    await asyncio.wait_for(upstream.asked.wait(), timeout=5)
    await judges.aclose()
    assert [o.status for o in outcomes] == ["ok"]


@pytest.mark.anyio
async def test_judgements_waiting_for_a_lull_hold_their_places_and_the_rest_are_skipped(
    tmp_path: Path,
) -> None:
    task, busy = judge_task(tmp_path), [1]
    lull = Lull(lambda: busy[0])
    upstream, outcomes = Stalled(), list[JudgeOutcome]()
    upstream.release.set()
    judges = Judges(upstream, PriceTable({}), [outcomes.append], lull=lull, patience_s=60)
    for i in range(20):
        judges.point(Judged(f"r{i}", task, "tuned", (), "Guten Tag. Ihr Acme-Team"))
    await turns()
    assert upstream.calls == 0
    assert [o.status for o in outcomes] == ["skipped"] * 4  # never queued past the bound
    busy[0] = 0
    lull.begin()
    await judges.aclose()
    assert sorted(o.status for o in outcomes) == ["ok"] * 16 + ["skipped"] * 4


@pytest.mark.parametrize(
    ("judge", "where"),
    [
        ({"pairwise": True}, "tasks.t.judge.pairwise"),
        ({"upstream": "nowhere"}, "tasks.t.judge.upstream"),
        ({"rate": 1.5}, "tasks.t.judge.rate"),
    ],
)
def test_a_judge_config_that_cannot_work_is_named(
    tmp_path: Path, judge: dict[str, Any], where: str
) -> None:
    task = reply_task()
    task["judge"] |= judge
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:1", {"t": task})))
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_config(path)
