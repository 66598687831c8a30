"""What a reconcile reads before it decides: each function answers one field of `Observed`.

Reads only; nothing here writes to the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelrollout.controller.traffic import plan, routing
from modelrollout.core.decide import TERMINAL
from modelrollout.core.spec import ModelRolloutSpec
from modelrollout.kube import objects
from modelrollout.kube.api import Kube, run

ACTIVE = frozenset({"Staging", "Evaluating", "AwaitingApproval", "Canary"})
# A namespace other than the rollout's own takes staging objects only when its owner lists the rollout's
# namespace here (comma-separated): the target's pod template, ServiceAccount and Secrets resolve there.
ANNOTATION_STAGING_FOR = "modelrollout.dev/staging-for"


async def undoable(kube: Kube, ns: str, spec: ModelRolloutSpec | None,
                    status: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the target, why its previous template cannot come back): only what this rollout wrote is undone."""
    if spec is None:
        return None, "the spec is invalid"
    target = await run(kube.get_deployment, ns, spec.target_ref.name)
    if target is None:
        return None, f"target Deployment {spec.target_ref.name!r} no longer exists"
    if not status.get("previousTemplate") or not status.get("promotedTemplateHash"):
        return target, "status has no previous template to restore"
    if objects.template_hash(target["spec"]["template"]) != status["promotedTemplateHash"]:
        return target, ("the target's template changed after this rollout promoted it; restoring would "
                        "overwrite that change")
    return target, None


async def reach(kube: Kube, body: Mapping[str, Any], spec: ModelRolloutSpec) -> tuple[str, str] | None:
    """(error, reason) if the rollout names what it may not use: checked before anything is created."""
    meta = body["metadata"]
    problem = objects.name_problem(str(meta["name"]))
    if problem:
        return problem, "InvalidName"
    ns, sns = str(meta["namespace"]), objects.staging_ns(body, spec)
    if sns == ns:
        return None
    annotations = await run(kube.namespace_annotations, sns)
    allowed = {x.strip() for x in (annotations or {}).get(ANNOTATION_STAGING_FOR, "").split(",")}
    if annotations is None or ns not in allowed:
        return (f"spec.staging.namespace: namespace {sns!r} does not exist or has not opted in to staging for "
                f"{ns!r} (its owner sets the annotation {ANNOTATION_STAGING_FOR}: {ns}); nothing was created",
                "StagingNamespaceNotAllowed")
    return None


async def blocker(kube: Kube, body: Mapping[str, Any], spec: ModelRolloutSpec) -> str | None:
    me = body["metadata"]
    for r in await run(kube.list_rollouts, me["namespace"]):
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


async def staging_available(kube: Kube, body: Mapping[str, Any], spec: ModelRolloutSpec) -> bool | None:
    ns = objects.staging_ns(body, spec)
    states = [await run(kube.deployment_available, ns, objects.staging_name(body["metadata"]["name"], v))
              for v in ("candidate", "baseline")]
    if any(s is None for s in states):
        return None
    return all(states)


async def route_lost(kube: Kube, ns: str, spec: ModelRolloutSpec) -> str | None:
    """Why the split route can no longer carry the canary (deleted, or its owner changed its rules)."""
    p = await plan(kube, ns, spec)
    return p if isinstance(p, str) else None


async def route_problem(kube: Kube, ns: str, spec: ModelRolloutSpec) -> tuple[str, str] | None:
    """(error, reason) if the canary's HTTPRoute is missing or cannot be split: found before staging."""
    if routing(spec) is None:
        return None
    p = await plan(kube, ns, spec)
    return (f"{p}; nothing was created", "TrafficRouteInvalid") if isinstance(p, str) else None
