"""The operator (as `kopf run` runs it) against the real control plane, with real model servers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import skops.io as sio
import yaml
from sklearn.datasets import load_breast_cancer
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

from tests.conftest import ROOT, Cluster, MlflowServer, S3Server
from tests.integration.conftest import _wait, free_port

REAL_NODE_NS = "real-"  # prefix of the namespaces tests on the real node use

BIG_NODE = """
apiVersion: v1
kind: Node
metadata:
  name: kwok-e2e
  annotations: {node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake,
                metrics.k8s.io/resource-metrics-path: /metrics/nodes/kwok-e2e/metrics/resource}
  labels: {kubernetes.io/hostname: kwok-e2e, type: kwok, pool: e2e}
status:
  allocatable: {cpu: "32", memory: 32Gi, pods: "500"}
  capacity: {cpu: "32", memory: 32Gi, pods: "500"}
"""


@dataclass(frozen=True)
class Models:
    good: Path  # logistic regression: better than production
    production: Path  # a depth-2 tree
    bad: Path  # always predicts the majority class
    holdout_csv: str


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    d = tmp_path_factory.mktemp("e2e-models")
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)
    sio.dump(LogisticRegression(max_iter=5000).fit(Xtr, ytr), d / "good.skops")
    sio.dump(DecisionTreeClassifier(max_depth=2, random_state=0).fit(Xtr, ytr), d / "production.skops")
    sio.dump(DummyClassifier(strategy="constant", constant=0).fit(Xtr, ytr), d / "bad.skops")
    df = pd.DataFrame(Xte, columns=[f"x{i}" for i in range(30)])
    df["label"] = yte
    return Models(d / "good.skops", d / "production.skops", d / "bad.skops", df.to_csv(index=False))


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    d = tmp_path_factory.mktemp("prometheus")
    prom = Prometheus(d, free_port())
    yield prom
    prom.stop()


@dataclass
class Prometheus:
    """Debian's Prometheus, scraping the targets a test gives it (reloaded on change)."""

    folder: Path
    port: int
    targets: list[str] = field(default_factory=list)
    rules: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    binary: str = "prometheus"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def configure(self, targets: list[str], rules: str | None = None,
                  namespaced: tuple[str, list[str]] | None = None) -> None:
        """Scrape `targets`, and `namespaced` = (namespace, targets) with that `namespace` label, as a
        ServiceMonitor's relabelling adds it in a cluster (canary gates must select one namespace)."""
        self.targets, self.rules = targets, rules
        static: list[dict[str, Any]] = [{"targets": targets}] if targets else []
        if namespaced:
            static.append({"targets": namespaced[1], "labels": {"namespace": namespaced[0]}})
        self.run([{"job_name": "models", "static_configs": static}], rules)

    def run(self, scrape_configs: list[dict[str, Any]], rules: str | None) -> None:
        """(Re)start with these scrape configs and rules, and no series left from an earlier test."""
        cfg: dict[str, Any] = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                               "scrape_configs": scrape_configs}
        if rules:
            (self.folder / "rules.yml").write_text(rules)
            cfg["rule_files"] = [str(self.folder / "rules.yml")]
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.stop()
        shutil.rmtree(self.folder / "data", ignore_errors=True)
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.folder / 'data'}", f"--web.listen-address={self.host}:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(self.folder / "log", "wb"))  # noqa: SIM115
        import urllib.request
        for _ in range(100):
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError((self.folder / "log").read_text()[-2000:])

    def query(self, q: str) -> list[dict[str, Any]]:
        import urllib.parse
        import urllib.request
        with urllib.request.urlopen(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": q})) as r:
            return list(json.loads(r.read())["data"]["result"])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@dataclass
class Operator:
    cluster: Cluster
    addresses: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    holdout_port: int = 0  # the one local port the operator may fetch hold-out URLs from
    pvc_root: Path | None = None

    def restart(self) -> None:
        self.stop()
        self.start(self.env)

    def map(self, mapping: dict[str, str]) -> None:
        current = json.loads(self.addresses.read_text()) if self.addresses.exists() else {}
        current.update(mapping)
        self.addresses.write_text(json.dumps(current))

    def serve(self, model: Path, mode: str | None = None) -> str:
        port = free_port()
        if mode is None:
            cmd = [sys.executable, "-m", "modelrollout.cli", "serve", str(model), "--name", "m", "--port", str(port)]
        else:
            cmd = [sys.executable, str(ROOT / "tests/integration/servers.py"), str(model), str(port), mode]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.servers.append(p)
        url = f"http://127.0.0.1:{port}"
        _wait(url, p)
        return url

    def start(self, env: dict[str, str], all_namespaces: bool = False) -> None:
        """Run as admin in every namespace but the real node's, where the operator the chart installed
        acts (a pattern makes kopf watch namespaces, which the chart's RBAC does not grant: a test
        that runs it under the chart's ServiceAccount asks for `all_namespaces`)."""
        assert self.log is not None
        self.env = env
        scope = "--all-namespaces" if all_namespaces else f"--namespace=!{REAL_NODE_NS}*"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "-m", "modelrollout.handlers", scope, "--standalone"],
            env={**self.cluster.env(), **env}, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())


