"""The only module that talks to the Kubernetes API.

Calls are synchronous (the official client) and run in worker threads via `run`, so the
operator's event loop never blocks. Every write is idempotent: create, and on "already
exists" patch to the desired state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException as ApiException  # re-exported: only kube/ imports the client
from kubernetes.utils import parse_quantity

from modelrollout.core.capacity import Node
from modelrollout.core.spec import GROUP, VERSION
from modelrollout.kube.objects import owned_by

P = ParamSpec("P")
T = TypeVar("T")
PLURAL = "modelrollouts"
ROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")  # group, version, plural


class NotFound(LookupError):
    pass


class NotOwned(PermissionError):
    """An object the operator would write exists and belongs to someone else: the rollout fails, untouched."""


async def run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


def _cpu_millis(q: str | None) -> float:
    return float(parse_quantity(q)) * 1000 if q else 0.0


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _mem(q: str | None) -> float:
    return float(parse_quantity(q)) if q else 0.0


def pod_requests(template_spec: Mapping[str, Any]) -> tuple[float, float]:
    """(memory bytes, CPU millicores) a pod requests, summed over its containers."""
    mem = cpu = 0.0
    for c in template_spec.get("containers", []) or []:
        req = ((c.get("resources") or {}).get("requests")) or {}
        mem += _mem(req.get("memory"))
        cpu += _cpu_millis(req.get("cpu"))
    return mem, cpu


def current_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's current (or named) context, as kubectl would use."""
    try:
        contexts, ctx = config.list_kube_config_contexts(config_file=kubeconfig)
        if context is not None:
            ctx = next((c for c in contexts if c.get("name") == context), {})
        return str(ctx.get("context", {}).get("namespace") or "default")
    except (config.ConfigException, OSError):
        return "default"


