"""What a benchmark run measured, the ratios the benchmark issue sets targets for, and
their Markdown tables. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Target = Literal["direct", "sdk", "tunegate-1", "tunegate-2", "litellm", "portkey"]
CacheMode = Literal["miss", "hit"]
PromptKind = Literal["short", "long"]
TARGETS: tuple[Target, ...] = ("direct", "sdk", "tunegate-1", "tunegate-2", "litellm", "portkey")
TARGET_NAMES: Mapping[str, str] = {
    "direct": "direct call to the upstream",
    "sdk": "bare openai-SDK pass-through, 1 worker",
    "tunegate-1": "tunegate, 1 worker",
    "tunegate-2": "tunegate, 2 workers",
    "litellm": "LiteLLM proxy, 1 worker",
    "portkey": "Portkey's gateway (Node), 1 process",
}
CACHE_NAMES: Mapping[str, str] = {"miss": "unique prompts", "hit": "one repeated prompt"}
PROMPT_NAMES: Mapping[str, str] = {
    "short": "",
    "long": ", 32 KB few-shot prompt, 2 KB answer",
}
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Scenario:
    target: Target
    cache: CacheMode  # miss: a unique prompt per request; hit: one repeated prompt
    concurrency: int
    stream: bool
    prompt: PromptKind = "short"  # long: a 32 KB few-shot prompt, answered in 2 KB

    @property
    def label(self) -> str:
        long = " 32KB" if self.prompt == "long" else ""
        return f"{self.target} {self.cache}{long} c={self.concurrency} {self.kind}"

    @property
    def kind(self) -> str:
        return "streamed" if self.stream else "plain"


@dataclass(frozen=True, slots=True)
class Measurement:
    scenario: Scenario
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    status_errors: int
    socket_errors: int
    # % of one core per role over the measured run (server, store, upstream, wrk, other).
    cpu_percent: Mapping[str, float]
    # Gateway only: cache lookups counted by its metrics during the run.
    cache_lookups: Mapping[str, int] | None
    sample: str  # what the check before the run saw


@dataclass(frozen=True, slots=True)
class Ratio:
    name: str
    scenario: str
    value: float | None
    target: str  # "" when the issue sets none for this scenario
    met: bool | None


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """Streamed misses one at a time (c=1) from a client that times each answer: the
    median time to the first byte of the response, to the first `data:` event and to the
    last byte, over `requests` requests."""

    target: Target
    requests: int
    first_byte_ms: float
    first_event_ms: float
    last_byte_ms: float
    errors: int


@dataclass(frozen=True, slots=True)
class MemoryGrowth:
    """The resident memory (RSS) of one server process: as started, before and after
    `requests` unique-prompt requests (all misses)."""

    target: Target
    requests: int
    rss_start_mib: float
    rss_before_mib: float
    rss_after_mib: float

    @property
    def growth_mib(self) -> float:
        return self.rss_after_mib - self.rss_before_mib


def find(
    measurements: Iterable[Measurement],
    target: Target,
    cache: CacheMode,
    concurrency: int,
    stream: bool,
    prompt: PromptKind = "short",
) -> Measurement | None:
    wanted = Scenario(target, cache, concurrency, stream, prompt)
    return next((m for m in measurements if m.scenario == wanted), None)


def _divide(top: float | None, bottom: float | None) -> float | None:
    if top is None or bottom is None or bottom <= 0:
        return None
    return top / bottom


def _at_most(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


def _at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def ratios(
    measurements: Sequence[Measurement],
    streams: Sequence[StreamTiming] = (),
    memory: Sequence[MemoryGrowth] = (),
) -> list[Ratio]:
    """The issues' ratios for every concurrency and stream mode measured, with the
    target where an issue sets one. The gateway figures are its 1-worker ones (LiteLLM
    and Portkey run one process too); the direct call is the baseline of both cache
    modes. Portkey's gateway, the fastest peer, comes first."""
    found = portkey_ratios(measurements, streams, memory)
    levels = sorted({m.scenario.concurrency for m in measurements})
    for stream in (False, True):
        for c in levels:
            where = f"c={c} {'streamed' if stream else 'plain'}"

            def get(
                target: Target, cache: CacheMode, c: int = c, stream: bool = stream
            ) -> Measurement | None:
                return find(measurements, target, cache, c, stream)

            direct = get("direct", "miss")
            litellm_miss = get("litellm", "miss")
            litellm_hit = get("litellm", "hit") or litellm_miss
            miss, hit = get("tunegate-1", "miss"), get("tunegate-1", "hit")
            if miss and direct and litellm_miss:
                value = _divide(miss.p50_ms - direct.p50_ms, litellm_miss.p50_ms - direct.p50_ms)
                target, met = ("≤ 0.10", _at_most(value, 0.1)) if c == 1 else ("", None)
                found.append(Ratio("miss overhead / LiteLLM's", where, value, target, met))
            sdk = get("sdk", "miss")
            if miss and direct and sdk:
                value = _divide(miss.p50_ms - direct.p50_ms, sdk.p50_ms - direct.p50_ms)
                found.append(Ratio("miss overhead / bare SDK's", where, value, "", None))
                found.append(
                    Ratio("miss req/s / bare SDK's", where, _divide(miss.rps, sdk.rps), "", None)
                )
            if miss and litellm_miss:
                value = _divide(miss.rps, litellm_miss.rps)
                target, met = ("≥ 10", _at_least(value, 10)) if c >= 32 else ("", None)
                found.append(Ratio("miss req/s / LiteLLM's", where, value, target, met))
            if hit and direct:
                bound = 1.5 * direct.p50_ms + 0.5
                found.append(
                    Ratio(
                        "hit p50 / direct p50",
                        where,
                        _divide(hit.p50_ms, direct.p50_ms),
                        f"p50 ≤ 1.5 x {direct.p50_ms:.3g} + 0.5 = {bound:.3g} ms",
                        hit.p50_ms <= bound,
                    )
                )
            if hit and litellm_hit:
                value = _divide(hit.rps, litellm_hit.rps)
                target, met = ("≥ 30", _at_least(value, 30)) if c >= 32 else ("", None)
                found.append(Ratio("hit req/s / LiteLLM's", where, value, target, met))
            for cache in ("miss", "hit"):
                one, two = get("tunegate-1", cache), get("tunegate-2", cache)
                if one and two:
                    value = _divide(two.rps, one.rps)
                    target, met = ("≥ 1.7", _at_least(value, 1.7)) if c >= 32 else ("", None)
                    found.append(Ratio(f"{cache} req/s 2 workers / 1", where, value, target, met))
    return found


