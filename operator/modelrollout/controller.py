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
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes.client.exceptions import ApiException

from modelrollout import canary_gates, holdout_source
from modelrollout.core import canary as analysis
from modelrollout.core.decide import (
    ANNOTATION_ABORT,
    ANNOTATION_APPROVE,
    ANNOTATION_RETRY,
    TERMINAL,
    Observed,
    Step,
    canary_replicas,
    candidate_template,
    decide,
    measurements,
)
from modelrollout.core.pods import PodProblems, pod_problems
from modelrollout.core.quality import DataError
from modelrollout.core.report import gate_dict
from modelrollout.core.spec import ModelRolloutSpec, SpecError, parse_spec
from modelrollout.core.text import cap
from modelrollout.evaluation import Variant, evaluate_servers
from modelrollout.holdout import Holdout
from modelrollout.kube import objects
from modelrollout.kube.api import Kube, NotFound, NotOwned, pod_requests, run
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.probes.resources import PodUsage, PrometheusSource, Source, UsageSource
from modelrollout.serving.client import Endpoint, ServerError
from modelrollout.settings import Settings

log = logging.getLogger("modelrollout")
ACTIVE = frozenset({"Staging", "Evaluating", "AwaitingApproval", "Canary"})
# A namespace other than the rollout's own takes staging objects only when its owner lists the rollout's
# namespace here (comma-separated): the target's pod template, ServiceAccount and Secrets resolve there.
ANNOTATION_STAGING_FOR = "modelrollout.dev/staging-for"


POD_STATUS_SETTLE = 5.0  # seconds for the kubelet to report why a server its clients saw die died


def now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions(old: list[dict[str, Any]], step: Step, generation: int, t: datetime) -> list[dict[str, Any]]:
    """Ready (promoted), Progressing (still moving) and Waiting, by the API conventions."""
    wanted = {
        "Ready": ("True" if step.phase == "Promoted" else "False"),
        "Progressing": ("False" if step.phase in TERMINAL else "True"),
        "Waiting": ("True" if step.phase in ("Waiting", "AwaitingApproval") else "False"),
    }
    prev = {c["type"]: c for c in old}
    out = []
    for typ, status in wanted.items():
        p = prev.get(typ, {})
        changed = p.get("status") != status
        since = iso(t) if changed or "lastTransitionTime" not in p else p["lastTransitionTime"]
        out.append({"type": typ, "status": status, "reason": step.reason, "message": step.message,
                    "lastTransitionTime": since, "observedGeneration": generation})
    return out


@dataclass
class Evaluation:
    task: asyncio.Task[None]
    error: str | None = None


