"""Summaries of a py-spy profile in folded form (`py-spy record --format raw`): one line
per distinct stack, `frame;frame;...;leaf COUNT`, each frame `function (file:line)`."""

from __future__ import annotations

import itertools
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

_LINE_NUMBER = re.compile(r":\d+\)$")
_FILE = re.compile(r"\(([^)]*)\)$")

# Which component a library belongs to, by its top-level package.
COMPONENTS = {
    "tunegate": "tunegate (own code)",
    "redis": "redis client",
    "openai": "upstream client (openai, httpx2, aiohttp)",
    "httpx2": "upstream client (openai, httpx2, aiohttp)",
    "httpx": "upstream client (openai, httpx2, aiohttp)",
    "aiohttp": "upstream client (openai, httpx2, aiohttp)",
    "yarl": "upstream client (openai, httpx2, aiohttp)",
    "multidict": "upstream client (openai, httpx2, aiohttp)",
    "uvicorn": "HTTP server and framework (uvicorn, starlette, fastapi)",
    "starlette": "HTTP server and framework (uvicorn, starlette, fastapi)",
    "fastapi": "HTTP server and framework (uvicorn, starlette, fastapi)",
    "httptools": "HTTP server and framework (uvicorn, starlette, fastapi)",
    "pydantic": "validation (pydantic, jsonschema, json_repair)",
    "pydantic_core": "validation (pydantic, jsonschema, json_repair)",
    "jsonschema": "validation (pydantic, jsonschema, json_repair)",
    "json_repair": "validation (pydantic, jsonschema, json_repair)",
    "prometheus_client": "metrics (prometheus_client)",
    # py-spy names opentelemetry's modules from inside the package (FastAPI's telemetry).
    "opentelemetry": "opentelemetry (FastAPI's telemetry)",
    "_logs": "opentelemetry (FastAPI's telemetry)",
    "metrics": "opentelemetry (FastAPI's telemetry)",
    "trace": "opentelemetry (FastAPI's telemetry)",
}
EVENT_LOOP = "event loop and standard library"


@dataclass(frozen=True, slots=True)
class Share:
    name: str
    samples: int
    percent: float


@dataclass(frozen=True, slots=True)
class Summary:
    samples: int
    self_time: tuple[Share, ...]  # by leaf function
    own_inclusive: tuple[Share, ...]  # tunegate's functions, time under them
    library_calls: tuple[Share, ...]  # library functions tunegate calls, time under them
    components: tuple[Share, ...]  # by the library nearest the leaf


def function_of(frame: str) -> str:
    """`Class.method (package/module.py)`: the frame without its line number."""
    return _LINE_NUMBER.sub(")", frame)


def package_of(frame: str) -> str:
    """The top-level package or module of a frame's file ("" when it has none)."""
    match = _FILE.search(frame)
    if match is None:
        return ""
    path = match.group(1).split(":")[0]
    return path.split("/")[0].removesuffix(".py")


def _is_own(frame: str) -> bool:
    """A frame of tunegate's request path: the command's entry points (the console
    script, `cli.py`) sit under every sample and say nothing."""
    return (
        package_of(frame) == "tunegate"
        and not frame.startswith("<module>")
        and "(tunegate/commands/cli.py" not in frame
    )


def _library_calls(stack: list[str]) -> set[str]:
    """The library functions that tunegate's code calls directly in this stack (the
    standard library's are skipped: asyncio's waits would say nothing)."""
    calls = set()
    for caller, callee in itertools.pairwise(stack):
        package = package_of(callee)
        if (
            _is_own(caller)
            and package != "tunegate"
            and package not in sys.stdlib_module_names
            and not package.startswith("<")
        ):
            calls.add(function_of(callee))
    return calls


def _component(stack: list[str]) -> str:
    """The component of the library nearest the leaf: the standard library's frames
    (asyncio's stream writes, say) are charged to whoever called them."""
    for frame in reversed(stack):
        package = package_of(frame)
        if package in COMPONENTS:
            return COMPONENTS[package]
        if package and package not in sys.stdlib_module_names and not package.startswith("<"):
            return package
    return EVENT_LOOP


def _shares(counts: Counter[str], total: int, top: int) -> tuple[Share, ...]:
    return tuple(Share(name, n, round(100 * n / total, 1)) for name, n in counts.most_common(top))


def summarize(lines: Iterable[str], top: int = 15) -> Summary:
    """Self time by function, inclusive time of tunegate's functions and of the library
    calls they make, and time by component, each as a share of all samples."""
    total = 0
    leaf: Counter[str] = Counter()
    own: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    components: Counter[str] = Counter()
    for line in lines:
        stack_text, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        total += count
        leaf[function_of(stack[-1])] += count
        components[_component(stack)] += count
        for name in {function_of(f) for f in stack if _is_own(f)}:
            own[name] += count
        for name in _library_calls(stack):
            calls[name] += count
    if total == 0:
        return Summary(0, (), (), (), ())
    return Summary(
        samples=total,
        self_time=_shares(leaf, total, top),
        own_inclusive=_shares(own, total, top),
        library_calls=_shares(calls, total, top),
        components=_shares(components, total, 10),
    )
