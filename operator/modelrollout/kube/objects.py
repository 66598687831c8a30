"""Kubernetes objects the operator creates, as plain dicts. No API calls here."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from modelrollout.core.spec import API_VERSION, KIND

LABEL_ROLLOUT = "modelrollout.dev/rollout"
LABEL_VARIANT = "modelrollout.dev/variant"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGER = "modelrollout"


def owner_reference(rollout: Mapping[str, Any]) -> dict[str, Any]:
    m = rollout["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": m["name"], "uid": m["uid"],
            "controller": True, "blockOwnerDeletion": True}


def staging_name(rollout: str, variant: str) -> str:
    return f"{rollout}-{variant}"[:63].rstrip("-")


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
    name = rollout["metadata"]["name"]
    obj_name = staging_name(name, variant)
    labels = {LABEL_ROLLOUT: name, LABEL_VARIANT: variant, LABEL_MANAGED: MANAGER}
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
                      replicas: int) -> dict[str, Any]:
    """The candidate beside production, with production's pod labels so its Service splits traffic."""
    name = rollout["metadata"]["name"]
    t = copy.deepcopy(dict(template))
    labels = dict(t.setdefault("metadata", {}).get("labels") or {})
    labels.update({LABEL_ROLLOUT: name, LABEL_VARIANT: "canary"})
    t["metadata"]["labels"] = labels
    selector = {k: v for k, v in labels.items()}
    meta = {"name": canary_name(target["metadata"]["name"]), "namespace": target["metadata"]["namespace"],
            "labels": {LABEL_ROLLOUT: name, LABEL_VARIANT: "canary", LABEL_MANAGED: MANAGER},
            "ownerReferences": [owner_reference(rollout)]}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": replicas, "selector": {"matchLabels": selector}, "template": t}}


def canary_name(target: str) -> str:
    return f"{target}-canary"[:63]
