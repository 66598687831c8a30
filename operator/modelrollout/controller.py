"""One reconcile: observe the world, ask the pure core for the next step, apply it idempotently.

All state lives in the rollout's status, so the operator can be killed at any moment: the
next reconcile observes again and continues. Evaluations run as background tasks, bounded
by a semaphore, and never block the event loop (probes run in threads and processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelrollout import canary_gates
from modelrollout.core import canary as analysis
from modelrollout.core.decide import (
    ANNOTATION_ABORT,
    ANNOTATION_APPROVE,
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
from modelrollout.core.queue import StagingQueue
from modelrollout.core.spec import ModelRolloutSpec, SpecError, parse_spec
from modelrollout.core.text import cap
from modelrollout.evaluations import Evaluations
from modelrollout.kube import objects
from modelrollout.kube.api import ApiException, Kube, NotOwned, run
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.settings import Settings
from modelrollout.status import StatusWriter, iso, now

log = logging.getLogger("modelrollout")
ACTIVE = frozenset({"Staging", "Evaluating", "AwaitingApproval", "Canary"})
# A namespace other than the rollout's own takes staging objects only when its owner lists the rollout's
# namespace here (comma-separated): the target's pod template, ServiceAccount and Secrets resolve there.
ANNOTATION_STAGING_FOR = "modelrollout.dev/staging-for"




@dataclass
class Controller:
    kube: Kube
    settings: Settings
    metrics: OperatorMetrics
    evaluations: Evaluations | None = None
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    queue: StagingQueue | None = None
    writer: StatusWriter | None = None

    def __post_init__(self) -> None:
        self.evaluations = self.evaluations or Evaluations(self.kube, self.settings, self.metrics)
        self.queue = self.queue or StagingQueue(self.settings.max_concurrent_stagings)
        self.writer = self.writer or StatusWriter(self.kube, self.metrics)
        self.evaluations.writer = self.writer
        self.kube.on_call = self.metrics.api_requests.inc

    @property
    def status(self) -> StatusWriter:
        assert self.writer is not None
        return self.writer

    @property
    def ev(self) -> Evaluations:
        assert self.evaluations is not None
        return self.evaluations

    # --- observe -----------------------------------------------------------------------
    def evaluating(self, body: Mapping[str, Any]) -> bool:
        """True while this process evaluates the rollout's current generation and nothing asks it to stop.

        Then a timer tick has nothing to read from the API: only the evaluation's end moves the rollout
        on, and spec changes and aborts arrive as updates, which always reconcile.
        """
        meta = body["metadata"]
        state = self.ev.state(meta["uid"], int(meta.get("generation", 1)))
        aborted = (meta.get("annotations") or {}).get(ANNOTATION_ABORT) == "true"
        return state is not None and state[0] == "running" and not aborted

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        async with self.locks.setdefault(meta["uid"], asyncio.Lock()):
            # the watch stream can lag behind our own status writes: always act on a fresh read
            fresh = await run(self.kube.get_rollout, meta["namespace"], meta["name"])
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return
            try:
                await self._reconcile(fresh)
            except Exception:
                self.metrics.reconcile_errors.inc()
                raise

    async def _reconcile(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        ns, gen = meta["namespace"], int(meta.get("generation", 1))
        status = dict(body.get("status") or {})
        phase = str(status.get("phase") or "Pending")
        spec: ModelRolloutSpec | None = None
        obs: dict[str, Any] = {"generation": gen, "now": now(), "annotations": dict(meta.get("annotations") or {})}
        try:
            spec = parse_spec(body.get("spec"))
            if spec.holdout.file is not None:
                raise SpecError([])  # handled below with its own message
        except SpecError as e:
            spec = None
            obs["input_error"] = str(e) or "spec.holdout.file is for the CLI; use configMapRef, url or pvc"
            obs["input_reason"] = "InvalidSpec"
        target = None
        if spec is not None and phase not in TERMINAL:
            target = await run(self.kube.get_deployment, ns, spec.target_ref.name)
            obs["target_exists"] = target is not None
            if phase in ("Pending", "Waiting"):
                obs["blocked_by"] = await self._blocker(body, spec)
                err = await self._reach(body, spec)
                if err is None and target is not None and not obs["blocked_by"]:
                    err = await self.ev.load_holdout(body, spec)
                if err:
                    obs["input_error"], obs["input_reason"] = err
            elif phase == "Staging":
                obs["staging_available"] = await self._staging_available(body, spec)
                if obs["staging_available"] is False:
                    obs["staging_problems"] = await self.ev.pod_problems(body, spec)
            elif phase == "Canary":
                obs["canary_available"] = await run(self.kube.deployment_available, ns,
                                                    objects.canary_name(spec.target_ref.name))
                obs["production_replicas"] = None if target is None else int(target["spec"].get("replicas", 1))
            state = self.ev.state(meta["uid"], gen)
            if state is not None:
                obs["evaluation"], obs["evaluation_error"] = state
        if phase == "Promoted" and obs["annotations"].get(ANNOTATION_UNDO) == "true":
            target, obs["undo_blocked"] = await self._undoable(ns, spec, status)
        if phase in ("Pending", "Waiting") and spec is not None and not obs.get("blocked_by"):
            assert self.queue is not None
            if self.queue.needs_seed(ns):  # after a restart: who holds a slot is in status
                self.queue.seed(ns, await run(self.kube.list_rollouts, ns))
            obs["queue_full"] = self.queue.why_wait(meta)
        step = decide(spec, status, Observed(**obs))
        assert self.queue is not None  # recorded before any await, so other reconciles see the slot taken
        self.queue.note(meta, step.phase, blocked=step.reason == "TargetBusy")
        try:
            await self.apply(body, spec, status, step, target)
        except NotOwned as e:
            await self.apply(body, spec, status, Step("fail", "Failed", "NotOwned", str(e)), target)
        except ApiException as e:
            if e.status is None or e.status >= 500 or e.status in (408, 409, 429):
                raise  # transient: kopf retries the handler
            # the API server refused what we sent (an invalid object): retrying cannot help
            refusal = f"the API server refused a change for this rollout (HTTP {e.status}: {_api_reason(e)})"
            await self.apply(body, spec, status, Step("fail", "Failed", "Refused", refusal), target)

    async def _undoable(self, ns: str, spec: ModelRolloutSpec | None,
                        status: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """(the target, why its previous template cannot come back): only what this rollout wrote is undone."""
        if spec is None:
            return None, "the spec is invalid"
        target = await run(self.kube.get_deployment, ns, spec.target_ref.name)
        if target is None:
            return None, f"target Deployment {spec.target_ref.name!r} no longer exists"
        if not status.get("previousTemplate") or not status.get("promotedTemplateHash"):
            return target, "status has no previous template to restore"
        if objects.template_hash(target["spec"]["template"]) != status["promotedTemplateHash"]:
            return target, ("the target's template changed after this rollout promoted it; restoring would "
                            "overwrite that change")
        return target, None

    async def _reach(self, body: Mapping[str, Any], spec: ModelRolloutSpec) -> tuple[str, str] | None:
        """(error, reason) if the rollout names what it may not use: checked before anything is created."""
        meta = body["metadata"]
        problem = objects.name_problem(str(meta["name"]))
        if problem:
            return problem, "InvalidName"
        ns, sns = str(meta["namespace"]), objects.staging_ns(body, spec)
        if sns == ns:
            return None
        annotations = await run(self.kube.namespace_annotations, sns)
        allowed = {x.strip() for x in (annotations or {}).get(ANNOTATION_STAGING_FOR, "").split(",")}
        if annotations is None or ns not in allowed:
            return (f"spec.staging.namespace: namespace {sns!r} does not exist or has not opted in to staging for "
                    f"{ns!r} (its owner sets the annotation {ANNOTATION_STAGING_FOR}: {ns}); nothing was created",
                    "StagingNamespaceNotAllowed")
        return None

    async def _blocker(self, body: Mapping[str, Any], spec: ModelRolloutSpec) -> str | None:
        me = body["metadata"]
        for r in await run(self.kube.list_rollouts, me["namespace"]):
            m = r["metadata"]
            if m["uid"] == me["uid"] or (r.get("spec") or {}).get("targetRef", {}).get("name") != spec.target_ref.name:
                continue
            ph = (r.get("status") or {}).get("phase") or "Pending"
            if ph in TERMINAL:
                continue
            earlier = (m["creationTimestamp"], m["name"]) < (me["creationTimestamp"], me["name"])
            if ph in ACTIVE or earlier:
                return str(m["name"])
        return None

    async def _staging_available(self, body: Mapping[str, Any], spec: ModelRolloutSpec) -> bool | None:
        ns = objects.staging_ns(body, spec)
        states = [await run(self.kube.deployment_available, ns, objects.staging_name(body["metadata"]["name"], v))
                  for v in ("candidate", "baseline")]
        if any(s is None for s in states):
            return None
        return all(states)

    # --- apply -------------------------------------------------------------------------
    async def apply(self, body: Mapping[str, Any], spec: ModelRolloutSpec | None, status: dict[str, Any],
                    step: Step, target: Mapping[str, Any] | None) -> None:
        meta = body["metadata"]
        ns, name, gen = meta["namespace"], meta["name"], int(meta.get("generation", 1))
        patch: dict[str, Any] = {}
        a = step.action
        if a == "none":
            self.metrics.set_phase(name, ns, step.phase)
            return
        if a == "restart":
            # an approval or abort was for the attempt that ended, not for the next one
            await run(self.kube.annotate_rollout, ns, name,
                      {ANNOTATION_APPROVE: None, ANNOTATION_ABORT: None, ANNOTATION_UNDO: None})
            if status.get("phase") not in TERMINAL:  # a canary step may have scaled production down
                await self._restore(body, spec, status, target)
            await self._cleanup(body, spec, status)
            self.ev.forget(meta["uid"])
            patch.update({"evaluation": None, "canary": None, "staging": None, "decision": None, "gates": [],
                          "candidate": None, "baseline": None, "capacity": None, "previousTemplate": None,
                          "promotedTemplateHash": None, "previousReplicas": None,
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
            await run(self.kube.apply, objects.canary_deployment(body, target, cand, replicas), meta["uid"])
            if not status.get("previousReplicas"):  # what production goes back to, whatever happens next
                patch["previousReplicas"] = total
            old = status.get("canary") or {}
            if old.get("step") != i or not old.get("startedAt"):
                t = iso(now())
                records = [*_closed(old.get("steps") or [], "Passed"),
                           {"step": i + 1, "weight": w, "startedAt": t, "outcome": "Running", "measurements": []}]
                patch["canary"] = {"step": i, "weight": w, "replicas": replicas, "startedAt": t, "steps": records}
        elif a == "scale" and spec is not None and target is not None and step.canary_step is not None:
            production = canary_split(int(status["previousReplicas"]),
                                      spec.promotion.canary.steps[step.canary_step].weight)[1]
            await run(self.kube.replace_template, ns, spec.target_ref.name, None, target["metadata"]["uid"],
                      production)
        elif a == "measure" and spec is not None and step.canary_step is not None:
            await self._measure(body, spec, status, step.canary_step, target)
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
            if (status.get("canary") or {}).get("steps"):
                patch["canary"] = {**status["canary"], "steps": _closed(status["canary"]["steps"], "Passed")}
            await self._cleanup(body, spec, status)
            patch["decision"] = {"result": "Promoted", "reason": step.message, "at": iso(now())}
        elif a == "rollback":
            self.ev.forget(meta["uid"])  # an evaluation past its deadline stops here
            await self._restore(body, spec, status, target)
            await self._cleanup(body, spec, status)
            patch["decision"] = {"result": "RolledBack", "reason": step.message, "at": iso(now())}
            if (status.get("canary") or {}).get("steps"):  # the step that stopped says why
                patch["canary"] = {**status["canary"], "steps": _closed(status["canary"]["steps"], step.reason)}
        elif a == "undo" and spec is not None and target is not None:
            await run(self.kube.replace_template, ns, spec.target_ref.name, status["previousTemplate"],
                      target["metadata"]["uid"])
            patch["decision"] = {"result": "RolledBack", "reason": step.message, "at": iso(now())}
        elif a == "fail":
            self.ev.forget(meta["uid"])
            await self._restore(body, spec, status, target)
            await self._cleanup(body, spec, status)
            patch["decision"] = {"result": "Failed", "reason": step.message, "at": iso(now())}
        await self.status.transition(body, status, patch, step, gen)

    async def _restore(self, body: Mapping[str, Any], spec: ModelRolloutSpec | None, status: Mapping[str, Any],
                       target: Mapping[str, Any] | None) -> None:
        """Put back the exact previous template if this rollout ever wrote the target, and the replicas
        production had before a canary step scaled it down."""
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

    async def _cleanup(self, body: Mapping[str, Any], spec: ModelRolloutSpec | None,
                       status: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        staging = status.get("staging") or {}
        sns = staging.get("namespace") or (objects.staging_ns(body, spec) if spec else meta["namespace"])
        doomed = [(kind, sns, objects.staging_name(meta["name"], v)) for v in ("candidate", "baseline")
                  for kind in ("Deployment", "Service")]
        target = spec.target_ref.name if spec else (body.get("spec") or {}).get("targetRef", {}).get("name")
        if isinstance(target, str) and target:
            doomed.append(("Deployment", meta["namespace"], objects.canary_name(target)))
        for kind, ns, obj in doomed:  # only what this rollout created: anything else of that name is left alone
            if not await run(self.kube.delete, kind, ns, obj, meta["uid"]):
                log.warning("%s/%s: left %s %s/%s alone: not created by this rollout", meta["namespace"],
                            meta["name"], kind, ns, obj)

    async def delete(self, body: Mapping[str, Any]) -> None:
        """On deletion: staging and canary go; production is left exactly as it is."""
        spec = None
        with contextlib.suppress(SpecError):
            spec = parse_spec(body.get("spec"))
        await self._cleanup(body, spec, dict(body.get("status") or {}))
        self.ev.forget(body["metadata"]["uid"])
        assert self.queue is not None
        self.queue.drop(body["metadata"]["uid"])
        self.metrics.forget(body["metadata"]["name"], body["metadata"]["namespace"])

    async def _measure(self, body: Mapping[str, Any], spec: ModelRolloutSpec, status: dict[str, Any], i: int,
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

    # --- evaluation and canary checks ------------------------------------------------------
def _closed(records: list[dict[str, Any]], outcome: str) -> list[dict[str, Any]]:
    """The canary step records with the last one, if still Running, closed with `outcome`."""
    if records and records[-1].get("outcome") == "Running":
        return [*records[:-1], {**records[-1], "outcome": outcome}]
    return list(records)


def _api_reason(e: ApiException) -> str:
    """The API server's own message, capped: it names the field it refused."""
    try:
        return cap(str(json.loads(e.body or "{}").get("message") or e.reason), 400)
    except ValueError:
        return cap(str(e.reason), 400)
