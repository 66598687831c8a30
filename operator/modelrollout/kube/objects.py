"""Kubernetes objects the operator creates, as plain dicts. No API calls here."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from modelrollout.core.spec import API_VERSION, KIND, ModelRolloutSpec

LABEL_ROLLOUT = "modelrollout.dev/rollout"
LABEL_VARIANT = "modelrollout.dev/variant"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_UID = "modelrollout.dev/rollout-uid"
MANAGER = "modelrollout"
# Staging objects are `<rollout>-candidate` / `<rollout>-baseline`, and Services need DNS-1035 labels of at
# most 63 characters: a rollout name is therefore a DNS-1035 label of at most 53 (the CRD checks it too).
ROLLOUT_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_ROLLOUT_NAME = 63 - len("-candidate")


def name_problem(name: str) -> str | None:
    """Why a rollout name cannot name its staging objects, or None."""
    if len(name) > MAX_ROLLOUT_NAME:
        return f"metadata.name: {len(name)} characters; at most {MAX_ROLLOUT_NAME} (staging objects add '-candidate')"
    if not ROLLOUT_NAME.match(name):
        return ("metadata.name: must be a DNS-1035 label (lower-case letters, digits and '-', starting with a "
                "letter, no dots): it names the staging Services")
    return None


def labels_of(rollout: Mapping[str, Any], variant: str) -> dict[str, str]:
    return {LABEL_ROLLOUT: rollout["metadata"]["name"], **staging_selector(rollout), LABEL_VARIANT: variant}


def staging_selector(rollout: Mapping[str, Any]) -> dict[str, str]:
    """The labels every staging pod of this rollout carries, whichever its variant (canary pods lack the UID)."""
    return {LABEL_UID: rollout["metadata"]["uid"], LABEL_MANAGED: MANAGER}


def owned_by(obj_meta: Mapping[str, Any], uid: str) -> bool:
    """True when an existing object was made by the rollout with this UID (its label or its owner reference)."""
    labels = obj_meta.get("labels") or {}
    if labels.get(LABEL_MANAGED) == MANAGER and labels.get(LABEL_UID) == uid:
        return True
    return any(ref.get("uid") == uid and ref.get("kind") == KIND for ref in obj_meta.get("ownerReferences") or [])


def owner_reference(rollout: Mapping[str, Any]) -> dict[str, Any]:
    m = rollout["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": m["name"], "uid": m["uid"],
            "controller": True, "blockOwnerDeletion": True}


def staging_name(rollout: str, variant: str) -> str:
    """Never cut: `name_problem` keeps rollout names short enough, so candidate and baseline differ."""
    return f"{rollout}-{variant}"


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def _variant_template(template: Mapping[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    t = copy.deepcopy(dict(template))
    meta = t.setdefault("metadata", {})
    meta["labels"] = labels  # never production's labels: production Services must not route here
    # Annotations stay: they configure the pod (sidecar injection, scraping), and a sidecar's
    # memory is part of what a replica needs, so staging must run what production would.
    return t


def staging_objects(rollout: Mapping[str, Any], variant: str, template: Mapping[str, Any], namespace: str,
                    replicas: int, port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Deployment and a Service for one staging variant, owned by the rollout when it can be."""
    obj_name = staging_name(rollout["metadata"]["name"], variant)
    labels = labels_of(rollout, variant)
    meta: dict[str, Any] = {"name": obj_name, "namespace": namespace, "labels": dict(labels)}
    if namespace == rollout["metadata"]["namespace"]:  # owner references cannot cross namespaces
        meta["ownerReferences"] = [owner_reference(rollout)]
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
           "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                    "template": _variant_template(template, labels)}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": copy.deepcopy(meta),
           "spec": {"selector": labels, "ports": [{"name": "http", "port": port, "targetPort": port}]}}
    return dep, svc


def canary_deployment(rollout: Mapping[str, Any], target: Mapping[str, Any], template: Mapping[str, Any],
                      replicas: int, routed: bool = False) -> dict[str, Any]:
    """The candidate beside production. With production's pod labels its Service splits traffic by pod
    count; `routed` (an HTTPRoute splits it) gives the pods only the operator's labels, so no Service
    of the user's selects them and the route's weights alone set their share."""
    t = copy.deepcopy(dict(template))
    labels = {} if routed else dict(t.setdefault("metadata", {}).get("labels") or {})
    labels.update({LABEL_ROLLOUT: rollout["metadata"]["name"], LABEL_VARIANT: "canary"})
    t.setdefault("metadata", {})["labels"] = labels
    selector = {k: v for k, v in labels.items()}
    meta = {"name": canary_name(target["metadata"]["name"]), "namespace": target["metadata"]["namespace"],
            "labels": labels_of(rollout, "canary"), "ownerReferences": [owner_reference(rollout)]}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": replicas, "selector": {"matchLabels": selector}, "template": t}}


def canary_service(rollout: Mapping[str, Any], target: str, namespace: str, ports: list[int],
                   target_port: int) -> dict[str, Any]:
    """The Service an HTTPRoute sends the canary's share to: the canary pods only, on the ports the route
    uses for production, each to the model server's port."""
    meta = {"name": canary_name(target), "namespace": namespace, "labels": labels_of(rollout, "canary"),
            "ownerReferences": [owner_reference(rollout)]}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": {LABEL_ROLLOUT: rollout["metadata"]["name"], LABEL_VARIANT: "canary"},
                     "ports": [{"name": f"p{p}", "port": p, "targetPort": target_port} for p in ports]}}


def canary_name(target: str) -> str:
    """`<target>-canary`; a long target gets a hash instead of a cut, so two targets never share one."""
    name = f"{target}-canary"
    if len(name) <= 63:
        return name
    return f"{target[:45].rstrip('-')}-canary-{hashlib.sha256(target.encode()).hexdigest()[:10]}"


def staging_ns(body: Mapping[str, Any], spec: ModelRolloutSpec) -> str:
    """Where the rollout's staging objects live: spec.staging.namespace, else the rollout's own."""
    return spec.staging.namespace or str(body["metadata"]["namespace"])
