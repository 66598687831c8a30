"""The whole evaluation of running model servers: quality, load, memory, leaks, capacity.

Used by `modelrollout demo`, `modelrollout evaluate` and the operator alike, so a CI
pipeline and a cluster reach the same verdict on the same evidence.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
import pandas as pd

from modelrollout.core.capacity import Node, ReplicaNeed, plan
from modelrollout.core.engine import Predicted, SystemFigures, build_report, score_quality
from modelrollout.core.figures import WINDOW_WARMUP
from modelrollout.core.pods import MeasuredPod
from modelrollout.core.quality import DataError
from modelrollout.core.report import Report
from modelrollout.core.slo import SloResult, max_in_flight
from modelrollout.core.spec import ModelRolloutSpec
from modelrollout.core.sweep import Cell, CellFigures
from modelrollout.core.windows import WINDOWED, Windows, schedule
from modelrollout.holdout import Holdout
from modelrollout.probes.load import PERCENTILES, Generator, LoadConfig, LoadResult, best_batch, pool
from modelrollout.probes.resources import (
    MIB,
    LeakReport,
    ResourceSummary,
    Source,
    idle_cpu,
    leak_probe,
    merge,
    watch,
)
from modelrollout.probes.slo_search import search_all
from modelrollout.serving.client import Endpoint, ModelClient
from modelrollout.serving.protocol import Prediction

Progress = Callable[[str], None]
IDLE_CPU_S = 1.0  # how long each server's CPU is read with no load, before and after the load


@dataclass(frozen=True)
class Variant:
    """One model server under evaluation and how to read its memory."""

    label: str  # "candidate" | "baseline"
    endpoint: Endpoint
    source: Source | None = None
    memory_request_bytes: float = 0.0
    cpu_request_millis: float = 0.0
    node_selector: tuple[tuple[str, str], ...] = ()
    leak_source: Source | None = None  # when it differs from `source` (the leak probe needs fresh samples)
    memory_source: str | None = None  # where memory comes from, for the report
    time_to_ready_s: float | None = None  # known beforehand (the operator's pods: scheduled -> Ready)
    started_at: float | None = None  # time.monotonic() when a local server process was started
    measured_pod: MeasuredPod | None = None  # with several replicas: the pod the load and memory are of


@dataclass
class Measured:
    prediction: Prediction
    classes: list[Any] | None
    sweep: list[LoadResult]  # per load cell in sweep order; the default cell's first, pooled over its windows
    resources: ResourceSummary | None
    leak: LeakReport | None
    windows: list[LoadResult] = field(default_factory=list)  # the default cell, window by window
    window_resources: list[ResourceSummary] = field(default_factory=list)  # when the source resolves windows
    sweep_resources: list[ResourceSummary | None] = field(default_factory=list)  # per cell, when resolved
    time_to_ready_s: float | None = None
    slo: SloResult | None = None  # the throughput-at-SLO searches, with load.latencySLO
    idle_cpu: tuple[float | None, float | None] = (None, None)  # CPU % with no load, before and after it


def feature_matrix(h: Holdout) -> np.ndarray:
    bad = [c for c in h.features.columns if not pd.api.types.is_numeric_dtype(h.features[c])]
    if bad:
        raise DataError(f"feature columns must be numeric; not numeric: {bad[:5]}")
    return h.features.to_numpy(dtype=np.float64)


def _bodies(ep: Endpoint, X: np.ndarray, batch: int, count: int = 16) -> list[bytes]:
    out = []
    for i in range(count):
        start = (i * batch) % max(1, len(X) - batch + 1)
        rows = X[start:start + batch]
        if len(rows) < batch:  # a hold-out smaller than the batch: repeat rows
            rows = np.resize(X, (batch, X.shape[1]))
        out.append(json.dumps(ep.request_body(rows, proba=False)).encode())
    return out


def _config(ep: Endpoint, X: np.ndarray, spec: ModelRolloutSpec, cell: tuple[int, int], duration: float,
            warmup: float) -> LoadConfig:
    ld, (batch, concurrency) = spec.load, cell
    return LoadConfig(url=ep.base + ep.infer_path(), bodies=_bodies(ep, X, batch), batch_size=batch,
                      concurrency=concurrency, duration=duration, warmup=warmup, mode=ld.mode, rate=ld.rate,
                      timeout=ep.timeout, headers=dict(ep.headers),
                      expect_key="outputs" if ep.protocol == "v2" else "predictions")


async def _watched(source: Source | None, cfg: LoadConfig, gen: Generator) -> tuple[
        LoadResult, ResourceSummary | None]:
    if source is None:
        return await gen.run_async(cfg), None
    return cast(tuple[LoadResult, ResourceSummary], await watch(source, gen.run_async(cfg)))


async def _ready(v: Variant, spec: ModelRolloutSpec) -> float | None:
    """Wait until the server is ready; its time to ready when it was started locally."""
    async with ModelClient(v.endpoint) as client:
        await client.wait_ready(spec.staging.ready_timeout)
    return v.time_to_ready_s if v.started_at is None else time.monotonic() - v.started_at


async def _score(v: Variant, X: np.ndarray, spec: ModelRolloutSpec, progress: Progress) -> tuple[
        Prediction, list[Any] | None]:
    async with ModelClient(v.endpoint) as client:
        progress(f"{v.label}: scoring {len(X)} hold-out rows")
        return await client.predict_all(X), await client.classes() or spec.serving.classes


async def _windows(variants: Sequence[Variant], X: np.ndarray, spec: ModelRolloutSpec, progress: Progress
                   ) -> dict[str, tuple[list[LoadResult], list[ResourceSummary | None]]]:
    """The default cell in windows alternating between the variants (ABBA BAAB ...), so the same
    machine noise falls on both and each figure gets an interval from its windows."""
    ld, cell = spec.load, spec.load.cells[0]
    k = max(1, ld.windows)
    out: dict[str, tuple[list[LoadResult], list[ResourceSummary | None]]] = {v.label: ([], []) for v in variants}
    by_label = {v.label: v for v in variants}
    with Generator() as gen:
        for j, label in schedule(k, [v.label for v in variants]):
            v, (results, resources) = by_label[label], out[label]
            warmup = ld.warmup if not results else min(ld.warmup, WINDOW_WARMUP)
            progress(f"{label}: load at batch size {cell[0]}, concurrency {cell[1]}, window {j + 1} of {k}, "
                     f"{ld.duration / k:g}s ({ld.mode} loop)")
            r, res = await _watched(v.source, _config(v.endpoint, X, spec, cell, ld.duration / k, warmup), gen)
            results.append(r)
            resources.append(res)
    return out


async def _rest(v: Variant, X: np.ndarray, spec: ModelRolloutSpec, progress: Progress) -> tuple[
        list[LoadResult], list[ResourceSummary | None]]:
    """The other cells of the sweep, once each (for the table, cell gates and the best batch size)."""
    ld = spec.load
    sweep: list[LoadResult] = []
    parts: list[ResourceSummary | None] = []
    with Generator() as gen:
        for cell in ld.cells[1:]:
            progress(f"{v.label}: load at batch size {cell[0]}, concurrency {cell[1]} for {ld.duration:g}s "
                     f"({ld.mode} loop)")
            r, res = await _watched(v.source, _config(v.endpoint, X, spec, cell, ld.duration, ld.warmup), gen)
            sweep.append(r)
            parts.append(res)
    return sweep, parts


async def _slo(variants: Sequence[Variant], X: np.ndarray, spec: ModelRolloutSpec,
               closed: dict[str, list[LoadResult]], progress: Progress) -> tuple[
        dict[str, SloResult], dict[str, list[ResourceSummary]]]:
    """The throughput-at-SLO searches, interleaved between the variants (core/slo.py), with the memory
    and CPU each probe drew: the heaviest load of the evaluation belongs in the peak."""
    if spec.load.latency_slo is None:
        return {}, {}
    slo_ms = spec.load.latency_slo * 1000
    by_label = {v.label: v for v in variants}
    watched: dict[str, list[ResourceSummary]] = {label: [] for label in by_label}
    with Generator() as gen:
        async def probe(label: str, batch: int, rate: float, warmup: float, seconds: float) -> LoadResult:
            cfg = _config(by_label[label].endpoint, X, spec, (batch, 1), seconds, warmup)
            r, res = await _watched(by_label[label].source, replace(
                cfg, mode="open", rate=rate, max_in_flight=max_in_flight(rate, slo_ms)), gen)
            if res is not None:
                watched[label].append(res)
            return r

        return await search_all(list(by_label), closed, spec.load, probe, progress), watched


async def _leak(v: Variant, X: np.ndarray, spec: ModelRolloutSpec, progress: Progress) -> LeakReport | None:
    """The sustained leak probe: memory against requests served, after every other load."""
    ld = spec.load
    leak_source = v.leak_source or v.source
    if leak_source is None or ld.leak_requests <= 0:
        return None
    progress(f"{v.label}: leak probe over {ld.leak_requests} requests")
    one_row = X[:1]
    async with ModelClient(v.endpoint) as client:
        sem = asyncio.Semaphore(8)

        async def one() -> None:
            async with sem:
                await client.predict(one_row, what="leak-probe request")

        async def send(n: int) -> None:
            await asyncio.gather(*(one() for _ in range(n)))

        return await leak_probe(leak_source, send, requests=ld.leak_requests,
                                warmup_requests=min(1000, ld.leak_requests // 10 + 1))


def resolves(source: Source | None, seconds: float) -> bool:
    """Whether `source` reads fresh values at least twice in `seconds`: the least a figure over that time
    rests on (memory and CPU per window, per cell, idle CPU)."""
    return source is not None and seconds >= 2 * source.resolution


async def _idle_cpu(variants: Sequence[Variant]) -> dict[str, float | None]:
    """Each server's CPU with no load from us, over IDLE_CPU_S (None when its source is not that fresh)."""
    got = await asyncio.gather(*(idle_cpu(v.source, IDLE_CPU_S) if v.source is not None
                                 and resolves(v.source, IDLE_CPU_S) else asyncio.sleep(0) for v in variants))
    return {v.label: g for v, g in zip(variants, got, strict=True)}


