"""The rollout state machine: (spec, status, observations, now) -> the next step.

Pure, so every transition is unit-tested without a cluster, and the operator can be
killed at any moment: the next reconcile reads status, observes the world again and asks
this function again. Production changes in exactly one step (`promote`), which is only
reachable after an evaluation whose decision was Promote and, with canary steps, after
every step's live gates passed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from modelrollout.core import canary as analysis
from modelrollout.core.pods import PodProblems
from modelrollout.core.spec import ModelRolloutSpec

ANNOTATION_APPROVE = "modelrollout.dev/approve"
ANNOTATION_ABORT = "modelrollout.dev/abort"
ANNOTATION_RETRY = "modelrollout.dev/retry"
ANNOTATION_UNDO = "modelrollout.dev/undo"
# "full": skip every remaining canary step; "<n>": end step n's pause now (live gates already failed still win)
ANNOTATION_PROMOTE = "modelrollout.dev/promote"
TERMINAL = frozenset({"Promoted", "RolledBack", "Failed"})
CANARY_CHECK_GRACE = 300.0  # seconds a canary step may overrun its measurements (slow or unreachable Prometheus)

Action = Literal[
    "none", "wait", "fail", "stage", "evaluate", "await_approval", "canary", "measure", "promote",
    "rollback", "restart", "undo", "scale",
]


@dataclass(frozen=True)
class Observed:
    generation: int
    now: datetime
    annotations: Mapping[str, str] = field(default_factory=dict)
    target_exists: bool = True
    blocked_by: str | None = None  # another active rollout of the same target
    queue_full: str | None = None  # why staging must wait for a slot (too many rollouts staging at once)
    input_error: str | None = None  # what only the operator can check (hold-out, ConfigMap, ...)
    input_reason: str = "InvalidInput"
    staging_available: bool | None = None  # None: the staging objects do not exist
    staging_problems: PodProblems = field(default_factory=PodProblems)  # why staging pods do not serve
    evaluation: Literal["none", "running", "error"] = "none"
    evaluation_error: str | None = None
    canary_available: bool | None = None
    production_replicas: int | None = None  # the target's spec.replicas now
    undo_blocked: str | None = None  # why a Promoted rollout's target cannot go back to its previous template
    route_lost: str | None = None  # why the canary's HTTPRoute, once split, can no longer carry it


@dataclass(frozen=True)
class Step:
    action: Action
    phase: str
    reason: str
    message: str
    canary_step: int | None = None


def _ts(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _elapsed(status: Mapping[str, Any], path: Sequence[str], now: datetime) -> float | None:
    node: Any = status
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    started = _ts(node)
    return None if started is None else (now - started).total_seconds()


def _after_gates(spec: ModelRolloutSpec, obs: Observed, approved_already: bool = False) -> Step:
    """Where a candidate whose gates all passed goes next."""
    approved = approved_already or obs.annotations.get(ANNOTATION_APPROVE) == "true"
    if spec.promotion.approval == "Manual" and not approved:
        return Step("await_approval", "AwaitingApproval", "AwaitingApproval",
                    f"every gate passed; waiting for the {ANNOTATION_APPROVE}=true annotation")
    if spec.promotion.canary.steps:
        w = spec.promotion.canary.steps[0].weight
        return Step("canary", "Canary", "CanaryStep", f"canary step 1: candidate at {w}% of replicas", 0)
    return Step("promote", "Promoted", "Promoted", "every gate passed; the target now runs the candidate")


def decide(spec: ModelRolloutSpec | None, status: Mapping[str, Any], obs: Observed) -> Step:
    phase = str(status.get("phase") or "Pending")
    generation_changed = status.get("observedGeneration") not in (None, obs.generation)
    retry = obs.annotations.get(ANNOTATION_RETRY)
    if phase in TERMINAL:
        if generation_changed:
            return Step("restart", "Pending", "SpecChanged",
                        f"spec changed (generation {obs.generation}); starting over")
        if retry and retry != status.get("retried"):
            return Step("restart", "Pending", "Retry", f"retry requested ({retry}); starting over")
        if phase == "Promoted" and obs.annotations.get(ANNOTATION_UNDO) == "true":
            if obs.undo_blocked:
                return Step("wait", "Promoted", "UndoRefused", f"undo refused: {obs.undo_blocked}")
            return Step("undo", "RolledBack", "Undone", f"undone by the {ANNOTATION_UNDO} annotation: the target "
                        "runs its previous template again")
        return Step("none", phase, str(status.get("reason") or phase), str(status.get("message") or ""))
    if spec is None or obs.input_error:
        return Step("fail", "Failed", obs.input_reason, obs.input_error or "the spec is invalid")
    if generation_changed and phase != "Pending":
        return Step("restart", "Pending", "SpecChanged",
                    f"spec changed (generation {obs.generation}) during {phase}; "
                    "evaluation restarted with the new spec")
    if obs.annotations.get(ANNOTATION_ABORT) == "true":
        return Step("rollback", "RolledBack", "Aborted",
                    f"aborted by the {ANNOTATION_ABORT} annotation during {phase}; production is as before")
    if not obs.target_exists:
        return Step("fail", "Failed", "TargetNotFound",
                    f"target Deployment {spec.target_ref.name!r} does not exist; nothing was created")
    ready_timeout = spec.staging.ready_timeout

    if phase in ("Pending", "Waiting"):
        if obs.blocked_by:
            return Step("wait", "Waiting", "TargetBusy",
                        f"rollout {obs.blocked_by!r} is active for Deployment {spec.target_ref.name!r}; "
                        "this one starts when it finishes")
        if obs.queue_full:
            return Step("wait", "Waiting", "StagingQueued", f"{obs.queue_full}; this one stages when a slot frees")
        return Step("stage", "Staging", "Staging", "creating candidate and baseline in staging")

    if phase == "Staging":
        if obs.staging_available:
            return Step("evaluate", "Evaluating", "Evaluating", "staging is Available; evaluating both variants")
        problems = obs.staging_problems
        if problems.fatal:  # waiting out readyTimeout would not change it
            return Step("rollback", "RolledBack", "StagingPodFailing",
                        f"a staging pod cannot serve: {problems.summary()}; production is unchanged")
        waited = _elapsed(status, ("staging", "startedAt"), obs.now) or 0.0
        if waited > ready_timeout:
            why = f" ({problems.summary()})" if problems.messages else ""
            return Step("rollback", "RolledBack", "StagingTimeout",
                        f"staging was not Available within {ready_timeout:g}s{why}; production is unchanged")
        if obs.staging_available is None:
            return Step("stage", "Staging", "Staging", "creating candidate and baseline in staging")
        return Step("wait", "Staging", "StagingNotReady", "waiting for the staging Deployments to become Available")

    if phase == "Evaluating":
        ev = status.get("evaluation") or {}
        if ev.get("generation") == obs.generation and ev.get("outcome") == "Reject":
            return Step("rollback", "RolledBack", "GatesFailed", str(ev.get("reason")))
        if ev.get("generation") == obs.generation and ev.get("outcome") == "Promote":
            return _after_gates(spec, obs)
        if obs.evaluation == "error":
            return Step("rollback", "RolledBack", "EvaluationFailed",
                        f"evaluation failed: {obs.evaluation_error}; production is unchanged")
        took = _elapsed(status, ("evaluation", "startedAt"), obs.now)
        if took is not None and took > spec.staging.evaluation_timeout:
            return Step("rollback", "RolledBack", "EvaluationTimeout",
                        f"the evaluation did not finish within staging.evaluationTimeout "
                        f"({spec.staging.evaluation_timeout:g}s); production is unchanged")
        if obs.evaluation == "none":
            return Step("evaluate", "Evaluating", "Evaluating", "evaluating both variants")
        return Step("wait", "Evaluating", "Evaluating", "evaluating both variants")

    if phase == "AwaitingApproval":
        return _after_gates(spec, obs)

    if phase == "Canary":
        canary = status.get("canary") or {}
        i = int(canary.get("step", 0))
        steps = spec.promotion.canary.steps
        if i >= len(steps):
            return Step("promote", "Promoted", "Promoted",
                        "every canary step passed; the target now runs the candidate")
        since = _elapsed(status, ("canary", "startedAt"), obs.now)
        if since is None or obs.canary_available is None:
            return Step("canary", "Canary", "CanaryStep", f"canary step {i + 1}: candidate at {steps[i].weight}%", i)
        gates, pause = spec.promotion.gates, steps[i].pause
        if since > analysis.duration(gates, pause) + ready_timeout + CANARY_CHECK_GRACE:
            return Step("rollback", "RolledBack", "CanaryTimeout",
                        f"canary step {i + 1} did not finish within its measurements + staging.readyTimeout + "
                        f"{CANARY_CHECK_GRACE:g}s; production restored")
        if not obs.canary_available:
            if since > ready_timeout:
                return Step("rollback", "RolledBack", "CanaryNotReady",
                            f"canary step {i + 1} was not Available within {ready_timeout:g}s; production restored")
            return Step("wait", "Canary", "CanaryStep", f"canary step {i + 1}: waiting for the canary replicas", i)
        if obs.route_lost:  # deleted or changed by its owner during a pause: the canary's share is gone
            return Step("rollback", "RolledBack", "TrafficRouteInvalid", f"{obs.route_lost}; production restored")
        total = int(status.get("previousReplicas") or 0)
        routed = spec.promotion.canary.traffic_routing is not None
        if routed and (status.get("traffic") or {}).get("weight") != steps[i].weight:  # once the canary serves
            return Step("scale", "Canary", "CanaryStep", f"canary step {i + 1}: the HTTPRoute sends "
                        f"{steps[i].weight}% to the candidate", i)
        if total and obs.production_replicas is not None and not routed:  # production gives way once the canary serves
            production = canary_split(total, steps[i].weight)[1]
            if obs.production_replicas != production:
                return Step("scale", "Canary", "CanaryStep",
                            f"canary step {i + 1}: production to {production} of {total} replicas", i)
        taken = measurements(status, i)
        result, why = analysis.outcome(gates, taken)
        if result is analysis.StepOutcome.FAILED:
            return Step("rollback", "RolledBack", "CanaryGateFailed",
                        f"canary step {i + 1}: {why}; production restored")
        if result is analysis.StepOutcome.INCONCLUSIVE:
            return Step("rollback", "RolledBack", "CanaryInconclusive",
                        f"canary step {i + 1}: {why}; production restored")
        skip = obs.annotations.get(ANNOTATION_PROMOTE)
        if skip == "full":
            return Step("promote", "Promoted", "PromotedByUser", f"promoted by {ANNOTATION_PROMOTE}=full at canary "
                        f"step {i + 1}: the remaining steps were skipped; every gate measured so far passed")
        if skip == str(i + 1) and i + 1 < len(steps):
            return Step("canary", "Canary", "CanaryStep", f"canary step {i + 2}: candidate at {steps[i + 1].weight}% "
                        f"(step {i + 1}'s pause skipped by {ANNOTATION_PROMOTE})", i + 1)
        if skip == str(i + 1):
            return Step("promote", "Promoted", "PromotedByUser", f"promoted by {ANNOTATION_PROMOTE}={i + 1}: the "
                        "last canary step's pause was skipped; every gate measured so far passed")
        if analysis.due(gates, pause, since, taken):
            return Step("measure", "Canary", "CanaryStep", f"canary step {i + 1}: measuring live gates", i)
        if result is analysis.StepOutcome.PASSED and since >= pause:
            if i + 1 < len(steps):
                return Step("canary", "Canary", "CanaryStep",
                            f"canary step {i + 2}: candidate at {steps[i + 1].weight}%", i + 1)
            return Step("promote", "Promoted", "Promoted",
                        "every canary step passed; the target now runs the candidate")
        left = max(pause - since, 0.0)
        return Step("wait", "Canary", "CanaryStep", f"canary step {i + 1}: candidate at {steps[i].weight}%, "
                    f"{left:.0f}s of the pause left, live gates {why}", i)

    return Step("wait", phase, "Unknown", f"unknown phase {phase!r}")


def measurements(status: Mapping[str, Any], step: int) -> list[Mapping[str, Any]]:
    """The live-gate measurements recorded so far at canary step `step` (0-based)."""
    for record in (status.get("canary") or {}).get("steps") or []:
        if record.get("step") == step + 1:
            return list(record.get("measurements") or [])
    return []


def canary_split(total: int, weight: int) -> tuple[int, int]:
    """(canary, production) replicas for a step: the candidate's share of the `total` serving pods is
    `weight` percent within one pod (half rounds up), total constant as in Argo's basic canary; the
    canary has at least one pod and production keeps one until weight 100, which is all candidate."""
    total = max(1, total)
    if weight >= 100:
        return total, 0
    canary = max(1, math.floor(total * weight / 100 + 0.5))
    return canary, max(1, total - canary)


def candidate_template(template: Mapping[str, Any], image: str | None, env: Sequence[Mapping[str, str]],
                       args: Sequence[str] | None) -> dict[str, Any]:
    """The target's pod template with the candidate's changes on its first container."""
    import copy

    out = copy.deepcopy(dict(template))
    containers = out.setdefault("spec", {}).setdefault("containers", [{}])
    c = containers[0]
    if image:
        c["image"] = image
    if env:
        names = {e["name"] for e in env}
        c["env"] = [e for e in c.get("env", []) if e.get("name") not in names] + [dict(e) for e in env]
    if args is not None:
        c["args"] = list(args)
    return out
