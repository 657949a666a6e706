"""The benchmark's arithmetic and command line (the runs themselves are `bench/run`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.figures import Measurement, Scenario, Target, ratios

ROOT = Path(__file__).resolve().parent.parent


def measured(target: Target, cache: str, c: int, rps: float, p50_ms: float) -> Measurement:
    return Measurement(
        scenario=Scenario(target, cache, c, False),  # type: ignore[arg-type]  # literal
        requests=int(rps * 10),
        rps=rps,
        p50_ms=p50_ms,
        p99_ms=p50_ms * 2,
        status_errors=0,
        socket_errors=0,
        cpu_percent={},
        cache_lookups=None,
        sample="",
    )


def test_ratios_compare_overheads_over_the_direct_call_and_judge_the_targets() -> None:
    runs = [
        measured("direct", "miss", 1, 5000, 0.2),
        measured("sdk", "miss", 1, 450, 2.2),
        measured("tunegate-1", "miss", 1, 250, 4.2),
        measured("tunegate-1", "hit", 1, 1200, 0.7),
        measured("litellm", "miss", 1, 35, 30.2),
        measured("direct", "miss", 32, 6000, 5.0),
        measured("tunegate-1", "miss", 32, 330, 95.0),
        measured("tunegate-2", "miss", 32, 600, 50.0),
        measured("litellm", "miss", 32, 30, 900.0),
    ]
    found = {(r.name, r.scenario): r for r in ratios(runs)}
    overhead = found["miss overhead / LiteLLM's", "c=1 plain"]
    assert overhead.value == pytest.approx(4.0 / 30.0)
    assert overhead.met is False  # target: at most 1/10
    assert found["miss overhead / bare SDK's", "c=1 plain"].value == pytest.approx(2.0)
    hit = found["hit p50 / direct p50", "c=1 plain"]
    assert hit.value == pytest.approx(3.5)
    assert hit.met is True  # 0.7 ms <= 1.5 x 0.2 + 0.5 ms
    assert found["miss req/s / LiteLLM's", "c=32 plain"].met is True  # 11x
    assert found["miss req/s 2 workers / 1", "c=32 plain"].value == pytest.approx(600 / 330)
    assert found["miss req/s 2 workers / 1", "c=32 plain"].met is True


def test_the_command_line_lists_its_targets() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadtest", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "direct,sdk,tunegate-1,tunegate-2,litellm" in done.stdout.replace("\n", "")


def test_capacity_model_sizes_pods_and_shards_and_names_the_first_limit() -> None:
    from bench.capacity_model import PathFigures, plan

    figures = PathFigures("miss", 500.0, 0.2, 20.0, 5.0)
    small, large = plan(1_000, figures), plan(100_000, figures)
    assert (small.pods, small.shards, small.first_limit) == (4, 1, "nothing")
    assert large.pods == 334 and large.shards == 40
    # one Redis is full at 2,500 req/s, the HPA's 30 pods at 9,000 req/s
    assert large.first_limit.startswith("one Redis") and "2,500 req/s" in large.first_limit
    assert "maxReplicas (30 pods) at 9,000 req/s" in large.first_limit


def test_portkey_ratios_judge_performance_two_targets() -> None:
    from bench.figures import MemoryGrowth, StreamTiming

    runs = [
        measured("direct", "miss", 1, 5000, 0.1),
        measured("portkey", "miss", 1, 1000, 0.9),
        measured("tunegate-1", "miss", 1, 1100, 0.7),
        measured("tunegate-1", "hit", 1, 4000, 0.25),
        measured("direct", "miss", 32, 9000, 1.0),
        measured("portkey", "miss", 32, 1000, 30.0),
        measured("tunegate-1", "miss", 32, 1400, 22.0),
    ]
    long = Scenario("tunegate-1", "miss", 1, False, "long")
    direct_long = Scenario("direct", "miss", 1, False, "long")
    runs += [
        Measurement(s, 10, 1.0, p50, p50, 0, 0, {}, None, "")
        for s, p50 in ((long, 1.5), (direct_long, 0.2))
    ]
    streams = [
        StreamTiming("direct", 100, 0.05, 0.06, 0.07, 0),
        StreamTiming("portkey", 100, 1.05, 26.0, 26.1, 0),
        StreamTiming("tunegate-1", 100, 0.85, 0.9, 0.95, 0),
    ]
    memory = [MemoryGrowth("tunegate-1", 100_000, 90.0, 95.0, 101.0)]
    found = {(r.name, r.scenario): r for r in ratios(runs, streams, memory)}
    overhead = found["miss overhead / Portkey's", "c=1 plain"]
    assert overhead.value == pytest.approx(0.6 / 0.8) and overhead.met is True
    assert found["miss req/s / Portkey's", "c=32 plain"].met is True  # 1.4x
    assert found["hit p50 - direct p50 (ms)", "c=1 plain"].met is True  # 0.15 ms
    long_ratio = found["32 KB prompt's overhead / short prompt's", "c=1 plain"]
    assert long_ratio.value == pytest.approx(1.3 / 0.6) and long_ratio.met is False
    first = found["streamed time to first byte: overhead / Portkey's", "c=1 streamed"]
    assert first.value == pytest.approx(0.8 / 1.0) and first.met is True
    assert found["RSS growth over 100,000 requests (MiB)", "c=32 plain"].met is True
