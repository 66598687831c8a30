"""`spec.load`: the performance table's sweep and the throughput-at-SLO search.

Every knob is bounded, so no manifest can ask for a load the evaluation's deadline cannot cover.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from modelrollout.core.figures import WINDOW_WARMUP
from modelrollout.core.specbase import HOUR, MINUTE, _dur, _err, _Model

#: figures only the throughput-at-SLO search gives: a gate on one needs load.latencySLO
SLO_FIGURES = ("throughput_at_slo_rps", "fleet_throughput_at_slo_rps")


class SloSearch(_Model):
    """How hard to look for the throughput at the latency SLO (core/slo.py)."""

    searches: int = Field(3, ge=1, le=10)  # per variant, interleaved ABBA; 2 or more give an interval
    steps: int = Field(6, ge=2, le=12)  # probes per search: the bracket ends within ceiling / 2^(steps-1)
    probe_duration: Annotated[float, _dur(MINUTE)] = 1.0


class Load(_Model):
    duration: Annotated[float, _dur(HOUR)] = 20.0
    warmup: Annotated[float, _dur(10 * MINUTE)] = 2.0
    concurrency: int = Field(8, ge=1, le=1024)  # the default cell's
    # the sweep's further concurrencies: every batch size runs at each (a CRD field cannot be int-or-list)
    concurrencies: Annotated[list[Annotated[int, Field(ge=1, le=1024)]], Field(max_length=16)] = []
    batch_sizes: Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(min_length=1, max_length=16)] = [1]
    mode: Literal["closed", "open"] = "closed"
    rate: float | None = Field(None, gt=0, le=1_000_000)
    leak_requests: int = Field(20000, ge=0, le=1_000_000)
    windows: int = Field(5, ge=0, le=100)  # per variant, interleaved ABBA; 2 or more give system intervals
    # the p99 bound of the throughput-at-SLO search; without it there is no search
    latency_slo: Annotated[float, _dur(MINUTE)] | None = Field(None, alias="latencySLO")
    slo_search: SloSearch = SloSearch()

    @model_validator(mode="after")
    def _rate(self) -> Load:
        if self.mode == "open" and self.rate is None:
            raise _err("load_rate", "mode 'open' needs a rate (requests per second)")
        if self.mode == "open" and self.concurrencies:
            raise _err("load_axis", f"concurrencies {self.concurrencies} sweep closed-loop workers; mode 'open' "
                       "sends at load.rate whatever the concurrency: remove concurrencies or use mode 'closed'")
        if self.latency_slo is not None and self.mode == "open":
            raise _err("load_axis", "latencySLO searches from the closed-loop sweep's throughput: use mode "
                       "'closed' (the search itself runs open loop)")
        if self.latency_slo is not None and self.latency_slo <= 0:
            raise _err("load_axis", f"latencySLO must be more than 0s, got {self.latency_slo:g}s")
        axis = self.concurrency_axis
        again = sorted({c for c in axis if axis.count(c) > 1})
        if again:
            raise _err("load_axis", f"concurrencies {self.concurrencies} repeat {again} (load.concurrency is "
                       f"{self.concurrency}, the default cell's): each concurrency once")
        again = sorted({b for b in self.batch_sizes if self.batch_sizes.count(b) > 1})
        if again:
            raise _err("load_axis", f"batchSizes {self.batch_sizes} repeat {again}: each batch size once")
        return self

    @property
    def concurrency_axis(self) -> list[int]:
        """The swept concurrencies: the default cell's first."""
        return [self.concurrency, *self.concurrencies]

    @property
    def cells(self) -> list[tuple[int, int]]:
        """Every (batch size, concurrency) of the sweep, the default cell first, then batch-major."""
        return [(b, c) for b in self.batch_sizes for c in self.concurrency_axis]

    def slo_seconds(self) -> float:
        """The longest the throughput-at-SLO search can load one variant: the first pass at every batch size,
        the repeats at one, each probe with a brief warm-up."""
        if self.latency_slo is None:
            return 0.0
        s = self.slo_search
        probes = s.steps * (len(self.batch_sizes) + s.searches - 1)
        return probes * (s.probe_duration + WINDOW_WARMUP)
