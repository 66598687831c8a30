"""The real node's fixtures: the image, `helm install`, Prometheus with Kubernetes service discovery.

Everything here runs as a user would run it: the chart's operator pod, model servers as pods of the
project's image, models shipped to pods in a ConfigMap volume, Prometheus finding pods through the
API server. Namespaces start with `real-`, which the session's local operator leaves alone.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Cluster
from tests.e2e.conftest import REAL_NODE_NS, Models, Prometheus
from tests.integration.conftest import free_port

NODE_IP = "10.244.0.1"  # the node's bridge address (hack/node.sh): pods reach the host here
OPERATOR_NS = f"{REAL_NODE_NS}system"
WATCHED = [f"{REAL_NODE_NS}user", f"{REAL_NODE_NS}faults"]
ON_NODE = {"nodeSelector": {"modelrollout.dev/real-node": "true"},
           "tolerations": [{"key": "modelrollout.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]}


def discovering(cluster: Cluster) -> list[dict[str, Any]]:
    """Scrape configs that find the operator pod and every model-server pod through the API server."""
    kc = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    server, user = kc["clusters"][0]["cluster"], kc["users"][0]["user"]
    sd = [{"role": "pod", "api_server": server["server"],
           "tls_config": {"ca_file": server["certificate-authority"], "cert_file": user["client-certificate"],
                          "key_file": user["client-key"]}}]
    running = {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"}
    pod = {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}
    return [
        # the operator labels its own series with the rollout's namespace: keep them
        {"job_name": "modelrollout-operator", "honor_labels": True, "kubernetes_sd_configs": sd,
         "relabel_configs": [running, {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name",
                                                         "__meta_kubernetes_pod_container_port_name"],
                                       "regex": "modelrollout;metrics", "action": "keep"}, pod]},
        # model servers: every pod port named http, labelled with its namespace and pod
        {"job_name": "model-servers", "kubernetes_sd_configs": sd,
         "relabel_configs": [running, {"source_labels": ["__meta_kubernetes_pod_container_port_name"],
                                       "regex": "http", "action": "keep"},
                             {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}, pod]}]


@dataclass(frozen=True)
class RealNode:
    cluster: Cluster
    image: str
    prometheus: Prometheus  # built with Kubernetes discovery (Debian's has none), reachable from pods

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input, check=check)

    def apply(self, objs: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))

    def get(self, ns: str, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("-n", ns, "get", *args, "-o", "json").stdout))

    def models(self, ns: str, models: Models, holdout_csv: str) -> None:
        """The models as a user with small models would ship them: a ConfigMap mounted into the pods
        (with the fault-injecting server the fault tests run as a 'candidate' program)."""
        self.kubectl("create", "namespace", ns, check=False)
        files = {"production.skops": models.production, "good.skops": models.good, "bad.skops": models.bad,
                 "servers.py": ROOT / "tests/integration/servers.py"}
        self.kubectl("-n", ns, "create", "configmap", "models", *[f"--from-file={k}={v}" for k, v in files.items()])
        self.kubectl("-n", ns, "create", "configmap", "holdout", "--from-file=holdout.csv=/dev/stdin",
                     input=holdout_csv)

    def production(self, ns: str, name: str, replicas: int, memory_limit: str = "400Mi") -> list[dict[str, Any]]:
        """A Deployment of `modelrollout serve` with model 1, and its Service."""
        labels = {"app": name}
        container = {
            "name": "server", "image": self.image, "imagePullPolicy": "Never",
            "command": ["python3"],
            "args": ["-m", "modelrollout.cli", "serve", "/models/production.skops", "--host", "0.0.0.0",
                     "--port", "8080", "--name", "m"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}, "periodSeconds": 2},
            "resources": {"requests": {"memory": "200Mi", "cpu": "50m"}, "limits": {"memory": memory_limit}},
            "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}]}
        return [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
                 "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                          "template": {"metadata": {"labels": labels},
                                       "spec": {**ON_NODE, "containers": [container],
                                                "volumes": [{"name": "models",
                                                             "configMap": {"name": "models"}}]}}}},
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                 "spec": {"selector": labels, "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}]

    def rollout(self, ns: str, name: str, target: str, args: list[str], **spec: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "modelrollout.dev/v1alpha1", "kind": "ModelRollout",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"targetRef": {"name": target}, "task": "binary-classification",
                     "candidate": {"args": args}, "serving": {"modelName": "m", "timeout": "5s"},
                     "staging": {"readyTimeout": "120s"},
                     "holdout": {"configMapRef": {"name": "holdout", "key": "holdout.csv"}, "labelColumn": "label"},
                     "load": {"duration": "2s", "warmup": "500ms", "batchSizes": [1, 8], "concurrency": 4,
                              "leakRequests": 2000},
                     "quality": {"resamples": 200},
                     "gates": [{"metric": "f1", "min": 0.8}, {"metric": "f1", "maxDrop": 0.02},
                               {"metric": "latency_p99_ms", "max": 5000}, {"metric": "replicas_fit", "min": 1}],
                     **spec}}
        self.apply([body])
        return body

    def wait_phase(self, ns: str, name: str, phases: set[str], timeout: float = 300) -> dict[str, Any]:
        end = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < end:
            st = dict(self.get(ns, "modelrollout", name).get("status") or {})
            if st.get("phase") in phases:
                return st
            time.sleep(1)
        raise AssertionError(f"{ns}/{name} never reached {phases}; status: {json.dumps(st)[:3000]}\n"
                             f"{self.kubectl('-n', ns, 'get', 'pods', '-o', 'wide', check=False).stdout}\n"
                             f"{self.operator_log()[-3000:]}")

    def operator_log(self) -> str:
        return self.kubectl("-n", OPERATOR_NS, "logs", "deploy/modelrollout", "--tail=200", check=False).stdout

    def ready(self, ns: str, deployment: str) -> None:
        self.kubectl("-n", ns, "rollout", "status", f"deployment/{deployment}", "--timeout=180s")

    def pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        """The pods matching `selector` that are not on their way out."""
        return [p for p in self.get(ns, "pods", "-l", selector)["items"] if not p["metadata"].get("deletionTimestamp")]


def chart_rules(cluster: Cluster) -> str:
    """The chart's alert rules, as the PrometheusRule it installs would carry them."""
    out = subprocess.run([f"{cluster.bindir}/helm", "template", "modelrollout", str(ROOT / "charts/modelrollout"),
                          "--kube-version", "1.35.0", "--set", "prometheusRule.enabled=true",
                          "--show-only", "templates/prometheusrule.yaml"],
                         capture_output=True, text=True, check=True).stdout
    return yaml.safe_dump(yaml.safe_load(out)["spec"])