def portkey_ratios(
    measurements: Sequence[Measurement],
    streams: Sequence[StreamTiming],
    memory: Sequence[MemoryGrowth],
) -> list[Ratio]:
    """Performance II's targets: against Portkey's gateway, the long prompt against the
    short, hits against the direct call, memory over many requests."""
    found: list[Ratio] = []
    levels = sorted({m.scenario.concurrency for m in measurements})
    for stream in (False, True):
        for c in levels:
            where = f"c={c} {'streamed' if stream else 'plain'}"
            direct = find(measurements, "direct", "miss", c, stream)
            portkey = find(measurements, "portkey", "miss", c, stream)
            miss = find(measurements, "tunegate-1", "miss", c, stream)
            if miss and direct and portkey:
                value = _divide(miss.p50_ms - direct.p50_ms, portkey.p50_ms - direct.p50_ms)
                target, met = (
                    ("≤ 1", _at_most(value, 1.0)) if (c, stream) == (1, False) else ("", None)
                )
                found.append(Ratio("miss overhead / Portkey's", where, value, target, met))
            if miss and portkey:
                value = _divide(miss.rps, portkey.rps)
                target, met = (
                    ("≥ 1.3", _at_least(value, 1.3)) if c >= 32 and not stream else ("", None)
                )
                found.append(Ratio("miss req/s / Portkey's", where, value, target, met))
            two = find(measurements, "tunegate-2", "miss", c, stream)
            if two and portkey:
                value = _divide(two.rps, portkey.rps)
                found.append(Ratio("miss req/s, 2 workers / Portkey's", where, value, "", None))
            hit = find(measurements, "tunegate-1", "hit", c, stream)
            if hit and direct and c == 1 and not stream:
                value = hit.p50_ms - direct.p50_ms
                found.append(
                    Ratio("hit p50 - direct p50 (ms)", where, value, "≤ 0.2", _at_most(value, 0.2))
                )
    for c in levels:
        where = f"c={c} plain"
        direct_short = find(measurements, "direct", "miss", c, False)
        direct_long = find(measurements, "direct", "miss", c, False, "long")
        short = find(measurements, "tunegate-1", "miss", c, False)
        long = find(measurements, "tunegate-1", "miss", c, False, "long")
        if short and long and direct_short and direct_long:
            value = _divide(long.p50_ms - direct_long.p50_ms, short.p50_ms - direct_short.p50_ms)
            target, met = ("≤ 2", _at_most(value, 2.0)) if c == 1 else ("", None)
            found.append(
                Ratio("32 KB prompt's overhead / short prompt's", where, value, target, met)
            )
        portkey_long = find(measurements, "portkey", "miss", c, False, "long")
        if long and portkey_long and direct_long:
            value = _divide(
                long.p50_ms - direct_long.p50_ms, portkey_long.p50_ms - direct_long.p50_ms
            )
            found.append(Ratio("32 KB prompt: miss overhead / Portkey's", where, value, "", None))
            found.append(
                Ratio(
                    "32 KB prompt: miss req/s / Portkey's",
                    where,
                    _divide(long.rps, portkey_long.rps),
                    "",
                    None,
                )
            )
    timing = {s.target: s for s in streams}
    direct_stream, portkey_stream = timing.get("direct"), timing.get("portkey")
    ours = timing.get("tunegate-1")
    if ours and direct_stream and portkey_stream:
        for name, field in (
            ("first byte", "first_byte_ms"),
            ("first event", "first_event_ms"),
            ("last byte", "last_byte_ms"),
        ):
            base = getattr(direct_stream, field)
            value = _divide(getattr(ours, field) - base, getattr(portkey_stream, field) - base)
            target, met = ("≤ 1", _at_most(value, 1.0)) if field == "first_byte_ms" else ("", None)
            found.append(
                Ratio(
                    f"streamed time to {name}: overhead / Portkey's",
                    "c=1 streamed",
                    value,
                    target,
                    met,
                )
            )
    for grown in memory:
        if grown.target == "tunegate-1":
            found.append(
                Ratio(
                    f"RSS growth over {grown.requests:,} requests (MiB)",
                    "c=32 plain",
                    grown.growth_mib,
                    "≤ 10",
                    _at_most(grown.growth_mib, 10.0),
                )
            )
    return found


