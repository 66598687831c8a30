"""MLflow for the operator: each evaluation a run (and, with tracking.mlflow.registeredModel, a model
version marked `challenger`), and the aliases moved when the rollout ends.

Everything here happens beside the decision, never before it: a server that is down or slow is
recorded in status.tracking and counted (modelrollout_tracking_failures_total), and the rollout
goes on exactly as it would without MLflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelrollout.controller.settings import Settings
from modelrollout.core.decide import ANNOTATION_RETRY
from modelrollout.core.report import Report
from modelrollout.core.spec import ModelRolloutSpec
from modelrollout.core.tracking import run_params
from modelrollout.kube.api import NotFound
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.status import StatusWriter
from modelrollout.tracking import CHALLENGER, CHAMPION, TrackingFailed, register, settle, track_report

log = logging.getLogger("modelrollout")
TRACKING_TIMEOUT = 120.0  # seconds for one run's metrics and artifacts; the client's retries are bounded too


def _plots(report: Report, answers: tuple[Any, Mapping[str, Any]] | None, positive: Any) -> dict[str, str]:
    """The report's plots; none (said in the log) if drawing fails: the run is worth more than its pictures."""
    from modelrollout.cli.report_files import binary_scores, report_plots

    try:
        if answers is None:
            return report_plots(report)
        return report_plots(report, *binary_scores(answers[0], answers[1], positive))
    except Exception as e:
        log.warning("report plots not drawn: %s: %s", type(e).__name__, e)
        return {}


@dataclass
class Tracker:
    settings: Settings
    metrics: OperatorMetrics
    writer: StatusWriter
    runs: dict[str, asyncio.Task[dict[str, str]]] = field(default_factory=dict)  # by rollout uid: the last run
    chores: set[asyncio.Task[None]] = field(default_factory=set)  # alias moves under way

    @property
    def on(self) -> bool:
        return bool(self.settings.mlflow_tracking_uri)

    def start(self, body: Mapping[str, Any], spec: ModelRolloutSpec, report: Report, images: Mapping[str, str],
              answers: tuple[Any, Mapping[str, Any]] | None = None) -> None:
        """Log the evaluation in the background (the record is already in status); `answers`: the hold-out's
        labels and each variant's measurements, for the report's ROC and PR curves."""
        self.runs[str(body["metadata"]["uid"])] = asyncio.get_running_loop().create_task(
            self.run(body, spec, report, images, answers))

    async def run(self, body: Mapping[str, Any], spec: ModelRolloutSpec, report: Report,
                  images: Mapping[str, str], answers: tuple[Any, Mapping[str, Any]] | None = None) -> dict[str, str]:
        """Record the evaluation as an MLflow run, then its id (or why not) in status.tracking."""
        meta = body["metadata"]
        ns, name, gen = str(meta["namespace"]), str(meta["name"]), str(meta.get("generation", 1))
        experiment = f"modelrollout/{ns}/{spec.tracking.mlflow.experiment or spec.target_ref.name}"
        context = {"rollout": name, "namespace": ns, "target": spec.target_ref.name, "generation": gen,
                   "attempt": str((meta.get("annotations") or {}).get(ANNOTATION_RETRY, "")),
                   **{f"{v}.image": image for v, image in images.items()}}
        uri, model = self.settings.mlflow_tracking_uri, spec.tracking.mlflow.registered_model
        assert uri is not None
        record: dict[str, str] = {"experiment": experiment}
        try:
            plots = await asyncio.to_thread(_plots, report, answers, spec.holdout.positive_label)
            t = await asyncio.wait_for(asyncio.to_thread(
                track_report, uri, experiment, report, run_name=f"{name} gen {gen}",
                params=run_params(report, body.get("spec"), context),
                tags={"modelrollout.namespace": ns, "modelrollout.rollout": name}, plots=plots,
                about={**{f"{v} image": i for v, i in images.items()}, "rollout": f"{ns}/{name}",
                       "generation": gen}), TRACKING_TIMEOUT)
            record.update(t.as_status())
        except (TrackingFailed, TimeoutError) as e:
            record.update({"state": "Failed", "message": self._failed(ns, name, "tracking failed", e)})
        if model and record.get("runId"):  # the candidate as evaluated: a version linked to this run
            record["registeredModel"] = model
            image = images.get("candidate") or spec.candidate.image or "unknown"
            try:
                record["modelVersion"] = await asyncio.wait_for(asyncio.to_thread(
                    register, uri, model, ns, t.run_id, f"docker://{image}",
                    {"modelrollout.rollout": name, "modelrollout.generation": gen, "modelrollout.image": image,
                     "modelrollout.decision": str(report.decision.outcome)}), TRACKING_TIMEOUT)
                record["alias"] = CHALLENGER
            except (TrackingFailed, TimeoutError) as e:
                record["registryMessage"] = self._failed(ns, name, "no model version registered", e)
        with contextlib.suppress(NotFound):  # deleted meanwhile
            await self.writer.record(meta, {"tracking": record})
        return record

    def ended(self, body: Mapping[str, Any], spec: ModelRolloutSpec | None, status: Mapping[str, Any],
              result: str) -> None:
        """The rollout ended (Promoted, RolledBack, Failed, or Undone): move its model version's aliases."""
        if not self.on or spec is None or not spec.tracking.mlflow.registered_model:
            return
        task = asyncio.get_running_loop().create_task(self._settle(body, spec, status, result))
        self.chores.add(task)
        task.add_done_callback(self.chores.discard)

    async def _settle(self, body: Mapping[str, Any], spec: ModelRolloutSpec, status: Mapping[str, Any],
                      result: str) -> None:
        meta = body["metadata"]
        ns, name = str(meta["namespace"]), str(meta["name"])
        logging_run = self.runs.get(str(meta["uid"]))
        record = dict(status.get("tracking") or {})
        if logging_run is not None and result != "Undone":  # this attempt's run, once logged
            with contextlib.suppress(Exception):
                record = await asyncio.wait_for(asyncio.shield(logging_run), TRACKING_TIMEOUT)
        version, model = record.get("modelVersion"), record.get("registeredModel")
        if not version or not model:
            return  # never registered (tracking failed, or the evaluation never ran): nothing to move
        uri = self.settings.mlflow_tracking_uri
        assert uri is not None
        try:
            before = await asyncio.wait_for(asyncio.to_thread(
                settle, uri, model, ns, version, result, record.get("previousChampion")), TRACKING_TIMEOUT)
            # which alias names this version now: the champion, or none (the challenger leaves a rejected one)
            update = ({"alias": CHAMPION, **({"previousChampion": before} if before else {})}
                      if result == "Promoted" else {"alias": ""})
        except (TrackingFailed, TimeoutError) as e:
            update = {"registryMessage": self._failed(ns, name, f"aliases not moved ({result})", e)}
        with contextlib.suppress(NotFound):  # the whole record: a merge patch of a nested field is not relied on
            await self.writer.record(meta, {"tracking": {**record, **update}})

    def _failed(self, ns: str, name: str, what: str, e: Exception) -> str:
        why = str(e) or f"MLflow answered nothing within {TRACKING_TIMEOUT:g}s"
        self.metrics.tracking_failures.labels(ns).inc()
        log.warning("%s/%s: %s, the decision stands: %s", ns, name, what, why)
        return why if what == "tracking failed" else f"{what}: {why}"

    def forget(self, uid: str) -> None:
        self.runs.pop(uid, None)