async def measure_all(variants: Sequence[Variant], X: np.ndarray, spec: ModelRolloutSpec,
                      progress: Progress) -> dict[str, Measured]:
    """Quality, then the load in this order: the default cell's windows (interleaved), the other cells, the
    throughput-at-SLO searches (interleaved), the leak probe; idle CPU before and after all of it."""
    ready = dict(zip([v.label for v in variants], await asyncio.gather(*(_ready(v, spec) for v in variants)),
                     strict=True))
    scored = {v.label: await _score(v, X, spec, progress) for v in variants}
    cpu_before = await _idle_cpu(variants)
    windowed = await _windows(variants, X, spec, progress)
    rest = {v.label: await _rest(v, X, spec, progress) for v in variants}
    sweeps = {v.label: [pool(windowed[v.label][0]), *rest[v.label][0]] for v in variants}
    slo, slo_res = await _slo(variants, X, spec, sweeps, progress)
    leaks = {v.label: await _leak(v, X, spec, progress) for v in variants}
    cpu_after = await _idle_cpu(variants)
    out = {}
    ld = spec.load
    for v in variants:
        windows, window_res = windowed[v.label]
        rest_res = rest[v.label][1]
        in_windows = [r for r in window_res if r is not None]
        parts = in_windows + [r for r in rest_res if r is not None] + slo_res.get(v.label, [])
        per_window, per_cell = resolves(v.source, ld.duration / max(1, ld.windows)), resolves(v.source, ld.duration)
        out[v.label] = Measured(
            scored[v.label][0], scored[v.label][1], sweeps[v.label], merge(parts) if parts else None,
            leaks[v.label], windows, in_windows if per_window else [],
            [merge(in_windows) if in_windows else None, *rest_res] if per_cell else [], ready[v.label],
            slo.get(v.label), (cpu_before[v.label], cpu_after[v.label]))
    return out


