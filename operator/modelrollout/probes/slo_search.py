"""Runs the throughput-at-SLO searches of core/slo.py against live servers, interleaved ABBA.

Each probe is an open-loop load at the search's next rate, latency measured from the intended send
time; its in-flight bound (core/slo.max_in_flight) ends a hopeless probe as backlog errors instead of
opening thousands of connections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from modelrollout.core.figures import WINDOW_WARMUP
from modelrollout.core.loadspec import Load
from modelrollout.core.slo import Probe, Search, SloResult, ceilings, choose
from modelrollout.core.windows import schedule
from modelrollout.probes.load import LoadResult

#: (variant label, batch size, offered requests/s, warm-up seconds, seconds) -> the probe's load
RunProbe = Callable[[str, int, float, float, float], Awaitable[LoadResult]]


async def search(label: str, batch: int, ceiling: float, load: Load, run: RunProbe) -> Search:
    assert load.latency_slo is not None
    s = Search(batch, load.latency_slo * 1000, ceiling, load.slo_search.steps)
    while (rate := s.next_rate()) is not None:
        r = await run(label, batch, rate, WINDOW_WARMUP, load.slo_search.probe_duration)
        s.record(Probe(rate, r.requests, sum(r.errors.values()), r.latency_ms.get("p99"), r.latency_ms.get("mean")))
    return s


async def search_all(labels: Sequence[str], closed_loop: Mapping[str, Sequence[LoadResult]], load: Load,
                     run: RunProbe, progress: Callable[[str], None]) -> dict[str, SloResult]:
    """Each variant's first pass (every batch size) and repeats (the chosen one), in ABBA order."""
    assert load.latency_slo is not None
    tops = {v: ceilings([(r.batch_size, r.throughput_rps) for r in closed_loop[v] if r.requests])
            for v in labels}
    first: dict[str, list[Search]] = {v: [] for v in labels}
    repeats: dict[str, list[Search]] = {v: [] for v in labels}
    k = load.slo_search.searches
    for j, v in schedule(k, list(labels)):
        batches = [b for b in load.batch_sizes if b in tops[v]] if j == 0 else [choose(first[v]).batch_size]
        progress(f"{v}: throughput at the {load.latency_slo * 1000:g} ms p99 SLO, search {j + 1} of {k} "
                 f"(batch {', '.join(map(str, batches))}; open loop)")
        for b in batches:
            s = await search(v, b, tops[v][b], load, run)
            (first if j == 0 else repeats)[v].append(s)
    seconds = load.slo_search.steps * load.slo_search.probe_duration
    return {v: SloResult(load.latency_slo * 1000, first[v], repeats[v], seconds) for v in labels if first[v]}
