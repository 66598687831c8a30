"""Memory and CPU of a model server, before, during and after load; and leak detection.

Sources: a local process (psutil); the server's own Prometheus endpoint
(`process_resident_memory_bytes`, `process_cpu_seconds_total`), which every Python, Go and
Java client library exports and which works for a pod the operator cannot see into; or a
per-pod usage API (metrics.k8s.io), which measures what the kubelet and the OOM killer see
(every container's working set) but only as fresh as metrics-server's resolution.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import theilslopes

MIB = 2.0**20


@dataclass(frozen=True)
class Sample:
    t: float  # seconds, monotonic
    rss_bytes: float
    cpu_seconds: float


class Source(Protocol):
    resolution: float  # seconds between fresh readings: windows shorter than two of these get no memory figures

    async def sample(self) -> Sample: ...


class ProcessSource:
    resolution = 0.0

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)

    async def sample(self) -> Sample:
        with self.proc.oneshot():
            cpu = self.proc.cpu_times()
            return Sample(asyncio.get_running_loop().time(), float(self.proc.memory_info().rss),
                          float(cpu.user + cpu.system))


class PrometheusSource:
    """Reads process metrics from a /metrics URL; sums over series (one per process)."""

    resolution = 0.0

    def __init__(self, url: str, timeout: float = 5.0):
        self.url, self.timeout = url, timeout

    async def sample(self) -> Sample:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as s, \
                s.get(self.url) as r:
            if r.status != 200:
                raise RuntimeError(f"{self.url}: HTTP {r.status}")
            text = await r.text()
        rss = cpu = None
        for fam in text_string_to_metric_families(text):
            if fam.name == "process_resident_memory_bytes":
                rss = sum(s.value for s in fam.samples)
            elif fam.name == "process_cpu_seconds":  # the parser strips _total from counters
                cpu = sum(s.value for s in fam.samples if s.name.endswith("_total"))
        if rss is None or cpu is None:
            raise RuntimeError(f"{self.url}: no process_resident_memory_bytes / process_cpu_seconds_total")
        return Sample(asyncio.get_running_loop().time(), float(rss), float(cpu))


PodUsage = tuple[float, float]  # (memory working set bytes, CPU cores) of one pod


class UsageSource:
    """Per replica from per-pod usage: the largest pod's memory; the mean CPU rate, integrated
    (trapezoid) into CPU seconds, since such APIs report a rate and `Sample` a counter.

    metrics-server refreshes every 10-15 s, so within `min_interval` of a fetch the last answer
    is reused rather than asking the API server four times a second for the same numbers.
    """

    def __init__(self, fetch: Callable[[], Awaitable[list[PodUsage]]], what: str = "metrics.k8s.io",
                 min_interval: float = 0.0):
        self.fetch, self.what, self.min_interval = fetch, what, min_interval
        self.resolution = min_interval
        self._last: tuple[float, float] | None = None  # (t, CPU cores)
        self._fetched: tuple[float, list[PodUsage]] | None = None
        self._cpu_seconds = 0.0

    async def sample(self) -> Sample:
        t = asyncio.get_running_loop().time()
        if self._fetched is not None and t - self._fetched[0] < self.min_interval:
            pods = self._fetched[1]
        else:
            pods = await self.fetch()
            self._fetched = (t, pods)
        if not pods:
            raise RuntimeError(f"{self.what}: no usage reported for the model server's pods")
        rate = sum(cpu for _, cpu in pods) / len(pods)
        if self._last is not None:
            self._cpu_seconds += (self._last[1] + rate) / 2 * (t - self._last[0])
        self._last = (t, rate)
        return Sample(t, max(mem for mem, _ in pods), self._cpu_seconds)


@dataclass
class ResourceSummary:
    before_mib: float
    peak_mib: float
    after_mib: float
    growth_percent: float
    cpu_percent: float
    samples: int
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)

    def figures(self) -> dict[str, float]:
        return {"memory_before_mib": self.before_mib, "memory_peak_mib": self.peak_mib,
                "memory_after_mib": self.after_mib, "memory_growth_percent": self.growth_percent,
                "cpu_percent": self.cpu_percent}


async def watch(source: Source, work: Awaitable[Any], interval: float = 0.25) -> tuple[Any, ResourceSummary]:
    """Run `work` while sampling `source`; the summary covers before, during and after."""
    before = await source.sample()
    samples = [before]
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                samples.append(await source.sample())

    task = asyncio.create_task(sampler())
    try:
        result = await work
    finally:
        stop.set()
        await task
    after = await source.sample()
    samples.append(after)
    peak = max(s.rss_bytes for s in samples)
    dt = after.t - before.t
    summary = ResourceSummary(
        before_mib=before.rss_bytes / MIB, peak_mib=peak / MIB, after_mib=after.rss_bytes / MIB,
        growth_percent=100.0 * (after.rss_bytes - before.rss_bytes) / before.rss_bytes,
        cpu_percent=100.0 * (after.cpu_seconds - before.cpu_seconds) / dt if dt > 0 else 0.0,
        samples=len(samples), timeline=[(s.t - before.t, s.rss_bytes / MIB) for s in samples],
    )
    return result, summary


def merge(parts: list[ResourceSummary]) -> ResourceSummary:
    """One summary over consecutive watches of the same server (its load windows)."""
    first, last = parts[0], parts[-1]
    seconds = [p.timeline[-1][0] if p.timeline else 0.0 for p in parts]
    total = sum(seconds)
    cpu = sum(p.cpu_percent * s for p, s in zip(parts, seconds, strict=True)) / total if total > 0 else 0.0
    timeline, offset = [], 0.0
    for p, s in zip(parts, seconds, strict=True):
        timeline += [(offset + t, mib) for t, mib in p.timeline]
        offset += s
    return ResourceSummary(
        before_mib=first.before_mib, peak_mib=max(p.peak_mib for p in parts), after_mib=last.after_mib,
        growth_percent=100.0 * (last.after_mib - first.before_mib) / first.before_mib, cpu_percent=cpu,
        samples=sum(p.samples for p in parts), timeline=timeline)


@dataclass
class LeakReport:
    mib_per_10k_requests: float
    low: float  # 95% interval of the slope (Theil–Sen)
    high: float
    requests: int
    growth_percent: float
    suspected: bool
    points: list[tuple[int, float]]  # (requests so far, MiB)

    def figures(self) -> dict[str, float]:
        # memory_growth_mib_per_10k_requests: the slope's first name, kept for manifests that use it
        return {"memory_leak_mib_per_10k_requests": self.mib_per_10k_requests,
                "memory_growth_mib_per_10k_requests": self.mib_per_10k_requests,
                "memory_leak_suspected": float(self.suspected)}


async def leak_probe(
    source: Source, send: Callable[[int], Awaitable[None]], *, requests: int = 20000, steps: int = 10,
    warmup_requests: int = 1000, threshold_mib_per_10k: float = 1.0,
) -> LeakReport:
    """Memory growth per 10,000 requests over a sustained phase after warm-up.

    Robust to garbage-collector noise: the memory after each step is the median of three
    samples, the slope is Theil–Sen (median of pairwise slopes), and a leak is suspected only
    when the whole 95% interval of the slope is above zero and the slope above the threshold.
    """
    await send(warmup_requests)
    per = max(1, requests // steps)
    points: list[tuple[int, float]] = []

    async def settled() -> float:
        vals = []
        for _ in range(3):
            vals.append((await source.sample()).rss_bytes / MIB)
            await asyncio.sleep(0.05)
        return statistics.median(vals)

    points.append((0, await settled()))
    for i in range(1, steps + 1):
        await send(per)
        points.append((i * per, await settled()))
    x = np.array([p[0] for p in points], dtype=np.float64) / 10000
    y = np.array([p[1] for p in points])
    slope, _, low, high = theilslopes(y, x, 0.95)
    growth = 100.0 * (y[-1] - y[0]) / y[0]
    suspected = bool(low > 0 and slope > threshold_mib_per_10k)
    return LeakReport(float(slope), float(low), float(high), per * steps, float(growth), suspected, points)


async def idle_cpu(source: Source, seconds: float) -> float:
    """CPU % of a server over `seconds` with no load from us: a server still busy after the load
    (a runaway thread, a cache rebuilt in a loop) shows here, where the load's own average hides it."""
    a = await source.sample()
    await asyncio.sleep(seconds)
    b = await source.sample()
    return 100.0 * (b.cpu_seconds - a.cpu_seconds) / (b.t - a.t) if b.t > a.t else 0.0