def _cells(m: Measured) -> dict[Cell, CellFigures]:
    """The performance table of one variant, in sweep order."""
    res = m.sweep_resources or [None] * len(m.sweep)
    return {Cell(r.batch_size, r.concurrency): CellFigures(
        Cell(r.batch_size, r.concurrency), r.requests, sum(r.errors.values()), r.duration_s,
        {k: v for k, v in r.latency_ms.items() if k != "mean"}, s.cpu_percent if s is not None else None)
        for r, s in zip(m.sweep, res, strict=True)}


def system_figures(m: Measured, v: Variant, spec: ModelRolloutSpec, nodes: Sequence[Node]) -> tuple[
        SystemFigures, dict[str, Any]]:
    values: dict[str, float] = {}
    samples: dict[str, int] = {}
    first = m.sweep[0] if m.sweep else None
    if first is not None and first.requests:
        for k, ms in first.latency_ms.items():
            if k != "mean":
                values[f"latency_{k}_ms"] = ms
                samples[f"latency_{k}_ms"] = first.requests
        values["throughput_rps"] = first.throughput_rps
        samples["throughput_rps"] = first.requests
    total_ok = sum(r.requests for r in m.sweep)
    total_err = sum(sum(r.errors.values()) for r in m.sweep)
    if total_ok + total_err:
        values["error_rate_percent"] = 100.0 * total_err / (total_ok + total_err)
        samples["error_rate_percent"] = total_ok + total_err
    # the p99 bound of the default cell (a gate naming a cell bounds that cell only)
    limit = next((g.max for g in spec.gates if g.metric == "latency_p99_ms" and g.max is not None
                  and not g.names_cell), None)
    best = best_batch(m.sweep, limit)
    if best is not None:
        values["best_batch_size"] = float(best.batch_size)
    if m.resources is not None:
        values.update(m.resources.figures())
        samples.update({k: m.resources.samples for k in m.resources.figures()})
    if m.leak is not None:  # memory_growth_percent stays the load's after vs before; the slope is its own
        values.update(m.leak.figures())
        samples.update({k: m.leak.requests for k in m.leak.figures()})
    if m.slo is not None:
        values["throughput_at_slo_rps"] = m.slo.rows_per_s
        samples["throughput_at_slo_rps"] = len(m.slo.at_chosen)
    for name, cpu in zip(("cpu_before_percent", "cpu_after_percent"), m.idle_cpu, strict=True):
        if cpu is not None:
            values[name] = cpu
            samples[name] = 2
    if m.time_to_ready_s is not None:
        values["time_to_ready_s"] = m.time_to_ready_s
        samples["time_to_ready_s"] = 1
    capacity = None
    if nodes and (m.resources is not None or v.memory_request_bytes > 0):
        need = ReplicaNeed(
            memory_request_bytes=v.memory_request_bytes, cpu_request_millis=v.cpu_request_millis,
            peak_memory_bytes=m.resources.peak_mib * MIB if m.resources else None,
            headroom_percent=spec.capacity.headroom_percent, node_selector=dict(v.node_selector))
        rows = None if first is None or not first.requests else first.rows_per_s
        capacity = plan(nodes, need, rows_per_s=rows, at_slo_rows_per_s=values.get("throughput_at_slo_rps"),
                        target_rps=spec.capacity.target_rps, node_price_per_hour=spec.capacity.node_price_per_hour)
        values.update(capacity.figures())
        samples.update({k: len(nodes) for k in capacity.figures()})
    details = {
        "sweep": [r.as_dict() for r in m.sweep],
        "memoryTimeline": m.resources.timeline if m.resources else [],
        "memorySource": v.memory_source,
        "measuredPod": None if v.measured_pod is None else {"name": v.measured_pod.name,
                                                            "replicas": v.measured_pod.replicas},
        "sloSearch": None if m.slo is None else m.slo.as_dict(),
        "leak": None if m.leak is None else {
            "mibPer10kRequests": m.leak.mib_per_10k_requests, "interval": [m.leak.low, m.leak.high],
            "suspected": m.leak.suspected, "points": m.leak.points},
        "capacity": None if capacity is None else {
            "perNode": capacity.per_node, "perReplicaMemoryMiB": capacity.per_replica_memory_mib},
    }
    return SystemFigures(values, samples, windows=_window_figures(m, values, spec.load.duration),
                         cells=_cells(m)), details


