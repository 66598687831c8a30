"""How many replicas fit on the nodes, what the fleet can serve, and what it costs.

Memory decides capacity: a model twice the size fits half the replicas on the same
nodes. A replica needs the larger of its memory request and its measured peak plus a
headroom, so a model that outgrows its request is not over-packed on paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MIB = 2.0**20


@dataclass(frozen=True)
class Node:
    name: str
    allocatable_memory_bytes: float
    allocatable_cpu_millis: float
    requested_memory_bytes: float = 0.0  # by pods already on the node
    requested_cpu_millis: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    schedulable: bool = True
    max_pods: int | None = None
    pods: int = 0


@dataclass(frozen=True)
class ReplicaNeed:
    memory_request_bytes: float = 0.0
    cpu_request_millis: float = 0.0
    peak_memory_bytes: float | None = None  # measured under load
    headroom_percent: float = 20.0
    node_selector: Mapping[str, str] = field(default_factory=dict)

    @property
    def memory_bytes(self) -> float:
        measured = (self.peak_memory_bytes or 0.0) * (1 + self.headroom_percent / 100)
        return max(self.memory_request_bytes, measured)


@dataclass(frozen=True)
class Capacity:
    """What the replicas that fit can serve, in predictions (rows) per second: at the latency SLO when it
    was searched (what a fleet sized for an SLO carries), else at the default load cell."""

    per_node: dict[str, int]
    replicas_fit: int
    per_replica_memory_mib: float
    fleet_throughput_rps: float | None = None  # replicas that fit x the default cell's rows/s
    fleet_throughput_at_slo_rps: float | None = None  # replicas that fit x throughput at the SLO
    replicas_needed: int | None = None  # for capacity.targetRps predictions/s
    cost_per_million_usd: float | None = None  # per million predictions, from capacity.nodePricePerHour

    def figures(self) -> dict[str, float]:
        out: dict[str, float] = {"replicas_fit": float(self.replicas_fit)}
        for name in ("fleet_throughput_rps", "fleet_throughput_at_slo_rps", "replicas_needed",
                     "cost_per_million_usd"):
            v = getattr(self, name)
            if v is not None:
                out[name] = float(v)
        return out


def eligible(node: Node, selector: Mapping[str, str]) -> bool:
    return node.schedulable and all(node.labels.get(k) == v for k, v in selector.items())


def fits_on(node: Node, need: ReplicaNeed) -> int:
    free_mem = node.allocatable_memory_bytes - node.requested_memory_bytes
    mem = need.memory_bytes
    counts = [math.floor(free_mem / mem) if mem > 0 else math.inf]
    if need.cpu_request_millis > 0:
        counts.append(math.floor((node.allocatable_cpu_millis - node.requested_cpu_millis) / need.cpu_request_millis))
    if node.max_pods is not None:
        counts.append(node.max_pods - node.pods)
    n = min(counts)
    if n == math.inf:
        raise ValueError("a replica that needs no memory and no CPU fits without bound; give a request or a peak")
    return max(0, int(n))


def plan(
    nodes: Sequence[Node], need: ReplicaNeed, *, rows_per_s: float | None = None,
    at_slo_rows_per_s: float | None = None, target_rps: float | None = None,
    node_price_per_hour: float | None = None,
) -> Capacity:
    """Replicas that fit on the eligible nodes and the fleet they make; `rows_per_s` and
    `at_slo_rows_per_s` are one replica's predictions/s at the default cell and at the SLO."""
    per_node = {n.name: fits_on(n, need) for n in nodes if eligible(n, need.node_selector)}
    total = sum(per_node.values())
    fleet = None if rows_per_s is None else total * rows_per_s
    at_slo = None if at_slo_rows_per_s is None else total * at_slo_rows_per_s
    rate = at_slo_rows_per_s if at_slo_rows_per_s is not None else rows_per_s
    needed = cost = None
    if rate is not None and rate > 0:
        if target_rps is not None:
            needed = math.ceil(target_rps / rate)
        if node_price_per_hour is not None and total > 0:
            predictions_per_node_hour = rate * total / len(per_node) * 3600
            cost = node_price_per_hour / predictions_per_node_hour * 1e6
    return Capacity(per_node, total, need.memory_bytes / MIB, fleet, at_slo, needed, cost)