# -- Markdown ------------------------------------------------------------------------------


def rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def millis(value: float) -> str:
    if value < 1:
        return f"{value:.3f} ms"
    if value < 10:
        return f"{value:.2f} ms"
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(measurements: Sequence[Measurement]) -> str:
    """One row per target, cache mode and stream mode; per concurrency req/s, p50, p99."""
    levels = sorted({m.scenario.concurrency for m in measurements})
    head = ["what", "prompts", "mode"]
    for c in levels:
        head += [f"c={c} req/s", f"c={c} p50", f"c={c} p99"]
    head.append("errors")
    rows = []
    for target in TARGETS:
        for cache, stream, prompt in _kinds():
            cells = [find(measurements, target, cache, c, stream, prompt) for c in levels]
            present = [m for m in cells if m is not None]
            if present:
                row = [
                    TARGET_NAMES[target],
                    CACHE_NAMES[cache] + PROMPT_NAMES[prompt],
                    present[0].scenario.kind,
                ]
                for m in cells:
                    row += (
                        ["-"] * 3
                        if m is None
                        else [rate(m.rps), millis(m.p50_ms), millis(m.p99_ms)]
                    )
                errors = sum(m.status_errors + m.socket_errors for m in present)
                row.append(f"{errors:,}")
                rows.append(row)
    return _table(head, rows)


def _kinds() -> list[tuple[CacheMode, bool, PromptKind]]:
    kinds: list[tuple[CacheMode, bool, PromptKind]] = []
    for cache in ("miss", "hit"):
        for stream in (False, True):
            kinds.append((cache, stream, "short"))
    kinds.append(("miss", False, "long"))
    return kinds


def stream_table(streams: Sequence[StreamTiming]) -> str:
    head = ["target", "requests", "first byte p50", "first event p50", "last byte p50", "errors"]
    rows = [
        [
            TARGET_NAMES[s.target],
            f"{s.requests:,}",
            millis(s.first_byte_ms),
            millis(s.first_event_ms),
            millis(s.last_byte_ms),
            f"{s.errors:,}",
        ]
        for s in streams
    ]
    return _table(head, rows)


