"""Which variant serves a request: weighted, optionally sticky, then the fallback order.

Pure functions over the compiled `Routing` record (SPEC §3, §7). A sticky unit hashes to
a point in [0, 1) and points map to variants by cumulative weight, so the same unit keeps
its variant for the same weights, and a weight change moves only the units whose point
crosses a boundary. Nothing is stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from tunegate.config import Routing, Task

_SCALE = float(1 << 64)


def unit_point(salt: str, task: str, unit: str) -> float:
    """The deterministic point in [0, 1) of a sticky unit for a task."""
    digest = hashlib.blake2b(f"{salt}\x1f{task}\x1f{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def variant_at(routing: Routing, point: float) -> str:
    """The variant whose cumulative-weight interval holds `point`."""
    for bound, name in routing.cumulative:
        if point < bound:
            return name
    return routing.cumulative[-1][1]


def choose_variant(task: Task, unit: str | None, random: Callable[[], float]) -> str:
    """Pick the variant for one request: by the unit's point when the task is sticky and
    the request carries a unit, else by a fresh draw from `random`."""
    routing = task.routing
    if len(routing.cumulative) == 1:
        return routing.cumulative[0][1]
    if unit is not None and routing.sticky != "none":
        return variant_at(routing, unit_point(routing.salt, task.name, unit))
    return variant_at(routing, random())


def attempt_order(task: Task, first: str) -> tuple[str, ...]:
    """`first`, then the task's fallbacks in order, each variant at most once."""
    return (first, *(name for name in task.routing.fallback if name != first))
