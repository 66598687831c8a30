"""The performance table: each variant's load at every batch size x concurrency cell of the sweep.

The default cell (the first batch size at `load.concurrency`) runs in interleaved windows, so its
latency and throughput have intervals and are the figures a gate reads when it names no cell.
Every other cell runs once per variant: a gate naming one (`batchSize`, `concurrency`) reads
its figure here, and has no interval. Per-sample latency is the request's divided by the batch
size, so cells of different batch sizes compare on what one row costs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelrollout.core.figures import PER_CELL

#: latency percentiles of a cell, as named in figures (`latency_<key>_ms`)
LATENCIES = ("p50", "p90", "p95", "p99", "p999", "max")


@dataclass(frozen=True, order=True)
class Cell:
    batch_size: int
    concurrency: int

    def __str__(self) -> str:
        return f"batch {self.batch_size}, concurrency {self.concurrency}"


@dataclass(frozen=True)
class CellFigures:
    """One variant's load at one cell (for the default cell: pooled over its windows)."""

    cell: Cell
    requests: int  # answered without error
    errors: int
    seconds: float  # measured load, warm-up excluded
    latency_ms: Mapping[str, float]  # per request, by LATENCIES key; empty when nothing was answered
    cpu_percent: float | None = None  # when the memory source resolves a cell's load

    @property
    def throughput_rps(self) -> float | None:
        return self.requests / self.seconds if self.seconds > 0 else None

    @property
    def rows_per_s(self) -> float | None:
        rps = self.throughput_rps
        return None if rps is None else rps * self.cell.batch_size

    @property
    def error_rate_percent(self) -> float | None:
        total = self.requests + self.errors
        return 100.0 * self.errors / total if total else None

    def per_sample_ms(self) -> dict[str, float]:
        """Latency per row: what a row costs when it travels in a batch of this size."""
        return {k: v / self.cell.batch_size for k, v in self.latency_ms.items()}

    def figures(self) -> dict[str, float]:
        """The figures a gate naming this cell reads (PER_CELL); absent ones have no value."""
        out = {f"latency_{k}_ms": v for k, v in self.latency_ms.items() if k in LATENCIES}
        for name, v in (("throughput_rps", self.throughput_rps), ("error_rate_percent", self.error_rate_percent)):
            if v is not None:
                out[name] = v
        return {k: v for k, v in out.items() if k in PER_CELL and math.isfinite(v)}

    def samples(self, metric: str) -> int:
        """How many requests a figure rests on (errors count for the error rate)."""
        return self.requests + self.errors if metric == "error_rate_percent" else self.requests

    def as_dict(self) -> dict[str, Any]:
        keys = [k for k in LATENCIES if k in self.latency_ms]
        per_sample = self.per_sample_ms()
        return {
            "requests": self.requests, "errors": self.errors, "seconds": self.seconds,
            "latencyMs": {k: _num(self.latency_ms[k]) for k in keys},
            "latencyPerSampleMs": {k: _num(per_sample[k]) for k in keys},
            "throughputRps": _num(self.throughput_rps), "rowsPerS": _num(self.rows_per_s),
            "errorRatePercent": _num(self.error_rate_percent), "cpuPercent": _num(self.cpu_percent),
        }


@dataclass(frozen=True)
class Sweep:
    """Both variants' cells, in sweep order: the default cell first, then batch size by batch size."""

    candidate: Mapping[Cell, CellFigures]
    baseline: Mapping[Cell, CellFigures] | None = None

    def __post_init__(self) -> None:
        if not self.candidate:
            raise ValueError("a sweep needs at least one cell")

    @property
    def cells(self) -> list[Cell]:
        return list(self.candidate)

    @property
    def default(self) -> Cell:
        return next(iter(self.candidate))

    @property
    def batch_sizes(self) -> list[int]:
        return list(dict.fromkeys(c.batch_size for c in self.candidate))

    @property
    def concurrencies(self) -> list[int]:
        return list(dict.fromkeys(c.concurrency for c in self.candidate))

    def figures(self, cell: Cell, baseline: bool = False) -> CellFigures | None:
        side = self.baseline if baseline else self.candidate
        return None if side is None else side.get(cell)

    def describe(self) -> str:
        """The sweep in words, for messages: "batch sizes [1, 8] x concurrencies [4, 16]"."""
        return f"batch sizes {self.batch_sizes} x concurrencies {self.concurrencies}"

    def as_dict(self) -> dict[str, Any]:
        """The JSON `sweep` section: bounded by the spec's list lengths (at most 16 x 17 cells)."""
        base = self.baseline or {}
        return {
            "batchSizes": self.batch_sizes, "concurrencies": self.concurrencies,
            "default": {"batchSize": self.default.batch_size, "concurrency": self.default.concurrency},
            "cells": [{"batchSize": c.batch_size, "concurrency": c.concurrency, "default": c == self.default,
                       "candidate": f.as_dict(),
                       "baseline": base[c].as_dict() if c in base else None}
                      for c, f in self.candidate.items()],
        }


def _num(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None
