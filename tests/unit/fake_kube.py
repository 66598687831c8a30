"""An in-memory stand-in for the small Kube interface, so reconcile is unit-tested phase by phase.

It keeps objects as dicts and enforces what the real `kube/api.py` enforces (ownership on write
and delete, the UID test on target writes); faults are injected per method. The e2e tests run
the same controller against the real API server.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

from modelrollout.kube.api import Kube, NotOwned
from modelrollout.kube.objects import owned_by

ObjKey = tuple[str, str, str]  # kind, namespace, name
CRD = Path(__file__).resolve().parents[2] / "crds" / "modelrollouts.modelrollout.dev.yaml"
STATUS_FIELDS = set(yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                    ["properties"]["status"]["properties"])


@dataclass
class FakeKube(Kube):
    objects: dict[ObjKey, dict[str, Any]] = field(default_factory=dict)
    rollouts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    faults: dict[str, ApiException] = field(default_factory=dict)  # method name -> raised once
    writes: list[str] = field(default_factory=list)
    available: bool = True  # whether Deployments report Available
    routes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # HTTPRoutes

    def __post_init__(self) -> None:
        self.on_call = None

    def _fault(self, method: str) -> None:
        if method in self.faults:
            raise self.faults.pop(method)

    # --- rollouts ---
    def get_rollout(self, ns: str, name: str) -> dict[str, Any] | None:
        r = self.rollouts.get((ns, name))
        return copy.deepcopy(r) if r else None

    def list_rollouts(self, ns: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(r) for (n, _), r in self.rollouts.items() if n == ns]

    def list_all_rollouts(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(r) for r in self.rollouts.values()]

    def patch_status(self, ns: str, name: str, status: Mapping[str, Any]) -> None:
        self._fault("patch_status")
        st = self.rollouts[ns, name].setdefault("status", {})
        for k, v in status.items():  # a merge patch: None deletes; a field the CRD does not declare is pruned
            if k not in STATUS_FIELDS:
                continue
            if v is None:
                st.pop(k, None)
            else:
                st[k] = copy.deepcopy(v)

    def annotate_rollout(self, ns: str, name: str, annotations: Mapping[str, str | None]) -> None:
        ann = self.rollouts[ns, name]["metadata"].setdefault("annotations", {})
        for k, v in annotations.items():
            if v is None:
                ann.pop(k, None)
            else:
                ann[k] = v

    def event(self, rollout: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
        self.events.append((reason, message))

    # --- workloads ---
    def get_deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        d = self.objects.get(("Deployment", ns, name))
        return copy.deepcopy(d) if d else None

    def deployment_available(self, ns: str, name: str) -> bool | None:
        return None if ("Deployment", ns, name) not in self.objects else self.available

    def apply(self, obj: dict[str, Any], uid: str) -> None:
        self._fault("apply")
        k = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if k in self.objects and not owned_by(self.objects[k]["metadata"], uid):
            raise NotOwned(f"{k[0]} {k[1]}/{k[2]} already exists and was not created by this rollout")
        self.objects[k] = {**copy.deepcopy(obj), "metadata": {**copy.deepcopy(obj["metadata"]), "uid": f"uid-{k[2]}"}}
        self.writes.append(f"apply {k[0]} {k[2]} replicas={obj.get('spec', {}).get('replicas')}")

    def delete(self, kind: str, ns: str, name: str, uid: str) -> bool:
        obj = self.objects.get((kind, ns, name))
        if obj is not None and not owned_by(obj["metadata"], uid):
            return False
        self.objects.pop((kind, ns, name), None)
        return True

    def replace_template(self, ns: str, name: str, template: Mapping[str, Any] | None, uid: str,
                         replicas: int | None = None) -> None:
        self._fault("replace_template")
        d = self.objects[("Deployment", ns, name)]
        if d["metadata"]["uid"] != uid:
            raise ApiException(status=422, reason="the uid test failed")
        if template is not None:
            d["spec"]["template"] = copy.deepcopy(dict(template))
        if replicas is not None:
            d["spec"]["replicas"] = replicas
        self.writes.append(f"target template={'new' if template is not None else '-'} replicas={replicas}")

    # --- Gateway API ---
    def get_route(self, ns: str, name: str) -> dict[str, Any] | None:
        r = self.routes.get((ns, name))
        return copy.deepcopy(r) if r else None

    def patch_route(self, ns: str, name: str, rules: list[dict[str, Any]], resource_version: str) -> None:
        self._fault("patch_route")
        r = self.routes[ns, name]
        if r["metadata"]["resourceVersion"] != resource_version:  # as the API server: the route changed since
            raise ApiException(status=409, reason="Conflict")
        r["spec"]["rules"] = copy.deepcopy(rules)
        r["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        self.writes.append("route " + " ".join(f"{b['name']}={b.get('weight')}" for rule in rules
                                               for b in rule.get("backendRefs") or []))

    def pods(self, ns: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        return []

    def namespace_annotations(self, ns: str) -> dict[str, str] | None:
        return {}