def memory_table(memory: Sequence[MemoryGrowth]) -> str:
    head = ["target", "RSS as started", "RSS before", "requests", "RSS after", "growth"]
    rows = [
        [
            TARGET_NAMES[m.target],
            f"{m.rss_start_mib:.1f} MiB",
            f"{m.rss_before_mib:.1f} MiB",
            f"{m.requests:,}",
            f"{m.rss_after_mib:.1f} MiB",
            f"{m.growth_mib:+.1f} MiB",
        ]
        for m in memory
    ]
    return _table(head, rows)


def ratios_table(found: Sequence[Ratio]) -> str:
    rows = []
    for r in found:
        value = "-" if r.value is None else f"{r.value:.3g}"
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        rows.append([r.name, r.scenario, value, r.target, met])
    return _table(["ratio", "scenario", "measured", "target", "met"], rows)


def detail_table(measurements: Sequence[Measurement]) -> str:
    """Every scenario: figures, errors, the cache lookups the gateway counted and the
    CPU each process group took (% of one core)."""
    roles = ["server", "store", "upstream", "wrk", "other"]
    head = ["scenario", "req/s", "p50", "p99", "errors (status/socket)", "lookups hit/miss"]
    head += [f"CPU {role}" for role in roles]
    rows = []
    for m in measurements:
        lookups = m.cache_lookups
        seen = "-" if lookups is None else f"{lookups.get('hit', 0):,}/{lookups.get('miss', 0):,}"
        row = [
            m.scenario.label,
            rate(m.rps),
            millis(m.p50_ms),
            millis(m.p99_ms),
            f"{m.status_errors}/{m.socket_errors}",
            seen,
        ]
        row += [f"{m.cpu_percent[role]:.0f}%" if role in m.cpu_percent else "-" for role in roles]
        rows.append(row)
    return _table(head, rows)


def markdown(document: Mapping[str, Any], measurements: Sequence[Measurement]) -> str:
    machine_info = document["machine"]
    settings = document["settings"]
    found = [Ratio(**r) for r in document["ratios"]]
    probe = settings["upstream_probe"]
    upstream = settings["upstream"]
    if probe:
        upstream += (
            f" (direct {probe['direct_rps']:,} req/s against the gateway's best "
            f"{probe['gateway_best_rps']:,}, {probe['scenario']})"
        )
    parts = [
        f"# Benchmark {document['date']}",
        f"{machine_info['description']}. Upstream: {upstream}; {settings['duration_s']:g} s "
        f"per scenario after {settings['warmup_s']:g} s of warm-up. Ratios use the gateway's "
        "1-worker figures; the direct call is the baseline of both prompt kinds.",
        results_table(measurements),
    ]
    streams = [StreamTiming(**t) for t in document.get("streams", [])]
    if streams:
        parts += [
            "## Streamed misses, one at a time (c=1), timed by a client of its own",
            stream_table(streams),
        ]
    memory = [MemoryGrowth(**m) for m in document.get("memory", [])]
    if memory:
        parts += ["## Memory (resident set of the serving process)", memory_table(memory)]
    parts += [
        "## Ratios",
        ratios_table(found),
        "## Every scenario (CPU in % of one core)",
        detail_table(measurements),
    ]
    for profile in document["profiles"]:
        if "skipped" in profile:
            parts.append(f"Profile of {profile['scenario']} skipped: {profile['skipped']}")
            continue
        parts += [
            f"## Profile: {profile['scenario']} ({profile['samples']} samples holding the GIL, "
            f"{profile['rps_while_profiled']} req/s under py-spy)",
            _shares_table("component (library nearest the leaf)", profile["components"]),
            _shares_table("tunegate function (inclusive)", profile["own_inclusive"]),
            _shares_table("library call made by tunegate (inclusive)", profile["library_calls"]),
            _shares_table("function (self)", profile["self_time"]),
        ]
    if document.get("load_average"):
        parts.append(
            f"Load average (1, 5, 15 min) at the start and end: {document['load_average']}"
        )
    if document["notes"]:
        parts.append("Notes:\n" + "\n".join(f"- {n}" for n in document["notes"]))
    return "\n\n".join(parts) + "\n"


def _shares_table(title: str, shares: Sequence[Mapping[str, Any]]) -> str:
    rows = [f"| {s['name']} | {s['percent']:.1f}% |" for s in shares]
    return "\n".join([f"| {title} | samples |", "|---|---|", *rows])
