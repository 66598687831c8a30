"""The whole evaluation of running model servers: quality, load, memory, leaks, capacity.

Used by `modelrollout demo`, `modelrollout evaluate` and the operator alike, so a CI
pipeline and a cluster reach the same verdict on the same evidence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelrollout.core.capacity import Node, ReplicaNeed, plan
from modelrollout.core.engine import Predicted, SystemFigures, build_report, score_quality
from modelrollout.core.quality import DataError
from modelrollout.core.report import Report
from modelrollout.core.spec import ModelRolloutSpec
from modelrollout.holdout import Holdout
from modelrollout.probes.load import LoadConfig, LoadResult, best_batch, run_load_async
from modelrollout.probes.resources import MIB, LeakReport, ResourceSummary, Source, leak_probe, watch
from modelrollout.serving.client import Endpoint, ModelClient
from modelrollout.serving.protocol import Prediction

Progress = Callable[[str], None]


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


@dataclass
class Measured:
    prediction: Prediction
    classes: list[Any] | None
    sweep: list[LoadResult]
    resources: ResourceSummary | None
    leak: LeakReport | None


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


async def measure(v: Variant, X: np.ndarray, spec: ModelRolloutSpec, progress: Progress) -> Measured:
    ep = v.endpoint
    async with ModelClient(ep) as client:
        await client.wait_ready(spec.staging.ready_timeout)
        progress(f"{v.label}: scoring {len(X)} hold-out rows")
        pred = await client.predict_all(X)
        classes = await client.classes() or spec.serving.classes
        ld = spec.load

        async def sweep() -> list[LoadResult]:
            out = []
            for b in ld.batch_sizes:
                progress(f"{v.label}: load at batch size {b} for {ld.duration:g}s ({ld.mode} loop)")
                out.append(await run_load_async(LoadConfig(
                    url=ep.base + ep.infer_path(), bodies=_bodies(ep, X, b), batch_size=b,
                    concurrency=ld.concurrency, duration=ld.duration, warmup=ld.warmup, mode=ld.mode,
                    rate=ld.rate, timeout=ep.timeout, headers=dict(ep.headers),
                    expect_key="outputs" if ep.protocol == "v2" else "predictions")))
            return out

        if v.source is not None:
            results, resources = await watch(v.source, sweep())
        else:
            results, resources = await sweep(), None
        leak = None
        leak_source = v.leak_source or v.source
        if leak_source is not None and ld.leak_requests > 0:
            progress(f"{v.label}: leak probe over {ld.leak_requests} requests")
            one_row = X[:1]

            async def send(n: int) -> None:
                import asyncio

                sem = asyncio.Semaphore(8)

                async def one() -> None:
                    async with sem:
                        await client.predict(one_row, what="leak-probe request")

                await asyncio.gather(*(one() for _ in range(n)))

            leak = await leak_probe(leak_source, send, requests=ld.leak_requests,
                                    warmup_requests=min(1000, ld.leak_requests // 10 + 1))
    return Measured(pred, classes, results, resources, leak)


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
    limit = next((g.max for g in spec.gates if g.metric == "latency_p99_ms" and g.max is not None), None)
    best = best_batch(m.sweep, limit)
    if best is not None:
        values["best_batch_size"] = float(best.batch_size)
    if m.resources is not None:
        values.update(m.resources.figures())
        samples.update({k: m.resources.samples for k in m.resources.figures()})
    if m.leak is not None:
        values.update(m.leak.figures())
        values["memory_growth_percent"] = m.leak.growth_percent
        samples["memory_growth_mib_per_10k_requests"] = m.leak.requests
        samples["memory_growth_percent"] = m.leak.requests
    capacity = None
    if nodes and (m.resources is not None or v.memory_request_bytes > 0):
        need = ReplicaNeed(
            memory_request_bytes=v.memory_request_bytes, cpu_request_millis=v.cpu_request_millis,
            peak_memory_bytes=m.resources.peak_mib * MIB if m.resources else None,
            headroom_percent=spec.capacity.headroom_percent, node_selector=dict(v.node_selector))
        capacity = plan(nodes, need, per_replica_rps=values.get("throughput_rps"),
                        target_rps=spec.capacity.target_rps, node_price_per_hour=spec.capacity.node_price_per_hour)
        values.update(capacity.figures())
        samples.update({k: len(nodes) for k in capacity.figures()})
    details = {
        "sweep": [r.as_dict() for r in m.sweep],
        "memoryTimeline": m.resources.timeline if m.resources else [],
        "memorySource": v.memory_source,
        "leak": None if m.leak is None else {
            "mibPer10kRequests": m.leak.mib_per_10k_requests, "interval": [m.leak.low, m.leak.high],
            "suspected": m.leak.suspected, "points": m.leak.points},
        "capacity": None if capacity is None else {
            "perNode": capacity.per_node, "perReplicaMemoryMiB": capacity.per_replica_memory_mib},
    }
    return SystemFigures(values, samples), details


async def evaluate_servers(
    spec: ModelRolloutSpec, holdout: Holdout, candidate: Variant, baseline: Variant | None,
    nodes: Sequence[Node] = (), progress: Progress = lambda _: None,
) -> tuple[Report, dict[str, Measured]]:
    """Measure both variants one after the other (so they never compete for the CPU), then decide."""
    X = feature_matrix(holdout)
    measured = {candidate.label: await measure(candidate, X, spec, progress)}
    if baseline is not None:
        measured[baseline.label] = await measure(baseline, X, spec, progress)
    mc, mb = measured[candidate.label], measured.get(baseline.label) if baseline else None
    progress("scoring quality with bootstrap intervals")
    quality = score_quality(
        spec.task, holdout.labels, Predicted(mc.prediction.labels, mc.prediction.proba, mc.classes),
        Predicted(mb.prediction.labels, mb.prediction.proba, mb.classes) if mb else None, spec.quality,
        positive_label=spec.holdout.positive_label, n_features=X.shape[1], slices=holdout.slices)
    cand_sys, cand_details = system_figures(mc, candidate, spec, nodes)
    base_sys, base_details = (system_figures(mb, baseline, spec, nodes) if mb and baseline else (None, None))
    report = build_report(spec.task, spec.gates, quality, candidate_system=cand_sys, baseline_system=base_sys,
                          data_quality=holdout.summary,
                          details={"candidate": cand_details, "baseline": base_details})
    return report, measured