@pytest.fixture(scope="session")
def operator(cluster: Cluster, prometheus: Prometheus, mlflow_server: MlflowServer, s3_server: S3Server,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    d = tmp_path_factory.mktemp("operator")
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    # Gateway API (standard channel, from its Go module): HTTPRoutes for canary traffic routing
    cluster.kubectl("apply", "--server-side", "-f", f"{cluster.bindir}/gateway-api-crds/")
    cluster.kubectl("wait", "--for=condition=Established", "crd/modelrollouts.modelrollout.dev",
                    "crd/httproutes.gateway.networking.k8s.io", "--timeout=60s")
    cluster.kubectl("apply", "-f", "-", input=BIG_NODE)
    op = Operator(cluster, d / "addresses.json", free_port(), log=d / "operator.log", holdout_port=free_port(),
                  pvc_root=d / "pvc")
    op.addresses.write_text("{}")
    op.start({"MODELROLLOUT_SERVICE_ADDRESSES_FILE": str(op.addresses),
              "MODELROLLOUT_HOLDOUT_URL_HOSTS": f"127.0.0.1:{op.holdout_port},127.0.0.1:{s3_server.port}",
              "MODELROLLOUT_PVC_ROOT": str(op.pvc_root), "MODELROLLOUT_HOLDOUT_MEMORY_MIB": "384",
              "MODELROLLOUT_METRICS_PORT": str(op.metrics_port), "MODELROLLOUT_RECONCILE_INTERVAL": "1",
              "MODELROLLOUT_PROMETHEUS_URL": prometheus.url, "MODELROLLOUT_MLFLOW_TRACKING_URI": mlflow_server.url,
              "MODELROLLOUT_MAX_CONCURRENT_EVALUATIONS": "2"})
    try:
        yield op
    finally:
        op.stop()
        for p in op.servers:
            p.terminate()
        if op.log and op.log.exists():
            print(op.log.read_text()[-5000:])


TARGET = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeSelector: {{pool: e2e}}
      containers:
        - name: server
          image: registry.example/churn:7
          env: [{{name: MODEL_URI, value: "s3://models/churn/7"}}]
          ports: [{{containerPort: 8080}}]
          resources: {{requests: {{memory: 256Mi, cpu: 100m}}}}
"""


@dataclass
class Scenario:
    """One namespace with a production Deployment, a hold-out ConfigMap and helpers."""

    cluster: Cluster
    op: Operator
    ns: str
    target: str = "churn"

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.cluster.kubectl("-n", self.ns, "get", *args, "-o", "json").stdout))

    def template(self) -> dict[str, Any]:
        return dict(self.get("deployment", self.target)["spec"]["template"])

    def rollout(self, name: str, candidate: str, baseline: str, gates: list[dict[str, Any]],
                **spec: Any) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(self.body(name, candidate, baseline, gates,
                                                                                 **spec)))

    def body(self, name: str, candidate: str, baseline: str, gates: list[dict[str, Any]],
             **spec: Any) -> dict[str, Any]:
        """The rollout's manifest (not applied), its staging Services mapped to these servers."""
        self.op.map({f"{self.ns}/{name}-candidate": candidate, f"{self.ns}/{name}-baseline": baseline})
        return {"apiVersion": "modelrollout.dev/v1alpha1", "kind": "ModelRollout",
                "metadata": {"name": name, "namespace": self.ns},
                "spec": {"targetRef": {"name": self.target}, "task": "binary-classification",
                         "candidate": {"image": "registry.example/churn:8",
                                       "env": [{"name": "MODEL_URI", "value": "s3://models/churn/8"}]},
                         "serving": {"modelName": "m", "timeout": "2s"},
                         "staging": {"readyTimeout": "60s"},
                         "holdout": {"configMapRef": {"name": "holdout", "key": "holdout.csv"}, "labelColumn": "label"},
                         "load": {"duration": "1s", "warmup": "200ms", "batchSizes": [1, 8], "leakRequests": 3000},
                         "quality": {"resamples": 200}, "gates": gates, **spec}}

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get("modelrollout", name).get("status") or {})

    def wait_phase(self, name: str, phases: set[str], timeout: float = 180) -> dict[str, Any]:
        end = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < end:
            st = self.status(name)
            if st.get("phase") in phases:
                return st
            time.sleep(0.5)
        raise AssertionError(f"{name} never reached {phases}; status: {json.dumps(st)[:2000]}")

    def annotate(self, name: str, key: str, value: str = "true") -> None:
        self.cluster.kubectl("-n", self.ns, "annotate", "--overwrite", "modelrollout", name, f"{key}={value}")

    def own_target(self, name: str) -> Scenario:
        """The same namespace and operator with a production Deployment `t-<name>` of its own, so rollouts
        of several cases run side by side instead of queueing for one target."""
        self.cluster.kubectl("apply", "-f", "-", input=TARGET.format(name=f"t-{name}", ns=self.ns))
        return Scenario(self.cluster, self.op, self.ns, target=f"t-{name}")

    def hold_staging(self, on: bool) -> None:
        """Taint the e2e node so no staging pod is scheduled (Staging holds), or lift the taint.

        Holding waits until a probe pod is refused for the taint: the scheduler acts on its own cache
        of nodes, which can lag behind the API (in one CI run two rollouts staged under the taint)."""
        k = self.cluster.kubectl
        if not on:
            k("taint", "nodes", "kwok-e2e", "hold-", check=False)
            return
        k("taint", "nodes", "kwok-e2e", "hold=staging:NoSchedule", "--overwrite")
        probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hold-probe", "namespace": self.ns},
                 "spec": {"nodeSelector": {"pool": "e2e"},
                          "containers": [{"name": "c", "image": "registry.example/p"}]}}
        end, seen = time.monotonic() + 60, ""
        while time.monotonic() < end:
            k("apply", "-f", "-", input=json.dumps(probe))
            for _ in range(20):
                pod = self.get("pod", "hold-probe")
                seen = json.dumps(pod.get("status", {}).get("conditions", []))[:400]
                if pod["spec"].get("nodeName") or "taint" in seen:
                    break
                time.sleep(0.25)
            k("-n", self.ns, "delete", "pod", "hold-probe", "--grace-period=0", "--force", "--wait=true",
              check=False)
            if not pod["spec"].get("nodeName") and "taint" in seen:
                return
        raise AssertionError(f"the scheduler never refused a pod for the hold taint: {seen}")

    def staging_objects(self, name: str) -> list[str]:
        out = self.cluster.kubectl("-n", self.ns, "get", "deploy,svc", "-l", f"modelrollout.dev/rollout={name}",
                                   "-o", "name").stdout
        return out.split()

    def assert_invariant(self, name: str, before: dict[str, Any]) -> None:
        """Production never carries a template whose gates did not all pass."""
        st = self.status(name)
        now_t = self.template()
        if now_t == before:
            return
        assert st.get("phase") == "Promoted", f"production changed but the rollout is {st.get('phase')}"
        blocking = [g for g in st.get("gates", []) if not g.get("dryRun")]
        assert blocking and all(g["verdict"] == "Pass" for g in blocking), st.get("gates")
        assert now_t["spec"]["containers"][0]["image"] == "registry.example/churn:8"


@pytest.fixture
def scenario(cluster: Cluster, operator: Operator, models: Models) -> Iterator[Scenario]:
    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("apply", "-f", "-", input=TARGET.format(name="churn", ns=ns))
    cluster.kubectl("-n", ns, "create", "configmap", "holdout", "--from-file=holdout.csv=/dev/stdin",
                    input=models.holdout_csv)
    cluster.kubectl("-n", ns, "rollout", "status", "deployment/churn", "--timeout=60s")
    yield Scenario(cluster, operator, ns)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    cluster.kubectl("taint", "nodes", "kwok-e2e", "hold-", check=False)  # a test that held staging may have failed


ServeFn = Callable[[Path, str | None], str]