@dataclass
class Controller:
    kube: Kube
    settings: Settings
    metrics: OperatorMetrics
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    holdouts: dict[str, Holdout] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    semaphore: asyncio.Semaphore | None = None
    reach: holdout_source.Reach = field(default_factory=holdout_source.Reach.from_env)
    # uid -> (phase, queue key) of every live rollout this process reconciled: the staging queue
    phases: dict[str, tuple[str, tuple[str, str, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.semaphore = asyncio.Semaphore(self.settings.max_concurrent_evaluations)
        self.kube.on_call = self.metrics.api_requests.inc

    # --- observe -----------------------------------------------------------------------
    def evaluating(self, body: Mapping[str, Any]) -> bool:
        """True while this process evaluates the rollout's current generation and nothing asks it to stop.

        Then a timer tick has nothing to read from the API: only the evaluation's end moves the rollout
        on, and spec changes and aborts arrive as updates, which always reconcile.
        """
        meta = body["metadata"]
        ev = self.evaluations.get(f"{meta['uid']}:{meta.get('generation', 1)}")
        aborted = (meta.get("annotations") or {}).get(ANNOTATION_ABORT) == "true"
        return ev is not None and not ev.task.done() and not aborted

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
                    err = await self._load_holdout(body, spec)
                if err:
                    obs["input_error"], obs["input_reason"] = err
            elif phase == "Staging":
                obs["staging_available"] = await self._staging_available(body, spec)
                if obs["staging_available"] is False:
                    obs["staging_problems"] = await self._pod_problems(body, spec)
            elif phase == "Canary":
                obs["canary_available"] = await run(self.kube.deployment_available, ns,
                                                    objects.canary_name(spec.target_ref.name))
            ev = self.evaluations.get(f"{meta['uid']}:{gen}")
            if ev is not None:
                obs["evaluation"] = "error" if ev.error else ("running" if not ev.task.done() else "none")
                obs["evaluation_error"] = ev.error
        if phase in ("Pending", "Waiting") and spec is not None and not obs.get("blocked_by"):
            obs["queue_full"] = self._staging_queue(meta)
        step = decide(spec, status, Observed(**obs))
        # recorded before any await, so concurrent reconciles of other rollouts see the slot taken
        if step.phase in TERMINAL:
            self.phases.pop(meta["uid"], None)
        else:  # one waiting for its target does not hold a place in the staging queue
            self.phases[meta["uid"]] = ("Blocked" if step.reason == "TargetBusy" else step.phase, _queue_key(meta))
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

    async def _reach(self, body: Mapping[str, Any], spec: ModelRolloutSpec) -> tuple[str, str] | None:
        """(error, reason) if the rollout names what it may not use: checked before anything is created."""
        meta = body["metadata"]
        problem = objects.name_problem(str(meta["name"]))
        if problem:
            return problem, "InvalidName"
        ns, sns = str(meta["namespace"]), self._staging_ns(body, spec)
        if sns == ns:
            return None
        annotations = await run(self.kube.namespace_annotations, sns)
        allowed = {x.strip() for x in (annotations or {}).get(ANNOTATION_STAGING_FOR, "").split(",")}
        if annotations is None or ns not in allowed:
            return (f"spec.staging.namespace: namespace {sns!r} does not exist or has not opted in to staging for "
                    f"{ns!r} (its owner sets the annotation {ANNOTATION_STAGING_FOR}: {ns}); nothing was created",
                    "StagingNamespaceNotAllowed")
        return None

    def _staging_queue(self, meta: Mapping[str, Any]) -> str | None:
        """Why this rollout may not stage yet: the slots are taken, or earlier rollouts queue for them."""
        limit = self.settings.max_concurrent_stagings
        others = [v for uid, v in self.phases.items() if uid != meta["uid"]]
        busy = sum(1 for ph, _ in others if ph in ("Staging", "Evaluating"))
        if busy >= limit:
            return f"{busy} rollouts are staging or evaluating (at most {limit} at once)"
        me = _queue_key(meta)
        ahead = sum(1 for ph, key in others if ph in ("Pending", "Waiting") and key < me)
        if ahead >= limit - busy:
            return f"{ahead} earlier rollouts are queued for the {limit - busy} free staging slots"
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

    def _staging_ns(self, body: Mapping[str, Any], spec: ModelRolloutSpec) -> str:
        return spec.staging.namespace or str(body["metadata"]["namespace"])

    async def _staging_available(self, body: Mapping[str, Any], spec: ModelRolloutSpec) -> bool | None:
        ns = self._staging_ns(body, spec)
        states = [await run(self.kube.deployment_available, ns, objects.staging_name(body["metadata"]["name"], v))
                  for v in ("candidate", "baseline")]
        if any(s is None for s in states):
            return None
        return all(states)

    async def _pod_problems(self, body: Mapping[str, Any], spec: ModelRolloutSpec,
                            settle: float = 0.0) -> PodProblems:
        """Why the staging pods do not serve. With `settle`, wait that long for a fatal cause to show:
        a server that just died is reported by the kubelet a moment after its clients notice."""
        ns, end = self._staging_ns(body, spec), time.monotonic() + settle
        while True:
            found = pod_problems(await run(self.kube.pods, ns, objects.staging_selector(body)))
            if found.fatal or time.monotonic() >= end:
                return found
            await asyncio.sleep(1.0)

    async def _load_holdout(self, body: Mapping[str, Any], spec: ModelRolloutSpec) -> tuple[str, str] | None:
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
            self.holdouts[key] = await holdout_source.load(data, name, spec, self.reach,
                                                           echo_columns=spec.holdout.url is None)
        except holdout_source.HoldoutError as e:
            return f"hold-out: {e}", e.reason
        except DataError as e:
            return cap(f"hold-out: {e}", 600), "HoldoutInvalid"
        return None

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
            await run(self.kube.annotate_rollout, ns, name, {ANNOTATION_APPROVE: None, ANNOTATION_ABORT: None})
            await self._cleanup(body, spec, status)
            self._forget(meta["uid"])
            patch.update({"evaluation": None, "canary": None, "staging": None, "decision": None, "gates": [],
                          "candidate": None, "baseline": None, "capacity": None, "previousTemplate": None,
                          "promotedTemplateHash": None,
                          "retried": meta.get("annotations", {}).get(ANNOTATION_RETRY)})
        elif a == "stage" and spec is not None and target is not None:
            sns = self._staging_ns(body, spec)
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
            self._start_evaluation(body, spec, status)
            ev = status.get("evaluation") or {}
            if not ev.get("startedAt") or ev.get("generation") != gen:  # the deadline counts from here
                patch["evaluation"] = {"startedAt": iso(now()), "generation": gen}
        elif a == "canary" and spec is not None and target is not None and step.canary_step is not None:
            i = step.canary_step
            w = spec.promotion.canary.steps[i].weight
            prev = status.get("previousTemplate") or target["spec"]["template"]
            cand = candidate_template(prev, spec.candidate.image, [e.model_dump() for e in spec.candidate.env],
                                      spec.candidate.args)
            replicas = canary_replicas(int(target["spec"].get("replicas", 1)), w)
            await run(self.kube.apply, objects.canary_deployment(body, target, cand, replicas), meta["uid"])
            old = status.get("canary") or {}
            if old.get("step") != i or not old.get("startedAt"):
                t = iso(now())
                records = [*_closed(old.get("steps") or [], "Passed"),
                           {"step": i + 1, "weight": w, "startedAt": t, "outcome": "Running", "measurements": []}]
                patch["canary"] = {"step": i, "weight": w, "replicas": replicas, "startedAt": t, "steps": records}
        elif a == "measure" and spec is not None and step.canary_step is not None:
            await self._measure(body, spec, status, step.canary_step, target)
            return
        elif a == "promote" and spec is not None and target is not None:
            prev = status.get("previousTemplate") or target["spec"]["template"]
            cand = candidate_template(prev, spec.candidate.image, [e.model_dump() for e in spec.candidate.env],
                                      spec.candidate.args)
            if objects.template_hash(target["spec"]["template"]) != objects.template_hash(cand):
                # production changes here only
                await run(self.kube.replace_template, ns, spec.target_ref.name, cand, target["metadata"]["uid"])
            patch["promotedTemplateHash"] = objects.template_hash(cand)
            if (status.get("canary") or {}).get("steps"):
                patch["canary"] = {**status["canary"], "steps": _closed(status["canary"]["steps"], "Passed")}
            await self._cleanup(body, spec, status)
            patch["decision"] = {"result": "Promoted", "reason": step.message, "at": iso(now())}
        elif a == "rollback":
            self._forget(meta["uid"])  # an evaluation past its deadline stops here
            await self._restore(body, spec, status, target)
            await self._cleanup(body, spec, status)
            patch["decision"] = {"result": "RolledBack", "reason": step.message, "at": iso(now())}
            if (status.get("canary") or {}).get("steps"):  # the step that stopped says why
                patch["canary"] = {**status["canary"], "steps": _closed(status["canary"]["steps"], step.reason)}
        elif a == "fail":
            self._forget(meta["uid"])
            await self._cleanup(body, spec, status)
            patch["decision"] = {"result": "Failed", "reason": step.message, "at": iso(now())}
        await self._patch(body, status, patch, step, gen)

    async def _patch(self, body: Mapping[str, Any], status: Mapping[str, Any], patch: dict[str, Any], step: Step,
                     gen: int) -> None:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        changed = (status.get("phase"), status.get("reason"), status.get("message")) != (
            step.phase, step.reason, step.message)
        if not changed and not patch:
            return
        t = now()
        patch.update({"phase": step.phase, "reason": step.reason, "message": cap(step.message),
                      "observedGeneration": gen, "conditions": conditions(list(status.get("conditions") or []),
                                                                          step, gen, t)})
        await run(self.kube.patch_status, ns, name, patch)
        self.metrics.set_phase(name, ns, step.phase)
        if status.get("phase") != step.phase or status.get("reason") != step.reason:
            warning = step.phase in ("RolledBack", "Failed")
            await run(self.kube.event, body, step.reason, f"{step.phase}: {step.message}", warning)
            if step.phase in TERMINAL:
                self.metrics.decisions.labels(ns, step.phase).inc()
            log.info("%s/%s: %s (%s) %s", ns, name, step.phase, step.reason, step.message)

    async def _restore(self, body: Mapping[str, Any], spec: ModelRolloutSpec | None, status: Mapping[str, Any],
                       target: Mapping[str, Any] | None) -> None:
        """Put back the exact previous template if this rollout ever wrote the target."""
        prev = status.get("previousTemplate")
        written = status.get("promotedTemplateHash")
        if spec is None or target is None or not prev or not written:
            return
        current = objects.template_hash(target["spec"]["template"])
        if current == written and current != objects.template_hash(prev):
            await run(self.kube.replace_template, body["metadata"]["namespace"], spec.target_ref.name, prev,
                      target["metadata"]["uid"])

    async def _cleanup(self, body: Mapping[str, Any], spec: ModelRolloutSpec | None,
                       status: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        staging = status.get("staging") or {}
        sns = staging.get("namespace") or (self._staging_ns(body, spec) if spec else meta["namespace"])
        doomed = [(kind, sns, objects.staging_name(meta["name"], v)) for v in ("candidate", "baseline")
                  for kind in ("Deployment", "Service")]
        target = spec.target_ref.name if spec else (body.get("spec") or {}).get("targetRef", {}).get("name")
        if isinstance(target, str) and target:
            doomed.append(("Deployment", meta["namespace"], objects.canary_name(target)))
        for kind, ns, obj in doomed:  # only what this rollout created: anything else of that name is left alone
            if not await run(self.kube.delete, kind, ns, obj, meta["uid"]):
                log.warning("%s/%s: left %s %s/%s alone: not created by this rollout", meta["namespace"],
                            meta["name"], kind, ns, obj)

    def _forget(self, uid: str) -> None:
        for key in [k for k in self.evaluations if k.startswith(uid)]:
            self.evaluations.pop(key).task.cancel()
        for key in [k for k in self.holdouts if k.startswith(uid)]:
            self.holdouts.pop(key)

    async def delete(self, body: Mapping[str, Any]) -> None:
        """On deletion: staging and canary go; production is left exactly as it is."""
        spec = None
        with contextlib.suppress(SpecError):
            spec = parse_spec(body.get("spec"))
        await self._cleanup(body, spec, dict(body.get("status") or {}))
        self._forget(body["metadata"]["uid"])
        self.phases.pop(body["metadata"]["uid"], None)
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
        await run(self.kube.patch_status, meta["namespace"], meta["name"], {"canary": canary})
        self.metrics.canary(meta["name"], meta["namespace"], i + 1, taken)
        status = {**status, "canary": canary}
        obs = Observed(generation=int(meta.get("generation", 1)), now=now(),
                       annotations=dict(meta.get("annotations") or {}), canary_available=True)
        await self.apply(body, spec, status, decide(spec, status, obs), target)

    # --- evaluation and canary checks ------------------------------------------------------
    def _start_evaluation(self, body: Mapping[str, Any], spec: ModelRolloutSpec, status: Mapping[str, Any]) -> None:
        key = f"{body['metadata']['uid']}:{body['metadata'].get('generation', 1)}"
        if key in self.evaluations and not self.evaluations[key].task.done():
            return
        ev = Evaluation(asyncio.get_running_loop().create_task(self._evaluate(body, spec, key)))
        self.evaluations[key] = ev

    async def _evaluate(self, body: Mapping[str, Any], spec: ModelRolloutSpec, key: str) -> None:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        assert self.semaphore is not None
        async with self.semaphore:
            self.metrics.in_flight.inc()
            t0 = time.monotonic()
            try:
                if key not in self.holdouts:
                    err = await self._load_holdout(body, spec)
                    if err:
                        raise DataError(err[0])
                report = await self._run_evaluation(body, spec, self.holdouts[key])
                await run(self.kube.patch_status, ns, name, {
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
                                         for v in ("candidate", "baseline")}},
                    "evaluation": {"outcome": str(report.decision.outcome), "reason": report.decision.reason,
                                   "generation": int(meta.get("generation", 1))},
                })
                self.metrics.figures.observe(report, name, ns)
            except Exception as e:  # any error, a bug or a server's nonsense included, ends the rollout: no loop
                expected = isinstance(e, ServerError | DataError | NotFound | RuntimeError | OSError)
                why = str(e) if expected else f"{type(e).__name__}: {e}"
                if not isinstance(e, DataError | NotFound):  # a server that died: its pod says why
                    with contextlib.suppress(Exception):
                        problems = await self._pod_problems(body, spec, settle=POD_STATUS_SETTLE)
                        why = f"{why} ({problems.summary()})" if problems.messages else why
                self.evaluations[key].error = cap(why, 600)
                self.metrics.eval_errors.labels(ns).inc()
                log.warning("%s/%s: evaluation failed: %s", ns, name, e)
            finally:
                self.metrics.in_flight.dec()
                self.metrics.eval_seconds.observe(time.monotonic() - t0)

    async def _run_evaluation(self, body: Mapping[str, Any], spec: ModelRolloutSpec, holdout: Holdout) -> Any:
        sns = self._staging_ns(body, spec)
        headers: tuple[tuple[str, str], ...] = ()
        if spec.serving.auth_secret_ref is not None:
            ref = spec.serving.auth_secret_ref
            token = await run(self.kube.secret_value, body["metadata"]["namespace"], ref.name, ref.key)
            headers = (("Authorization", f"Bearer {token}"),)
        variants = []
        for v in ("candidate", "baseline"):
            svc = objects.staging_name(body["metadata"]["name"], v)
            url = self.settings.service_url(sns, svc, spec.serving.port)
            dep = await run(self.kube.get_deployment, sns, svc)
            mem, cpu = pod_requests(((dep or {}).get("spec") or {}).get("template", {}).get("spec", {}))
            selector = tuple((((dep or {}).get("spec") or {}).get("template", {}).get("spec", {})
                              .get("nodeSelector") or {}).items())
            ep = Endpoint(url, spec.serving.model_name, spec.serving.protocol, spec.serving.timeout,
                          int(spec.serving.max_response_size), v, headers)
            memory, leak, where = await self._sources(sns, dep, PrometheusSource(url.rstrip("/") + "/metrics"),
                                                      spec.staging.replicas)
            variants.append(Variant(v, ep, memory, mem, cpu, selector, leak_source=leak, memory_source=where))
        nodes = await run(self.kube.nodes)
        report, _ = await evaluate_servers(spec, holdout, variants[0], variants[1], nodes,
                                           lambda m: log.info("%s: %s", body["metadata"]["name"], m))
        return report

    async def _sources(self, ns: str, dep: Mapping[str, Any] | None, server: PrometheusSource,
                       replicas: int) -> tuple[Source, Source, str]:
        """(memory source, leak-probe source, where memory comes from).

        metrics.k8s.io when the cluster serves it: it measures every container of the pod as the
        kubelet (and the OOM killer) does. The leak probe needs samples fresher than
        metrics-server's resolution, so it reads the server's own endpoint when that answers.
        """
        selector = dict((((dep or {}).get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        deadline = time.monotonic() + self.settings.metrics_api_wait
        pods = await run(self.kube.pod_usage, ns, selector) if selector else None
        while pods is not None and len(pods) < replicas and time.monotonic() < deadline:
            await asyncio.sleep(1.0)  # a new pod has usage after metrics-server's next scrape
            pods = await run(self.kube.pod_usage, ns, selector)
        if pods is None or len(pods) < replicas:
            if pods is not None:
                log.warning("%s: metrics.k8s.io has usage for %d of %d pods after %gs; using the server's "
                            "/metrics", ns, len(pods), replicas, self.settings.metrics_api_wait)
            return server, server, "server /metrics"

        async def fetch() -> list[PodUsage]:
            return await run(self.kube.pod_usage, ns, selector) or []

        usage = UsageSource(fetch, min_interval=5.0)
        try:
            await server.sample()
            return usage, server, "metrics.k8s.io"
        except (RuntimeError, OSError, aiohttp.ClientError, TimeoutError):
            return usage, usage, "metrics.k8s.io"


def _closed(records: list[dict[str, Any]], outcome: str) -> list[dict[str, Any]]:
    """The canary step records with the last one, if still Running, closed with `outcome`."""
    if records and records[-1].get("outcome") == "Running":
        return [*records[:-1], {**records[-1], "outcome": outcome}]
    return list(records)


def _queue_key(meta: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(meta.get("creationTimestamp") or ""), str(meta["namespace"]), str(meta["name"]))


def _api_reason(e: ApiException) -> str:
    """The API server's own message, capped: it names the field it refused."""
    try:
        return cap(str(json.loads(e.body or "{}").get("message") or e.reason), 400)
    except ValueError:
        return cap(str(e.reason), 400)


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and v == v and abs(v) != float("inf")}


def _fig(report: Any, variant: str, name: str) -> float | None:
    figs = report.evidence.candidate if variant == "candidate" else (report.evidence.baseline or {})
    v = figs.get(name)
    return None if v is None else float(v)
