"""Evaluations of staged variants as background tasks, bounded by a semaphore, and what they read.

An evaluation outlives the reconcile that started it; its result reaches status directly and
its failure is kept here for the next reconcile to decide on. Hold-outs are read once per
generation, before anything is created, and reused by the evaluation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiohttp

from modelrollout import holdout_source
from modelrollout.controller.settings import Settings
from modelrollout.controller.stored_report import config_map as report_config_map
from modelrollout.controller.stored_report import render as render_report
from modelrollout.controller.stored_report import status_of as report_status
from modelrollout.controller.tracker import Tracker
from modelrollout.core import groups
from modelrollout.core.dataquality import data_gate_failures, data_status
from modelrollout.core.decide import ANNOTATION_RETRY
from modelrollout.core.drift import drift_figures
from modelrollout.core.pods import MeasuredPod, PodProblems, measured_pod, pod_problems, time_to_ready
from modelrollout.core.quality import DataError
from modelrollout.core.report import Report, gate_dict, sweep_status
from modelrollout.core.slo import status_form
from modelrollout.core.spec import ModelRolloutSpec
from modelrollout.core.text import cap
from modelrollout.evaluation import Measured, Variant, evaluate_servers
from modelrollout.holdout import Holdout
from modelrollout.holdout_reference import drift_between
from modelrollout.kube import objects
from modelrollout.kube.api import Kube, NotFound, pod_requests, run
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.probes.resources import PodUsage, PrometheusSource, Source, UsageSource
from modelrollout.serving.client import Endpoint, ServerError
from modelrollout.status import StatusWriter

log = logging.getLogger("modelrollout")
HOLDOUT_STATUS = ("sha256", "bytes", "rows", "rowsUsed", "columns", "schemaSha256")  # not the schema: bounded
POD_STATUS_SETTLE = 5.0  # seconds for the kubelet to report why a server its clients saw die died


@dataclass
class Evaluation:
    task: asyncio.Task[None]
    error: str | None = None


@dataclass
class Evaluations:
    kube: Kube
    settings: Settings
    metrics: OperatorMetrics
    tasks: dict[str, Evaluation] = field(default_factory=dict)
    holdouts: dict[str, Holdout] = field(default_factory=dict)
    semaphore: asyncio.Semaphore | None = None
    reach: holdout_source.Reach = field(default_factory=holdout_source.Reach.from_env)
    writer: StatusWriter | None = None  # the controller's: evaluation figures are one of its records
    tracker: Tracker | None = None  # the controller's: MLflow runs and registry aliases

    def __post_init__(self) -> None:
        self.semaphore = asyncio.Semaphore(self.settings.max_concurrent_evaluations)

    def state(self, uid: str, generation: int) -> tuple[Literal["none", "running", "error"], str | None] | None:
        """(state, error) of this generation's evaluation; None if this process never started one."""
        ev = self.tasks.get(f"{uid}:{generation}")
        if ev is None:
            return None
        return ("error" if ev.error else ("running" if not ev.task.done() else "none")), ev.error

    async def pod_problems(self, body: Mapping[str, Any], spec: ModelRolloutSpec,
                            settle: float = 0.0) -> PodProblems:
        """Why the staging pods do not serve. With `settle`, wait that long for a fatal cause to show:
        a server that just died is reported by the kubelet a moment after its clients notice."""
        ns, end = objects.staging_ns(body, spec), time.monotonic() + settle
        while True:
            found = pod_problems(await run(self.kube.pods, ns, objects.staging_selector(body)))
            if found.fatal or time.monotonic() >= end:
                return found
            await asyncio.sleep(1.0)

    async def load_holdout(self, body: Mapping[str, Any], spec: ModelRolloutSpec) -> tuple[str, str] | None:
        """Read and check the hold-out before anything is created; (error, reason) if it is unusable.

        Reading is confined by the operator's `Reach` (allowed hosts, the PVC root, a memory budget for
        the parsing child process); column names appear in messages only for sources in the author's
        own namespace (ConfigMap, PVC), never for a URL's content.
        """
        key = f"{body['metadata']['uid']}:{body['metadata'].get('generation', 1)}"
        if key in self.holdouts:
            return None
        ns = str(body["metadata"]["namespace"])

        async def config_map(n: str, name: str, k: str) -> bytes:
            return await run(self.kube.config_map_file, n, name, k)

        async def secret(n: str, name: str, k: str) -> tuple[str, dict[str, str]]:
            return await run(self.kube.secret, n, name, k)

        try:
            data, name = await holdout_source.fetch(spec.holdout, ns, self.reach, config_map=config_map,
                                                    secret=secret)
            fetched = spec.holdout.url is not None or spec.holdout.s3 is not None  # the tenant may not read it
            loaded = await holdout_source.load(data, name, spec, self.reach, echo_columns=not fetched)
            if spec.fairness is not None:  # a facet with no rows on one side is refused before staging
                spec.fairness.as_facet().codes(loaded.slices[spec.fairness.facet])
            if spec.drift is not None:
                await self._load_drift(spec, ns, loaded, config_map, secret)
            failed = data_gate_failures(spec.gates, loaded.summary, drift_figures(loaded.drift))
            if failed is not None:
                return cap(failed, 600), "HoldoutQuality"
            self.holdouts[key] = loaded
        except holdout_source.HoldoutError as e:
            return f"hold-out: {e}", e.reason
        except DataError as e:
            return cap(f"hold-out: {e}", 600), "HoldoutInvalid"
        return None

    async def _store_report(self, body: Mapping[str, Any], spec: ModelRolloutSpec, report: Report,
                            answers: tuple[Any, Mapping[str, Any]], images: Mapping[str, str]) -> None:
        """The HTML report with its plots in the rollout's ConfigMap (stored_report.py); never fails the rollout."""
        about = {"rollout": f"{body['metadata']['namespace']}/{body['metadata']['name']}",
                 **{k: str(v) for k, v in images.items() if v}}
        try:
            data, note = await asyncio.to_thread(render_report, report, answers, spec.holdout.positive_label,
                                                 about)
            await run(self.kube.apply, report_config_map(body, data, note), body["metadata"]["uid"])
            fields = report_status(body, data, note)
        except Exception as e:  # someone else's ConfigMap of that name, RBAC, a drawing bug: said in status
            log.warning("report not stored for %s: %s: %s", body["metadata"]["name"], type(e).__name__, e)
            fields = report_status(body, None, f"not stored: {type(e).__name__}: {e}")
        assert self.writer is not None
        await self.writer.record(body["metadata"], {"report": fields})

    async def _load_drift(self, spec: ModelRolloutSpec, ns: str, loaded: Holdout, config_map: Any,
                          secret: Any) -> None:
        """The drift reference, read as the hold-out is (its bytes are never kept): the features' drift."""
        assert spec.drift is not None
        ref = spec.drift.reference_ref
        data, name = await holdout_source.fetch(ref, ns, self.reach, config_map=config_map, secret=secret)
        parsed = await holdout_source.load_reference(data, f"drift reference {name}", spec, loaded, self.reach,
                                      echo_columns=ref.url is None and ref.s3 is None)
        loaded.drift = drift_between(loaded, parsed, bins=spec.drift.bins, threshold=spec.drift.psi_threshold)
        if spec.holdout.url is not None or spec.holdout.s3 is not None:  # the author may not read its header
            position = {str(c): i for i, c in enumerate(loaded.features.columns)}
            loaded.drift = [replace(f, feature=f"column {position[f.feature]}") for f in loaded.drift]

    def start(self, body: Mapping[str, Any], spec: ModelRolloutSpec) -> None:
        key = f"{body['metadata']['uid']}:{body['metadata'].get('generation', 1)}"
        if key in self.tasks and not self.tasks[key].task.done():
            return
        ev = Evaluation(asyncio.get_running_loop().create_task(self._evaluate(body, spec, key)))
        self.tasks[key] = ev

    async def _evaluate(self, body: Mapping[str, Any], spec: ModelRolloutSpec, key: str) -> None:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        assert self.semaphore is not None
        async with self.semaphore:
            self.metrics.in_flight.inc()
            t0 = time.monotonic()
            try:
                if key not in self.holdouts:
                    err = await self.load_holdout(body, spec)
                    if err:
                        raise DataError(err[0])
                report, images, measured = await self._run_evaluation(body, spec, self.holdouts[key])
                assert self.writer is not None
                await self.writer.record(meta, {
                    "candidate": {"metrics": _finite(report.evidence.candidate),
                                  "intervals": {k: iv.as_dict() for k, iv in report.evidence.intervals.items()},
                                  "deltaIntervals": {k: iv.as_dict()
                                                     for k, iv in report.evidence.delta_intervals.items()}},
                    "baseline": {"metrics": _finite(report.evidence.baseline or {})},
                    "gates": [gate_dict(g) for g in report.gates],
                    "capacity": {
                        "replicasFit": {v: _fig(report, v, "replicas_fit") for v in ("candidate", "baseline")},
                        "perReplicaMemoryMiB": {v: ((report.details.get(v) or {}).get("capacity") or {}).get(
                            "perReplicaMemoryMiB") for v in ("candidate", "baseline")},
                        "memorySource": {v: (report.details.get(v) or {}).get("memorySource")
                                         for v in ("candidate", "baseline")},
                        # with staging.replicas > 1: the pod whose load and memory the figures are
                        "measuredPod": {v: (report.details.get(v) or {}).get("measuredPod")
                                        for v in ("candidate", "baseline")}},
                    "evaluation": {"outcome": str(report.decision.outcome), "reason": report.decision.reason,
                                   "generation": int(meta.get("generation", 1)),
                                   "attempt": str((meta.get("annotations") or {}).get(ANNOTATION_RETRY) or ""),
                                   "candidateImage": images.get("candidate"), "baselineImage": images.get("baseline")},
                    # bounded (STATUS_CELLS); None clears an earlier evaluation's table
                    "sweep": sweep_status(report.evidence.sweep) if report.evidence.sweep else None,
                    "sloSearch": _slo_status(report),
                    "holdout": {k: v for k, v in report.holdout.items() if k in HOLDOUT_STATUS} or None,
                    "groups": groups.status_form(report.candidate_quality, report.baseline_quality, spec.task,
                                                 [g.metric for g in spec.gates]) or None,
                    "dataQuality": data_status(report.data_quality),
                    "drift": report.details.get("drift"),
                })
                self.metrics.figures.observe(report, name, ns)
                await self._store_report(body, spec, report, (self.holdouts[key].labels, measured), images)
                if self.tracker is not None and self.tracker.on:  # after the record: no decision waits for MLflow
                    self.tracker.start(body, spec, report, images, (self.holdouts[key].labels, measured))
            except Exception as e:  # any error, a bug or a server's nonsense included, ends the rollout: no loop
                expected = isinstance(e, ServerError | DataError | NotFound | RuntimeError | OSError)
                why = str(e) if expected else f"{type(e).__name__}: {e}"
                if not isinstance(e, DataError | NotFound):  # a server that died: its pod says why
                    with contextlib.suppress(Exception):
                        problems = await self.pod_problems(body, spec, settle=POD_STATUS_SETTLE)
                        why = f"{why} ({problems.summary()})" if problems.messages else why
                self.tasks[key].error = cap(why, 600)
                self.metrics.eval_errors.labels(ns).inc()
                log.warning("%s/%s: evaluation failed: %s", ns, name, e)
            finally:
                self.metrics.in_flight.dec()
                self.metrics.eval_seconds.observe(time.monotonic() - t0)

    async def _run_evaluation(self, body: Mapping[str, Any], spec: ModelRolloutSpec,
                              holdout: Holdout) -> tuple[Report, dict[str, str], dict[str, Measured]]:
        sns = objects.staging_ns(body, spec)
        headers: tuple[tuple[str, str], ...] = ()
        if spec.serving.auth_secret_ref is not None:
            ref = spec.serving.auth_secret_ref
            token = await run(self.kube.secret_value, body["metadata"]["namespace"], ref.name, ref.key)
            headers = (("Authorization", f"Bearer {token}"),)
        variants, images = [], {}
        for v in ("candidate", "baseline"):
            svc = objects.staging_name(body["metadata"]["name"], v)
            url = self.settings.service_url(sns, svc, spec.serving.port)
            dep = await run(self.kube.get_deployment, sns, svc)
            mem, cpu = pod_requests(((dep or {}).get("spec") or {}).get("template", {}).get("spec", {}))
            images[v] = str(next(iter(((dep or {}).get("spec") or {}).get("template", {}).get("spec", {}).get(
                "containers") or [{}])).get("image", ""))
            selector = tuple((((dep or {}).get("spec") or {}).get("template", {}).get("spec", {})
                              .get("nodeSelector") or {}).items())
            labels = dict((((dep or {}).get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
            pods = await run(self.kube.pods, sns, labels) if labels else []
            # several replicas: the load and the memory readings go to one pod, so per replica is per pod
            pod = measured_pod(pods) if spec.staging.replicas > 1 else None
            if pod is not None:
                url = self.settings.pod_url(sns, svc, pod, spec.serving.port)
            ep = Endpoint(url, spec.serving.model_name, spec.serving.protocol, spec.serving.timeout,
                          int(spec.serving.max_response_size), v, headers,
                          (spec.serving.outputs.labels, spec.serving.outputs.probabilities))
            memory, leak, where = await self._sources(sns, labels, PrometheusSource(url.rstrip("/") + "/metrics"),
                                                      spec.staging.replicas, pod)
            variants.append(Variant(v, ep, memory, mem, cpu, selector, leak_source=leak, memory_source=where,
                                    time_to_ready_s=time_to_ready(pods), measured_pod=pod))
        nodes = await run(self.kube.nodes)
        report, measured = await evaluate_servers(spec, holdout, variants[0], variants[1], nodes,
                                                  lambda m: log.info("%s: %s", body["metadata"]["name"], m))
        return report, images, dict(measured)

    async def _sources(self, ns: str, selector: Mapping[str, str], server: PrometheusSource,
                       replicas: int, pod: MeasuredPod | None) -> tuple[Source, Source, str]:
        """(memory source, leak-probe source, where memory comes from).

        metrics.k8s.io when the cluster serves it: it measures every container of the pod as the
        kubelet (and the OOM killer) does, every worker process included. The leak probe needs samples
        fresher than metrics-server's resolution, so it reads the server's own endpoint when that
        answers. With a measured pod, both read that pod only.
        """
        name, want = (pod.name, 1) if pod is not None else (None, replicas)
        deadline = time.monotonic() + self.settings.metrics_api_wait
        pods = await run(self.kube.pod_usage, ns, selector, name) if selector else None
        while pods is not None and len(pods) < want and time.monotonic() < deadline:
            await asyncio.sleep(1.0)  # a new pod has usage after metrics-server's next scrape
            pods = await run(self.kube.pod_usage, ns, selector, name)
        if pods is None or len(pods) < want:
            if pods is not None:
                log.warning("%s: metrics.k8s.io has usage for %d of %d pods after %gs; using the server's "
                            "/metrics", ns, len(pods), want, self.settings.metrics_api_wait)
            return server, server, "server /metrics"

        async def fetch() -> list[PodUsage]:
            return await run(self.kube.pod_usage, ns, selector, name) or []

        usage = UsageSource(fetch, min_interval=5.0)
        try:
            await server.sample()
            return usage, server, "metrics.k8s.io"
        except (RuntimeError, OSError, aiohttp.ClientError, TimeoutError):
            return usage, usage, "metrics.k8s.io"

    def forget(self, uid: str) -> None:
        for key in [k for k in self.tasks if k.startswith(uid)]:
            self.tasks.pop(key).task.cancel()
        for key in [k for k in self.holdouts if k.startswith(uid)]:
            self.holdouts.pop(key)


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and v == v and abs(v) != float("inf")}


def _slo_status(report: Any) -> dict[str, Any] | None:
    """Where each variant's throughput at the SLO was found (None clears an earlier evaluation's)."""
    found = {v: status_form(d["sloSearch"]) for v in ("candidate", "baseline")
             if (d := report.details.get(v)) and d.get("sloSearch")}
    return found or None


def _fig(report: Any, variant: str, name: str) -> float | None:
    figs = report.evidence.candidate if variant == "candidate" else (report.evidence.baseline or {})
    v = figs.get(name)
    return None if v is None else float(v)
