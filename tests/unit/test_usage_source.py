"""Per-replica memory and CPU from per-pod usage (metrics.k8s.io reports a working set and a CPU rate)."""

from __future__ import annotations

import asyncio

import pytest

from modelrollout.probes.resources import MIB, PodUsage, UsageSource, watch


def test_largest_pod_memory_and_integrated_cpu() -> None:
    reports: list[list[PodUsage]] = [
        [(100 * MIB, 0.5), (300 * MIB, 1.5)],  # mean rate 1.0 core
        [(200 * MIB, 1.0), (250 * MIB, 2.0)],  # mean rate 1.5 cores
    ]

    async def fetch() -> list[PodUsage]:
        return reports.pop(0)

    async def main() -> tuple[float, float, float, float]:
        src = UsageSource(fetch)
        a = await src.sample()
        await asyncio.sleep(0.2)
        b = await src.sample()
        return a.rss_bytes, b.rss_bytes, b.cpu_seconds - a.cpu_seconds, b.t - a.t

    first, second, cpu, dt = asyncio.run(main())
    assert first == 300 * MIB and second == 250 * MIB
    assert cpu == pytest.approx(1.25 * dt)  # trapezoid of 1.0 and 1.5 cores over dt


def test_no_pods_is_an_error_naming_the_source() -> None:
    async def fetch() -> list[PodUsage]:
        return []

    with pytest.raises(RuntimeError, match=r"metrics\.k8s\.io: no usage reported"):
        asyncio.run(UsageSource(fetch).sample())


def test_watch_summarises_usage_source() -> None:
    mem = iter([100, 150, 180, 120, 120, 120, 120, 120])

    async def fetch() -> list[PodUsage]:
        return [(next(mem) * MIB, 0.25)]

    async def main() -> float:
        await asyncio.sleep(0.3)
        return 1.0

    _, summary = asyncio.run(watch(UsageSource(fetch), main(), interval=0.1))
    assert summary.before_mib == 100
    assert summary.peak_mib == 180
    assert summary.growth_percent == pytest.approx(100.0 * (summary.after_mib - 100) / 100)
    assert summary.cpu_percent == pytest.approx(25.0)


def test_answers_within_min_interval_are_reused() -> None:
    calls = 0

    async def fetch() -> list[PodUsage]:
        nonlocal calls
        calls += 1
        return [(calls * MIB, 1.0)]

    async def main() -> list[float]:
        src = UsageSource(fetch, min_interval=0.5)
        out = []
        for pause in (0.05, 0.05, 0.6, 0.0):  # samples at t = 0, 0.05, 0.1, 0.7: the last fetches again
            out.append((await src.sample()).rss_bytes / MIB)
            await asyncio.sleep(pause)
        return out

    assert asyncio.run(main()) == [1.0, 1.0, 1.0, 2.0]
    assert calls == 2
