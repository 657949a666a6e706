"""Which variant serves a request: weighted, optionally sticky, then the fallback order.

Pure functions over the compiled `Routing` record (SPEC §3, §7). A sticky unit hashes to
a point in [0, 1) and points map to variants by cumulative weight, so the same unit keeps
its variant for the same weights, and a weight change moves only the units whose point
crosses a boundary. Nothing is stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from tunegate.config.compiled import Task

Cumulative = tuple[tuple[float, str], ...]
_SCALE = float(1 << 64)


def unit_point(salt: str, task: str, unit: str) -> float:
    """The deterministic point in [0, 1) of a sticky unit for a task."""
    digest = hashlib.blake2b(f"{salt}\x1f{task}\x1f{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def variant_at(cumulative: Cumulative, point: float) -> str:
    """The variant whose cumulative-weight interval holds `point`."""
    for bound, name in cumulative:
        if point < bound:
            return name
    return cumulative[-1][1]


def choose_variant(
    task: Task,
    unit: str | None,
    random: Callable[[], float],
    cumulative: Cumulative | None = None,
) -> str:
    """Pick the variant for one request: by the unit's point when the task is sticky and
    the request carries a unit, else by a fresh draw from `random`. `cumulative` replaces
    the configured weights (an adaptive split's current ones)."""
    routing = task.routing
    bounds = cumulative or routing.cumulative
    if len(bounds) == 1:
        return bounds[0][1]
    if unit is not None and routing.sticky != "none":
        return variant_at(bounds, unit_point(routing.salt, task.name, unit))
    return variant_at(bounds, random())


def attempt_order(task: Task, first: str) -> tuple[str, ...]:
    """`first`, then the task's fallbacks in order, each variant at most once."""
    return (first, *(name for name in task.routing.fallback if name != first))