class Kube:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None):
        """In a pod, its ServiceAccount; elsewhere (or when a kubeconfig or context is named) the kubeconfig."""
        try:
            if kubeconfig is not None or context is not None:
                raise config.ConfigException("a kubeconfig was asked for")
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(config_file=kubeconfig, context=context)
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.requests = 0  # API calls made (the operator exports it; the benchmark reads it)
        self.on_call: Callable[[], None] | None = None

    def _dict(self, obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return out

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        if self.on_call is not None:
            self.on_call()
        return fn(*args, **kwargs)

    # --- reads ---------------------------------------------------------------------
    def _or_none(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One read; None when the object does not exist (404), any other error raised."""
        try:
            return self._call(fn, *args)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def get_deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        dep = self._or_none(self.apps.read_namespaced_deployment, name, ns)
        return None if dep is None else self._dict(dep)

    def deployment_available(self, ns: str, name: str) -> bool | None:
        dep = self.get_deployment(ns, name)
        if dep is None:
            return None
        st = dep.get("status") or {}
        want = (dep.get("spec") or {}).get("replicas", 1)
        return bool(st.get("observedGeneration", 0) >= dep["metadata"].get("generation", 0)
                    and st.get("availableReplicas", 0) >= want and st.get("updatedReplicas", 0) >= want)

    def _read(self, kind: str, fn: Callable[..., Any], ns: str, name: str) -> Any:
        """Read one object; a missing one is a NotFound that says which."""
        try:
            return self._call(fn, name, ns)
        except ApiException as e:
            if e.status == 404:
                raise NotFound(f"{kind} {ns}/{name} does not exist") from None
            raise

    def config_map_file(self, ns: str, name: str, key: str) -> bytes:
        cm = self._read("ConfigMap", self.core.read_namespaced_config_map, ns, name)
        if cm.data and key in cm.data:
            return str(cm.data[key]).encode()
        if cm.binary_data and key in cm.binary_data:
            return base64.b64decode(cm.binary_data[key])
        keys = sorted([*(cm.data or {}), *(cm.binary_data or {})])
        raise NotFound(f"ConfigMap {ns}/{name} has no key {key!r} (keys: {keys})")

    def secret_value(self, ns: str, name: str, key: str) -> str:
        return self.secret(ns, name, key)[0]

    def secret(self, ns: str, name: str, key: str) -> tuple[str, dict[str, str]]:
        """A Secret's value at `key` and the Secret's annotations (where its owner pins a token's host)."""
        s = self._read("Secret", self.core.read_namespaced_secret, ns, name)
        if not s.data or key not in s.data:
            raise NotFound(f"Secret {ns}/{name} has no key {key!r}")
        return base64.b64decode(s.data[key]).decode(), dict(s.metadata.annotations or {})

    def namespace_annotations(self, ns: str) -> dict[str, str] | None:
        """A namespace's annotations (where it opts in to staging), or None if it does not exist."""
        n = self._or_none(self.core.read_namespace, ns)
        return None if n is None else dict(n.metadata.annotations or {})

    def get_rollout(self, ns: str, name: str) -> dict[str, Any] | None:
        out: dict[str, Any] | None = self._or_none(self.custom.get_namespaced_custom_object, GROUP, VERSION, ns,
                                                   PLURAL, name)
        return out

    def list_all_rollouts(self) -> list[dict[str, Any]]:
        out = self._call(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        items: list[dict[str, Any]] = out.get("items", [])
        return items

    def annotate_rollout(self, ns: str, name: str, annotations: Mapping[str, str | None]) -> None:
        self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name,
                   {"metadata": {"annotations": dict(annotations)}})

    def get_route(self, ns: str, name: str) -> dict[str, Any] | None:
        """An HTTPRoute (Gateway API), or None if it does not exist or the cluster has no Gateway API."""
        out: dict[str, Any] | None = self._or_none(self.custom.get_namespaced_custom_object, *ROUTES[:2], ns,
                                                   ROUTES[2], name)
        return out

    def patch_route(self, ns: str, name: str, rules: list[dict[str, Any]], resource_version: str) -> None:
        """Set an HTTPRoute's rules (their backend weights); fails with 409 if the route changed since read."""
        self._call(self.custom.patch_namespaced_custom_object, *ROUTES[:2], ns, ROUTES[2], name,
                   {"metadata": {"resourceVersion": resource_version}, "spec": {"rules": rules}})

    def list_rollouts(self, ns: str) -> list[dict[str, Any]]:
        out = self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL)
        items: list[dict[str, Any]] = out.get("items", [])
        return items

    def nodes(self) -> list[Node]:
        """Nodes with what pods already request on each, for capacity planning."""
        used: dict[str, list[float]] = {}
        pods = self._call(self.core.list_pod_for_all_namespaces,
                          field_selector="status.phase!=Succeeded,status.phase!=Failed")
        for p in pods.items:
            node = p.spec.node_name
            if not node:
                continue
            mem, cpu = pod_requests(self._dict(p.spec))
            u = used.setdefault(node, [0.0, 0.0, 0.0])
            u[0] += mem
            u[1] += cpu
            u[2] += 1
        out = []
        for n in self._call(self.core.list_node).items:
            alloc = n.status.allocatable or {}
            u = used.get(n.metadata.name, [0.0, 0.0, 0.0])
            ready = any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
            out.append(Node(
                name=n.metadata.name, allocatable_memory_bytes=_mem(alloc.get("memory")),
                allocatable_cpu_millis=_cpu_millis(alloc.get("cpu")), requested_memory_bytes=u[0],
                requested_cpu_millis=u[1], labels=dict(n.metadata.labels or {}),
                schedulable=ready and not n.spec.unschedulable,
                max_pods=int(alloc["pods"]) if alloc.get("pods") else None, pods=int(u[2])))
        return out

    def pods(self, ns: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """The pods matching `selector`, as dicts (their status tells why one is not serving)."""
        out = self._call(self.core.list_namespaced_pod, ns,
                         label_selector=_selector(selector))
        return [self._dict(p) for p in out.items]

    def pod_usage(self, ns: str, selector: Mapping[str, str],
                  name: str | None = None) -> list[tuple[float, float]] | None:
        """(memory working set bytes, CPU cores) per pod matching `selector` (and named `name`, when
        given), from metrics.k8s.io; None when the cluster does not serve that API (no metrics-server,
        or it is unavailable)."""
        try:
            out = self._call(self.custom.list_namespaced_custom_object, "metrics.k8s.io", "v1beta1", ns, "pods",
                             label_selector=_selector(selector))
        except ApiException as e:
            if e.status in (404, 503):
                return None
            raise
        pods = []
        for item in out.get("items", []):
            if name is not None and (item.get("metadata") or {}).get("name") != name:
                continue
            usage = [c.get("usage") or {} for c in item.get("containers") or []]
            pods.append((sum(_mem(u.get("memory")) for u in usage),
                         sum(_cpu_millis(u.get("cpu")) for u in usage) / 1000))
        return pods

    # --- writes --------------------------------------------------------------------
    def _api(self, kind: str) -> tuple[Any, str]:
        if kind == "Deployment":
            return self.apps, "deployment"
        if kind == "Service":
            return self.core, "service"
        if kind == "ConfigMap":
            return self.core, "config_map"
        raise ValueError(f"the operator writes no {kind}")

    def _owned(self, kind: str, ns: str, name: str, uid: str) -> dict[str, Any] | None:
        """The object if it exists, after checking it is this rollout's; NotOwned if it is someone else's."""
        api, snake = self._api(kind)
        found = self._or_none(getattr(api, f"read_namespaced_{snake}"), name, ns)
        if found is None:
            return None
        obj = self._dict(found)
        if not owned_by(obj.get("metadata") or {}, uid):
            raise NotOwned(f"{kind} {ns}/{name} already exists and was not created by this rollout; "
                           "nothing was changed")
        return obj

    def apply(self, obj: dict[str, Any], uid: str) -> None:
        """Create, or patch an object this rollout created; never patch anyone else's."""
        ns, name, kind = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["kind"]
        api, snake = self._api(kind)
        try:
            self._call(getattr(api, f"create_namespaced_{snake}"), ns, obj)
            return
        except ApiException as e:
            if e.status != 409:
                raise
        existing = self._owned(kind, ns, name, uid)
        if existing is None:  # deleted between the two calls: the next reconcile creates it
            return
        body = {k: obj[k] for k in ("spec", "data", "binaryData") if k in obj}  # a ConfigMap has no spec
        meta = {"labels": obj["metadata"]["labels"], "resourceVersion": existing["metadata"]["resourceVersion"]}
        if obj["metadata"].get("annotations"):  # merged: the annotations others set stay
            meta["annotations"] = obj["metadata"]["annotations"]
        self._call(getattr(api, f"patch_namespaced_{snake}"), name, ns, {"metadata": meta, **body})

    def delete(self, kind: str, ns: str, name: str, uid: str) -> bool:
        """Delete an object only if this rollout created it (and only that very object); False if it is not ours."""
        api, snake = self._api(kind)
        try:
            obj = self._owned(kind, ns, name, uid)
        except NotOwned:
            return False
        if obj is None:
            return True
        opts = client.V1DeleteOptions(propagation_policy="Background",
                                      preconditions=client.V1Preconditions(uid=obj["metadata"]["uid"]))
        try:
            self._call(getattr(api, f"delete_namespaced_{snake}"), name, ns, body=opts)
        except ApiException as e:
            if e.status not in (404, 409):  # gone already, or replaced by another object since the read
                raise
        return True

    def replace_template(self, ns: str, name: str, template: Mapping[str, Any] | None, uid: str,
                         replicas: int | None = None) -> None:
        """Set a Deployment's whole pod template (a JSON patch: nothing of the old one survives) and/or
        its replicas, in one write.

        The `test` of the UID makes the patch fail if the target was deleted and re-created since it was read.
        """
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": uid}]
        if template is not None:
            ops.append({"op": "replace", "path": "/spec/template", "value": dict(template)})
        if replicas is not None:
            ops.append({"op": "replace", "path": "/spec/replicas", "value": replicas})
        self._call(self.apps.patch_namespaced_deployment, name, ns, ops)

    def patch_status(self, ns: str, name: str, status: Mapping[str, Any]) -> None:
        self._call(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, ns, PLURAL, name,
                   {"status": dict(status)})

    def event(self, rollout: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
        m = rollout["metadata"]
        now = datetime.now(UTC)
        body = {
            "metadata": {"generateName": f"{m['name']}.", "namespace": m["namespace"]},
            "involvedObject": {"apiVersion": rollout["apiVersion"], "kind": rollout["kind"], "name": m["name"],
                               "namespace": m["namespace"], "uid": m["uid"]},
            "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
            "source": {"component": "modelrollout"}, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        with contextlib.suppress(ApiException):  # an event is a courtesy; never fail a rollout over one
            self._call(self.core.create_namespaced_event, m["namespace"], body)