def _window_figures(m: Measured, values: dict[str, float], seconds: float) -> dict[str, Windows]:
    """Each windowed figure's value in every window, for its interval (core/windows.py)."""
    per: dict[str, list[float]] = {}
    for w in m.windows if len(m.windows) >= 2 else []:
        for k in PERCENTILES:
            per.setdefault(f"latency_{k}_ms", []).append(w.latency_ms.get(k, float("nan")))
        per.setdefault("throughput_rps", []).append(w.throughput_rps)
    if len(m.window_resources) >= 2:
        per["memory_peak_mib"] = [r.peak_mib for r in m.window_resources]
        per["cpu_percent"] = [r.cpu_percent for r in m.window_resources]
    out = {k: Windows(values[k], np.array(v, dtype=np.float64), seconds)
           for k, v in per.items() if k in values and k in WINDOWED}
    if m.slo is not None and len(m.slo.at_chosen) >= 2:  # one value per search
        out["throughput_at_slo_rps"] = m.slo.windows()
    return out


async def evaluate_servers(
    spec: ModelRolloutSpec, holdout: Holdout, candidate: Variant, baseline: Variant | None,
    nodes: Sequence[Node] = (), progress: Progress = lambda _: None,
) -> tuple[Report, dict[str, Measured]]:
    """Measure the variants one at a time (they never compete for the CPU), load windows interleaved, then
    decide."""
    X = feature_matrix(holdout)
    measured = await measure_all([candidate] + ([baseline] if baseline else []), X, spec, progress)
    mc, mb = measured[candidate.label], measured.get(baseline.label) if baseline else None
    progress("scoring quality with bootstrap intervals")
    quality = score_quality(
        spec.task, holdout.labels, Predicted(mc.prediction.labels, mc.prediction.proba, mc.classes),
        Predicted(mb.prediction.labels, mb.prediction.proba, mb.classes) if mb else None, spec.quality,
        positive_label=spec.holdout.positive_label, n_features=X.shape[1], slices=holdout.slices,
        facet=spec.fairness.as_facet() if spec.fairness else None)
    cand_sys, cand_details = system_figures(mc, candidate, spec, nodes)
    base_sys, base_details = (system_figures(mb, baseline, spec, nodes) if mb and baseline else (None, None))
    report = build_report(spec.task, spec.gates, quality, candidate_system=cand_sys, baseline_system=base_sys,
                          data_quality=holdout.summary, holdout=holdout.fingerprint, drift=holdout.drift,
                          drift_threshold=spec.drift.psi_threshold if spec.drift else 0.25,
                          details={"candidate": cand_details, "baseline": base_details},
                          level=spec.quality.confidence)
    return report, measured
