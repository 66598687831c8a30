"""Throughput at the latency SLO: the most rows per second a server carries while its p99 stays within
`load.latencySLO`, the headline Triton's perf_analyzer and SageMaker's Inference Recommender search for.

We search it the same way for both variants, open loop (latency from the intended send time, so a
queue cannot hide behind a slow server: no coordinated omission), and repeat the search, interleaved
ABBA with the baseline, so the figure has an interval and a relative gate compares like with like.

One search is a bisection over the offered rate at one batch size. It assumes a rate that misses the
SLO means every higher rate misses it too (a queue only grows with the rate). The first probe is at a
ceiling from the closed-loop sweep (the most requests/s any concurrency reached at that batch size,
times CEILING); if the ceiling meets the SLO it doubles, since that closed loop did not saturate the
server. After the first miss, each probe halves the bracket: `steps` probes end within
ceiling / 2^(steps - 1) of the boundary, and the figure is the highest rate that met the SLO (a lower
bound: 0 when no probe met it). The first of a variant's searches runs at every batch size and picks
the one with the most rows/s at the SLO; the repeats run at that batch size only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from modelrollout.core.windows import Windows

#: the first probe's rate over the closed loop's best requests/s at that batch size
CEILING = 1.25
#: a probe's in-flight bound, in multiples of rate x SLO (beyond it the oldest request in flight is
#: already past the SLO several times over; the generator counts the rest as backlog errors)
IN_FLIGHT_FACTOR = 4.0


@dataclass(frozen=True)
class Probe:
    """One open-loop load at one offered rate."""

    rate_rps: float  # offered requests per second
    requests: int  # answered
    errors: int
    p99_ms: float | None
    mean_ms: float | None = None

    def meets(self, slo_ms: float) -> bool:
        """Every request answered, and the p99 (from the intended send times) within the SLO."""
        return self.requests > 0 and self.errors == 0 and self.p99_ms is not None and self.p99_ms <= slo_ms

    def as_dict(self, slo_ms: float) -> dict[str, Any]:
        return {"rateRps": self.rate_rps, "requests": self.requests, "errors": self.errors,
                "p99Ms": self.p99_ms, "meetsSLO": self.meets(slo_ms)}


def max_in_flight(rate_rps: float, slo_ms: float) -> int:
    return min(4096, math.ceil(IN_FLIGHT_FACTOR * rate_rps * slo_ms / 1000) + 16)


@dataclass
class Search:
    """One bisection at one batch size: ask `next_rate`, run that load, `record` it, until None."""

    batch_size: int
    slo_ms: float
    ceiling_rps: float
    steps: int
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (self.ceiling_rps > 0 and math.isfinite(self.ceiling_rps)):
            raise ValueError(f"a search needs a positive ceiling, not {self.ceiling_rps!r}")

    @property
    def met(self) -> float:
        """The highest rate that met the SLO (0 when none did)."""
        return max((p.rate_rps for p in self.probes if p.meets(self.slo_ms)), default=0.0)

    @property
    def missed(self) -> float | None:
        """The lowest rate that missed it, None while every probe met it."""
        return min((p.rate_rps for p in self.probes if not p.meets(self.slo_ms)), default=None)

    def next_rate(self) -> float | None:
        if len(self.probes) >= self.steps:
            return None
        hi = self.missed
        if hi is None:  # nothing missed yet: the ceiling, then twice the last rate that met the SLO
            return 2 * self.met if self.probes else self.ceiling_rps
        return (self.met + hi) / 2

    def record(self, probe: Probe) -> None:
        self.probes.append(probe)

    @property
    def rows_per_s(self) -> float:
        return self.met * self.batch_size

    def in_flight(self) -> float | None:
        """Mean requests in flight at the rate that met the SLO (Little's law: rate x mean latency)."""
        p = next((p for p in self.probes if p.meets(self.slo_ms) and p.rate_rps == self.met), None)
        return None if p is None or p.mean_ms is None else p.rate_rps * p.mean_ms / 1000

    def as_dict(self) -> dict[str, Any]:
        return {"batchSize": self.batch_size, "rateRps": self.met, "rowsPerS": self.rows_per_s,
                "inFlight": self.in_flight(), "missedRps": self.missed, "ceilingRps": self.ceiling_rps,
                "probes": [p.as_dict(self.slo_ms) for p in self.probes]}


def ceilings(closed_loop: Sequence[tuple[int, float]]) -> dict[int, float]:
    """Each batch size's first probe rate from (batch size, requests/s) of the closed-loop sweep."""
    best: dict[int, float] = {}
    for batch, rps in closed_loop:
        if math.isfinite(rps):
            best[batch] = max(best.get(batch, 0.0), rps)
    return {b: max(1.0, CEILING * r) for b, r in best.items()}


def choose(first: Sequence[Search]) -> Search:
    """The first pass's search with the most rows/s at the SLO (the smaller batch on a tie: less latency)."""
    return max(first, key=lambda s: (s.rows_per_s, -s.batch_size))


@dataclass(frozen=True)
class SloResult:
    """One variant's searches: the first pass over every batch size, then the repeats at the chosen one."""

    slo_ms: float
    first: Sequence[Search]
    repeats: Sequence[Search]
    seconds: float  # load behind one search at the chosen batch size, for "how long would decide it"

    @cached_property
    def chosen(self) -> Search:
        return choose(self.first)

    @property
    def at_chosen(self) -> list[Search]:
        return [self.chosen, *self.repeats]

    @property
    def rows_per_s(self) -> float:
        """The figure throughput_at_slo_rps: the mean over the searches at the chosen batch size."""
        return float(np.mean([s.rows_per_s for s in self.at_chosen]))

    def windows(self) -> Windows:
        return Windows(self.rows_per_s, np.array([s.rows_per_s for s in self.at_chosen], dtype=np.float64),
                       self.seconds)

    def as_dict(self) -> dict[str, Any]:
        c = self.chosen
        flights = [f for s in self.at_chosen if (f := s.in_flight()) is not None]
        return {"sloMs": self.slo_ms, "rowsPerS": self.rows_per_s, "batchSize": c.batch_size,
                "rateRps": float(np.mean([s.met for s in self.at_chosen])),
                "inFlight": float(np.mean(flights)) if flights else None,
                "byBatchSize": {str(s.batch_size): s.rows_per_s for s in self.first},
                "searches": [s.as_dict() for s in self.at_chosen],
                "others": [s.as_dict() for s in self.first if s is not c]}


#: what `status.sloSearch` keeps of `SloResult.as_dict`: the headline and where it was found, not the probes
STATUS_KEYS = ("sloMs", "rowsPerS", "batchSize", "rateRps", "inFlight", "byBatchSize")


def status_form(d: Mapping[str, Any]) -> dict[str, Any]:
    """One variant's search as status keeps it (bounded: one entry per batch size), `searches` a count."""
    out = {k: d[k] for k in STATUS_KEYS if d.get(k) is not None}
    return {**out, "searches": len(d["searches"]) if isinstance(d["searches"], list) else int(d["searches"])}


def describe(label: str, d: Mapping[str, Any]) -> str:
    """One variant's search in words, from `SloResult.as_dict` (the report's details) or `status_form`."""
    flight = f", ~{d['inFlight']:.3g} in flight" if d.get("inFlight") is not None else ""
    return (f"{label} {d['rowsPerS']:.4g} rows/s at batch {d['batchSize']} ({d['rateRps']:.4g} requests/s{flight}; "
            f"mean of {status_form(d)['searches']} searches)")
