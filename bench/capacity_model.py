"""The capacity model's arithmetic (deploy/capacity.md): from measured figures per path, how
many gateway pods and Redis shards serve a target rate, and what runs out first. Pure:
`bench/capacity.py` measures, this only divides."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# A pod is sized at one core (deploy/kubernetes: limits cpu 1) and the HPA keeps it at 60 %.
POD_CORES = 1.0
POD_TARGET_UTILISATION = 0.6
# Redis runs commands on one thread: a shard is full at one core; keep half of it spare.
SHARD_CORE_BUDGET = 0.5
HPA_MAX_REPLICAS = 30  # deploy/kubernetes/base/hpa.yaml


@dataclass(frozen=True)
class PathFigures:
    """What one path measured: gateway requests/s per core, Redis core-seconds per 1,000
    requests (= Redis cores busy at 1,000 req/s), commands and round trips per request."""

    path: str
    rps_per_core: float
    redis_cores_per_1k_rps: float
    commands_per_request: float
    round_trips_per_request: float


@dataclass(frozen=True)
class Plan:
    rate: int
    path: str
    pods: int
    redis_cores: float
    shards: int
    first_limit: str


def limits(figures: PathFigures) -> dict[str, float]:
    """The rate (req/s, all on this path) at which each fixed limit of the base layout is
    reached: the HPA's `maxReplicas` pods, and one Redis (a shard's core budget)."""
    per_pod = figures.rps_per_core * POD_CORES * POD_TARGET_UTILISATION
    per_shard = SHARD_CORE_BUDGET / figures.redis_cores_per_1k_rps * 1000
    return {
        f"the HPA's maxReplicas ({HPA_MAX_REPLICAS} pods)": HPA_MAX_REPLICAS * per_pod,
        "one Redis (0.5 core): shard with Redis Cluster": per_shard,
    }


def plan(rate: int, figures: PathFigures) -> Plan:
    """Pods and shards for `rate` requests/s all on `figures`' path, and what breaks first."""
    pods = math.ceil(rate / (figures.rps_per_core * POD_CORES * POD_TARGET_UTILISATION))
    redis_cores = rate / 1000 * figures.redis_cores_per_1k_rps
    shards = max(1, math.ceil(redis_cores / SHARD_CORE_BUDGET))
    reached = sorted((at, name) for name, at in limits(figures).items() if at <= rate)
    first = "; then ".join(f"{name} at {at:,.0f} req/s" for at, name in reached) or "nothing"
    return Plan(rate, figures.path, max(pods, 3), redis_cores, shards, first)


def plans(rates: Sequence[int], figures: Mapping[str, PathFigures]) -> list[Plan]:
    return [plan(rate, f) for rate in rates for f in figures.values()]
