"""The test control plane is real Kubernetes: scheduling, status, RBAC and garbage collection."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Cluster

pytestmark = pytest.mark.e2e

NODE = """
apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations: {{node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}}
  labels: {{kubernetes.io/hostname: {name}, type: kwok}}
status:
  allocatable: {{cpu: "4", memory: 8Gi, pods: "110"}}
  capacity: {{cpu: "4", memory: 8Gi, pods: "110"}}
"""


def wait(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def get(cluster: Cluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", *args, "-o", "json").stdout))


@pytest.fixture(scope="module")
def node(cluster: Cluster) -> str:
    name = "kwok-node-harness"
    cluster.kubectl("apply", "-f", "-", input=NODE.format(name=name))
    return name


def test_server_reports_the_stamped_kubernetes_version(cluster: Cluster) -> None:
    v = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["gitVersion"] == "v1.35.4"
    assert v["clientVersion"]["gitVersion"] == "v1.35.4"


def test_node_with_memory_becomes_ready(cluster: Cluster, node: str) -> None:
    def ready() -> bool:
        conds = get(cluster, "node", node)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    wait("node Ready", ready)
    assert get(cluster, "node", node)["status"]["allocatable"]["memory"] == "8Gi"


def test_deployment_becomes_available(cluster: Cluster, node: str) -> None:
    ns = f"h-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("-n", ns, "create", "deployment", "web", "--image=registry.example/web:1", "--replicas=2")
    cluster.kubectl("-n", ns, "rollout", "status", "deployment/web", "--timeout=90s")
    dep = get(cluster, "-n", ns, "deployment", "web")
    assert dep["status"]["availableReplicas"] == 2
    assert any(c["type"] == "Available" and c["status"] == "True" for c in dep["status"]["conditions"])
    pods = get(cluster, "-n", ns, "pods")["items"]
    assert len(pods) == 2
    nodes = {n["metadata"]["name"] for n in get(cluster, "nodes")["items"]}
    assert all(p["status"]["phase"] == "Running" and p["spec"]["nodeName"] in nodes for p in pods)
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.harness.modelrollout.dev}
spec:
  group: harness.modelrollout.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, properties: {size: {type: integer, minimum: 1}}}
            status: {type: object, properties: {phase: {type: string}}}
"""


def test_crd_round_trips_with_status_subresource(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", "-", input=CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.harness.modelrollout.dev", "--timeout=60s")
    w1 = f"w-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("apply", "-f", "-", input="apiVersion: harness.modelrollout.dev/v1\nkind: Widget\n"
                    f"metadata: {{name: {w1}, namespace: default}}\nspec: {{size: 3}}\n")
    bad = cluster.kubectl("apply", "-f", "-", check=False, input="apiVersion: harness.modelrollout.dev/v1\n"
                          "kind: Widget\nmetadata: {name: w2, namespace: default}\nspec: {size: 0}\n")
    assert bad.returncode != 0 and "spec.size" in bad.stderr
    # status is only writable through the subresource
    cluster.kubectl("patch", "widget", w1, "--type=merge", "-p", '{"status": {"phase": "Ignored"}}')
    assert "status" not in get(cluster, "widget", w1)
    cluster.kubectl("patch", "widget", w1, "--subresource=status", "--type=merge", "-p",
                    '{"status": {"phase": "Done"}}')
    w = get(cluster, "widget", w1)
    assert w["status"]["phase"] == "Done" and w["spec"]["size"] == 3


def test_service_account_without_role_is_denied(cluster: Cluster) -> None:
    ns = f"rbac-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("create", "serviceaccount", "norole", "-n", ns)
    out = cluster.kubectl("get", "pods", "-n", ns, f"--as=system:serviceaccount:{ns}:norole", check=False)
    assert out.returncode != 0 and "Forbidden" in out.stderr
    cluster.kubectl("create", "role", "pod-reader", "-n", ns, "--verb=get,list", "--resource=pods")
    cluster.kubectl("create", "rolebinding", "norole-reads", "-n", ns, "--role=pod-reader",
                    f"--serviceaccount={ns}:norole")
    as_sa = ["get", "pods", "-n", ns, f"--as=system:serviceaccount:{ns}:norole"]
    wait("RBAC grant", lambda: cluster.kubectl(*as_sa, check=False).returncode == 0)


def test_deleting_owner_garbage_collects_dependents(cluster: Cluster) -> None:
    cluster.kubectl("delete", "configmap", "owner", "dependent", "-n", "default", "--ignore-not-found")
    cluster.kubectl("create", "configmap", "owner", "-n", "default")
    uid = get(cluster, "configmap", "owner", "-n", "default")["metadata"]["uid"]
    cluster.kubectl("apply", "-f", "-", input=f"""
apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent
  namespace: default
  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}}}]
""")
    cluster.kubectl("delete", "configmap", "owner", "-n", "default")
    wait("garbage collection", lambda: cluster.kubectl("get", "configmap", "dependent", "-n", "default",
                                                       check=False).returncode != 0)
