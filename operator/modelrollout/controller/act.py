"""Acting on a decided step: the only place a reconcile writes to the cluster (through `Kube`) and
hands the phase change to the status writer. Each action is idempotent: a step applied twice, or
cut off half-way by a kill, leaves the same objects as applied once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelrollout import canary_gates
from modelrollout.controller.evaluations import Evaluations
from modelrollout.controller.settings import Settings
from modelrollout.controller.traffic import plan, put_back, record_traffic, routing, set_weight
from modelrollout.core import canary as analysis
from modelrollout.core import history
from modelrollout.core.decide import (
    ANNOTATION_ABORT,
    ANNOTATION_APPROVE,
    ANNOTATION_PROMOTE,
    ANNOTATION_RETRY,
    ANNOTATION_UNDO,
    TERMINAL,
    Observed,
    Step,
    canary_split,
    candidate_template,
    decide,
    measurements,
)
from modelrollout.core.spec import ModelRolloutSpec
from modelrollout.core.text import cap
from modelrollout.kube import objects
from modelrollout.kube.api import ApiException, Kube, run
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.status import StatusWriter, iso, now

log = logging.getLogger("modelrollout")


@dataclass
class Actions:
    kube: Kube
    settings: Settings
    metrics: OperatorMetrics
    ev: Evaluations
    status: StatusWriter

    async def apply(self, body: Mapping[str, Any], spec: ModelRolloutSpec | None, status: dict[str, Any],
                    step: Step, target: Mapping[str, Any] | None) -> None:
        meta = body["metadata"]
        ns, name, gen = meta["namespace"], meta["name"], int(meta.get("generation", 1))
        patch: dict[str, Any] = {}
        a = step.action
        if a == "none":
            self.metrics.set_phase(name, ns, step.phase)
            if (runs := history.with_run(status.get("history"), status)) is not None:  # tracking came late
                await self.status.record(meta, {"history": runs})
            await self.status.sync_tracked(meta, status, gen)
            return
        if a == "restart":
            # an approval or abort was for the attempt that ended, not for the next one
            await run(self.kube.annotate_rollout, ns, name,
                      {ANNOTATION_APPROVE: None, ANNOTATION_ABORT: None, ANNOTATION_UNDO: None,
                       ANNOTATION_PROMOTE: None})
            if status.get("phase") not in TERMINAL:  # a canary step may have scaled production down
                await self.restore(body, spec, status, target)
            await self.cleanup(body, spec, status)
            self.ev.forget(meta["uid"])
            if self.ev.tracker is not None:  # the last attempt's run is not this one's
                self.ev.tracker.forget(meta["uid"])
            patch.update({"evaluation": None, "canary": None, "staging": None, "decision": None, "gates": [],
                          "candidate": None, "baseline": None, "capacity": None, "previousTemplate": None,
                          "promotedTemplateHash": None, "previousReplicas": None, "traffic": None, "sweep": None,
                          "sloSearch": None, "holdout": None, "tracking": None,
                          "groups": None, "dataQuality": None, "drift": None, "report": None,
                          "retried": meta.get("annotations", {}).get(ANNOTATION_RETRY)})
        elif a == "stage" and spec is not None and target is not None:
            sns = objects.staging_ns(body, spec)
            template = target["spec"]["template"]
            cand = candidate_template(template, spec.candidate.image, [e.model_dump() for e in spec.candidate.env],
                                      spec.candidate.args)
            for variant, t in (("candidate", cand), ("baseline", template)):
                for obj in objects.staging_objects(body, variant, t, sns, spec.staging.replicas, spec.serving.port):
                    await run(self.kube.apply, obj, meta["uid"])
            if not status.get("previousTemplate"):
                patch["previousTemplate"] = template
            if not (status.get("staging") or {}).get("startedAt"):
                patch["staging"] = {"namespace": sns, "startedAt": iso(now()),
                                    "candidate": objects.staging_name(name, "candidate"),
                                    "baseline": objects.staging_name(name, "baseline")}
        elif a == "evaluate" and spec is not None:
            self.ev.start(body, spec)
            ev = status.get("evaluation") or {}
            if not ev.get("startedAt") or ev.get("generation") != gen:  # the deadline counts from here
                patch["evaluation"] = {"startedAt": iso(now()), "generation": gen}
        elif a == "canary" and spec is not None and target is not None and step.canary_step is not None:
            i = step.canary_step
            w = spec.promotion.canary.steps[i].weight
            prev = status.get("previousTemplate") or target["spec"]["template"]
            cand = candidate_template(prev, spec.candidate.image, [e.model_dump() for e in spec.candidate.env],
                                      spec.candidate.args)
            total = int(status.get("previousReplicas") or target["spec"].get("replicas", 1))
            replicas = canary_split(total, w)[0]
            await run(self.kube.apply, objects.canary_deployment(body, target, cand, replicas,
                                                                 routed=routing(spec) is not None), meta["uid"])
            if routing(spec) is not None:  # the Service the route will send the canary's share to
                p = await plan(self.kube, ns, spec)
                if isinstance(p, str):
                    return await self._route_lost(body, spec, status, p, target)
                await run(self.kube.apply, objects.canary_service(body, spec.target_ref.name, ns, p.ports(
                    spec.serving.port), spec.serving.port), meta["uid"])
            if not status.get("previousReplicas"):  # what production goes back to, whatever happens next
                patch["previousReplicas"] = total
            old = status.get("canary") or {}
            if old.get("step") != i or not old.get("startedAt"):
                t = iso(now())
                records = [*closed(old.get("steps") or [], "Passed"),
                           {"step": i + 1, "weight": w, "startedAt": t, "outcome": "Running", "measurements": []}]
                patch["canary"] = {"step": i, "weight": w, "replicas": replicas, "startedAt": t, "steps": records}
        elif a == "scale" and spec is not None and routing(spec) is not None and step.canary_step is not None:
            p = await plan(self.kube, ns, spec)
            if isinstance(p, str):
                return await self._route_lost(body, spec, status, p, target)
            w = spec.promotion.canary.steps[step.canary_step].weight
            kept = status.get("traffic") or record_traffic(p, 0)
            if not status.get("traffic"):  # production's weights are in status before the route changes
                await self.status.record(meta, {"traffic": kept})
            await set_weight(self.kube, ns, p, w)
            patch["traffic"] = {**kept, "weight": w}
        elif a == "scale" and spec is not None and target is not None and step.canary_step is not None:
            production = canary_split(int(status["previousReplicas"]),
                                      spec.promotion.canary.steps[step.canary_step].weight)[1]
            await run(self.kube.replace_template, ns, spec.target_ref.name, None, target["metadata"]["uid"],
                      production)
        elif a == "measure" and spec is not None and step.canary_step is not None:
            await self.measure(body, spec, status, step.canary_step, target)
            return
        elif a == "promote" and spec is not None and target is not None:
            prev = status.get("previousTemplate") or target["spec"]["template"]
            cand = candidate_template(prev, spec.candidate.image, [e.model_dump() for e in spec.candidate.env],
                                      spec.candidate.args)
            before = status.get("previousReplicas")
            back = int(before) if before and int(target["spec"].get("replicas", 1)) != int(before) else None
            if objects.template_hash(target["spec"]["template"]) != objects.template_hash(cand) or back:
                # production's template changes here only (and its replicas go back to what they were)
                await run(self.kube.replace_template, ns, spec.target_ref.name, cand, target["metadata"]["uid"],
                          back)
            patch["promotedTemplateHash"] = objects.template_hash(cand)
            if status.get("traffic"):  # all traffic to production, which now runs the candidate
                await put_back(self.kube, ns, status["traffic"])
                patch["traffic"] = {**status["traffic"], "weight": 0}
            if (status.get("canary") or {}).get("steps"):
                patch["canary"] = {**status["canary"], "steps": closed(status["canary"]["steps"], "Passed")}
            await self.cleanup(body, spec, status)
            patch["decision"] = {"result": "Promoted", "reason": step.message, "at": iso(now())}
        elif a == "rollback":
            self.ev.forget(meta["uid"])  # an evaluation past its deadline stops here
            await self.restore(body, spec, status, target)
            await self.cleanup(body, spec, status)
            if status.get("traffic"):
                patch["traffic"] = {**status["traffic"], "weight": 0}
            patch["decision"] = {"result": "RolledBack", "reason": step.message, "at": iso(now())}
            if (status.get("canary") or {}).get("steps"):  # the step that stopped says why
                patch["canary"] = {**status["canary"], "steps": closed(status["canary"]["steps"], step.reason)}
        elif a == "undo" and spec is not None and target is not None:
            await run(self.kube.replace_template, ns, spec.target_ref.name, status["previousTemplate"],
                      target["metadata"]["uid"])
            patch["decision"] = {"result": "RolledBack", "reason": step.message, "at": iso(now())}
        elif a == "fail":
            self.ev.forget(meta["uid"])
            await self.restore(body, spec, status, target)
            await self.cleanup(body, spec, status)
            patch["decision"] = {"result": "Failed", "reason": step.message, "at": iso(now())}
        await self.status.transition(body, status, patch, step, gen)
        if a in ("promote", "rollback", "fail", "undo") and self.ev.tracker is not None:  # the registry's aliases
            self.ev.tracker.ended(body, spec, status, "Undone" if a == "undo" else step.phase)

    async def restore(self, body: Mapping[str, Any], spec: ModelRolloutSpec | None, status: Mapping[str, Any],
                       target: Mapping[str, Any] | None) -> None:
        """Put back the exact previous template if this rollout ever wrote the target, and the replicas
        production had before a canary step scaled it down."""
        if status.get("traffic"):  # production's route weights first: the canary Service goes next
            await put_back(self.kube, body["metadata"]["namespace"], status["traffic"])
        prev, total = status.get("previousTemplate"), status.get("previousReplicas")
        written = status.get("promotedTemplateHash")
        name = spec.target_ref.name if spec else ((body.get("spec") or {}).get("targetRef") or {}).get("name")
        if not isinstance(name, str) or not (total or (prev and written)):
            return
        target = target or await run(self.kube.get_deployment, body["metadata"]["namespace"], name)
        if target is None:
            return
        current = objects.template_hash(target["spec"]["template"])
        template = prev if prev and written and current == written and current != objects.template_hash(prev) \
            else None
        replicas = int(total) if total and int(target["spec"].get("replicas", 1)) != int(total) else None
        if template is not None or replicas is not None:
            await run(self.kube.replace_template, body["metadata"]["namespace"], name, template,
                      target["metadata"]["uid"], replicas)

    async def cleanup(self, body: Mapping[str, Any], spec: ModelRolloutSpec | None,
                       status: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        staging = status.get("staging") or {}
        sns = staging.get("namespace") or (objects.staging_ns(body, spec) if spec else meta["namespace"])
        doomed = [(kind, sns, objects.staging_name(meta["name"], v)) for v in ("candidate", "baseline")
                  for kind in ("Deployment", "Service")]
        target = spec.target_ref.name if spec else (body.get("spec") or {}).get("targetRef", {}).get("name")
        if isinstance(target, str) and target:
            doomed += [(kind, meta["namespace"], objects.canary_name(target)) for kind in ("Deployment", "Service")]
        for kind, ns, obj in doomed:  # only what this rollout created: anything else of that name is left alone
            if not await run(self.kube.delete, kind, ns, obj, meta["uid"]):
                log.warning("%s/%s: left %s %s/%s alone: not created by this rollout", meta["namespace"],
                            meta["name"], kind, ns, obj)

    async def _route_lost(self, body: Mapping[str, Any], spec: ModelRolloutSpec, status: dict[str, Any],
                          why: str, target: Mapping[str, Any] | None) -> None:
        """The route can no longer carry the canary (deleted, or changed so it cannot be split): roll back."""
        await self.apply(body, spec, status, Step("rollback", "RolledBack", "TrafficRouteInvalid",
                                                  f"{why}; production restored"), target)

    async def measure(self, body: Mapping[str, Any], spec: ModelRolloutSpec, status: dict[str, Any], i: int,
                       target: Mapping[str, Any] | None) -> None:
        """Take the due live-gate measurements of canary step `i`, record them, then decide again."""
        meta = body["metadata"]
        canary = dict(status.get("canary") or {})
        since = (now() - datetime.fromisoformat(str(canary["startedAt"]).replace("Z", "+00:00"))).total_seconds()
        taken = measurements(status, i)
        gates, pause = spec.promotion.gates, spec.promotion.canary.steps[i].pause
        try:
            new = await canary_gates.measure(self.settings.prometheus_url, gates,
                                             analysis.due(gates, pause, since, taken), meta["namespace"], since)
        except Exception as e:  # never leave a canary serving because a measurement raised
            new = [analysis.judge(d, gates[d], {"canary": analysis.Sample(
                error=f"the measurement raised {type(e).__name__}: {cap(str(e), 100)}")}, now(), since)
                for d in analysis.due(gates, pause, since, taken)]
        taken = [*taken, *new]
        result, _ = analysis.outcome(gates, taken)
        records = [r for r in canary.get("steps") or [] if r.get("step") != i + 1]
        record = next((r for r in canary.get("steps") or [] if r.get("step") == i + 1), {"step": i + 1})
        canary["steps"] = [*records, {**record, "outcome": str(result), "measurements": taken}]
        await self.status.record(meta, {"canary": canary})
        self.metrics.canary(meta["name"], meta["namespace"], i + 1, taken)
        status = {**status, "canary": canary}
        obs = Observed(generation=int(meta.get("generation", 1)), now=now(),
                       annotations=dict(meta.get("annotations") or {}), canary_available=True)
        await self.apply(body, spec, status, decide(spec, status, obs), target)


def closed(records: list[dict[str, Any]], outcome: str) -> list[dict[str, Any]]:
    """The canary step records with the last one, if still Running, closed with `outcome`."""
    if records and records[-1].get("outcome") == "Running":
        return [*records[:-1], {**records[-1], "outcome": outcome}]
    return list(records)


def api_reason(e: ApiException) -> str:
    """The API server's own message, capped: it names the field it refused."""
    try:
        return cap(str(json.loads(e.body or "{}").get("message") or e.reason), 400)
    except ValueError:
        return cap(str(e.reason), 400)