def helm_install(cluster: Cluster, image: str, prometheus_url: str) -> None:
    repo, tag = image.rsplit(":", 1)
    values = {"image": {"repository": repo, "tag": tag, "pullPolicy": "Never"}, **ON_NODE,
              "operator": {"prometheusUrl": prometheus_url, "reconcileInterval": 1, "metricsApiWait": 40},
              "rbac": {"namespaces": WATCHED}}
    for ns in WATCHED:
        cluster.kubectl("create", "namespace", ns, check=False)
    r = subprocess.run([f"{cluster.bindir}/helm", "upgrade", "--install", "modelrollout",
                        str(ROOT / "charts/modelrollout"), "--namespace", OPERATOR_NS, "--create-namespace",
                        "--values", "-", "--wait", "--timeout", "240s"],
                       input=yaml.safe_dump(values), capture_output=True, text=True, env=cluster.env(), timeout=300)
    assert r.returncode == 0, f"helm install: {r.stderr[-2000:]}"


@pytest.fixture(scope="session", name="real_node")
def real_node_fixture(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    image = cluster.real_node()
    cluster.metrics_api(True)  # metrics-server now scrapes the real kubelet's /metrics/resource too
    prom = Prometheus(tmp_path_factory.mktemp("cluster-prometheus"), free_port(), host=NODE_IP,
                      binary=f"{cluster.bindir}/prometheus")
    prom.run(discovering(cluster), chart_rules(cluster))
    node = RealNode(cluster, image, prom)
    try:
        helm_install(cluster, image, prom.url)
        yield node
    finally:
        print(node.operator_log()[-5000:])
        prom.stop()
        for ns in [*WATCHED, OPERATOR_NS]:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.metrics_api(False)
