"""A hostile or careless tenant, on the real API server and the real operator.

Each manifest of the table is applied with `kubectl apply` by a tenant of one namespace. The API server
rejects it naming the field, or the operator ends it Failed/RolledBack with the reason the table states.
After the whole table: every production Deployment (the tenant's and another tenant's) has the same spec
and generation as before (the one target a canary step reached was scaled down and back: same spec and
template revision), nothing outside the rollout's reach was created, patched or deleted, the
operator is still the same process, and its memory (with the hold-out parsing child) stayed under the
chart's 1 GiB limit while it read a Parquet bomb and a 700 KiB slice cell.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import Cluster
from tests.e2e.conftest import TARGET, Models, Operator, Prometheus

pytestmark = pytest.mark.e2e
TERMINAL = {"Promoted", "RolledBack", "Failed"}
SECRET_WORD = "hunter2-do-not-echo"
CHART_LIMIT = 2**30
PIN = "0" * 63 + "a"  # a pinned hold-out digest no file has


@dataclass
class Case:
    name: str
    expect: str  # "rejected" (by the API server) or a terminal phase
    words: str  # in the API server's error, or in status.reason + " " + status.message
    spec: dict[str, Any] = field(default_factory=dict)  # merged into the base spec
    meta: dict[str, Any] = field(default_factory=dict)
    servers: tuple[str | None, str | None] | None = None  # (candidate mode, baseline mode) when it evaluates
    never: tuple[str, ...] = (SECRET_WORD, "root:x:0")  # never in any message


def _cases(tenant: str, victim: str, port: int) -> list[Case]:
    url = f"http://127.0.0.1:{port}"
    pvc = {"configMapRef": None, "labelColumn": "label"}
    return [
        # rejected by the API server, naming the field
        Case("web.v2", "rejected", "metadata.name must be a DNS-1035 label"),
        Case("a" * 54, "rejected", "metadata.name must be a DNS-1035 label of at most 53"),
        Case("web", "rejected", "spec.targetRef.name must differ", {"targetRef": {"name": "web-candidate"}}),
        Case("bad-ns", "rejected", "spec.staging.namespace", {"staging": {"namespace": "Other_NS"}}),
        Case("long-load", "rejected", "spec.load.duration: Invalid value", {"load": {"duration": "90000h"}}),
        Case("long-eval", "rejected", "spec.staging.evaluationTimeout", {"staging": {"evaluationTimeout": "7h"}}),
        Case("leaky", "rejected", "spec.load.leakRequests", {"load": {"leakRequests": 10**9}}),
        Case("big-size", "rejected", "spec.holdout.maxSize", {"holdout": {"maxSize": "1Ti"}}),
        Case("long-pause", "rejected", "pause",
             {"promotion": {"canary": {"steps": [{"weight": 10, "pause": "100h"}]}}}),
        # refused by the operator before anything is created
        Case("other-ns", "Failed", "StagingNamespaceNotAllowed", {"staging": {"namespace": victim}}),
        Case("no-ns", "Failed", "StagingNamespaceNotAllowed", {"staging": {"namespace": f"{victim}-missing"}}),
        Case("squat", "Failed", f"NotOwned Deployment {tenant}/squat-candidate already exists"),
        Case("metadata-ip", "Failed", "HoldoutRefused",
             {"holdout": {**pvc, "url": {"url": "http://169.254.169.254/latest/meta-data/iam"}}}),
        Case("unlisted-host", "Failed", "HoldoutRefused",
             {"holdout": {**pvc, "url": {"url": f"http://127.0.0.2:{port}/h.csv"}}}),
        Case("token-theft", "Failed", "HoldoutRefused",
             {"holdout": {**pvc, "url": {"url": f"{url}/h.csv", "secretRef": {"name": "tok", "key": "t"}}}}),
        Case("pvc-escape", "Failed", "HoldoutRefused",
             {"holdout": {**pvc, "pvc": {"claimName": "data", "path": "../../../../../../etc/passwd"}}}),
        Case("pvc-other-tenant", "rejected", "spec.holdout.pvc.claimName",
             {"holdout": {**pvc, "pvc": {"claimName": f"../{victim}/data", "path": "h.csv"}}}),
        Case("pvc-device", "Failed", "HoldoutRefused",
             {"holdout": {**pvc, "pvc": {"claimName": "data", "path": "zero.csv"}}}),
        Case("url-echo", "Failed", "Holdout",
             {"holdout": {**pvc, "labelColumn": "nope", "url": {"url": f"{url}/secret.csv"}}}),
        Case("parquet-bomb", "Failed", "HoldoutTooLarge",
             {"holdout": {"configMapRef": {"name": "bomb", "key": "h.parquet"}}}),
        Case("pinned", "Failed", f"HoldoutChanged hold-out: configmap/holdout/holdout.csv: spec.holdout.sha256 pins "
             f"{PIN}, but the data read has sha256 ", {"holdout": {"sha256": PIN.upper()}}),
        Case("fat-cell", "Failed", "region",
             {"holdout": {"configMapRef": {"name": "fatcell", "key": "h.csv"}, "sliceColumns": ["region"]}}),
        # refused during the evaluation or the canary: production restored, no loop
        Case("bad-metrics", "RolledBack", "EvaluationFailed", {"targetRef": {"name": "m1"}},
             servers=("badmetrics", None)),
        Case("zero-metrics", "RolledBack", "EvaluationFailed", {"targetRef": {"name": "m2"}},
             servers=("zerometrics", None)),
        Case("squat-canary", "Failed", f"NotOwned Deployment {tenant}/churn-canary already exists",
             {"promotion": {"canary": {"steps": [{"weight": 50, "pause": "1s"}]}}}, servers=(None, None)),
        Case("cross-tenant-query", "RolledBack", 'CanaryGateFailed', {
            "targetRef": {"name": "m3"}, "promotion": {"canary": {"steps": [{"weight": 50, "pause": "1s"}]},
                          "gates": [{"name": "peek", "query": f'sum(up{{namespace="{victim}"}})', "max": 1e9}]}},
            servers=(None, None)),
    ]


def _body(ns: str, case: Case) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "targetRef": {"name": "churn"}, "task": "binary-classification",
        "candidate": {"image": "registry.example/churn:8"},
        "serving": {"modelName": "m", "timeout": "2s"}, "staging": {"readyTimeout": "60s"},
        "holdout": {"configMapRef": {"name": "holdout", "key": "holdout.csv"}, "labelColumn": "label"},
        "load": {"duration": "1s", "warmup": "200ms", "batchSizes": [1], "leakRequests": 500},
        "quality": {"resamples": 50}, "gates": [{"metric": "f1", "min": 0.5}]}
    for key, value in case.spec.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            merged = {**spec[key], **value}
            spec[key] = {k: v for k, v in merged.items() if v is not None}
        else:
            spec[key] = value
    return {"apiVersion": "modelrollout.dev/v1alpha1", "kind": "ModelRollout",
            "metadata": {"name": case.name, "namespace": ns, **case.meta}, "spec": spec}


class _Holdouts(BaseHTTPRequestHandler):
    """The one hold-out host the operator may fetch from; it records every Authorization header."""

    files: ClassVar[dict[str, bytes]] = {}
    auth: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.auth.append(self.headers.get("Authorization") or "")
        data = self.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def holdout_host(operator: Operator) -> Iterator[type[_Holdouts]]:
    server = ThreadingHTTPServer(("127.0.0.1", operator.holdout_port), _Holdouts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield _Holdouts
    server.shutdown()
    server.server_close()


class Peak:
    """The operator's resident memory with its children (the hold-out parser), sampled every 50 ms."""

    def __init__(self, pid: int):
        self.proc, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                continue

    def done(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


def _parquet_bomb() -> bytes:
    """Under 1 MiB on disk (it fits a ConfigMap), 4 GB of strings once decoded: Parquet's dictionary encoding
    stores one long string per row group; written in batches so this test never holds the 4 GB itself."""
    batch = pa.table({"label": pa.array(np.arange(20_000) % 2), "x0": pa.array(["x" * 2000] * 20_000)})
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, batch.schema, compression="zstd") as w:
        for _ in range(80):
            w.write_table(batch)
    return buf.getvalue()


def _snapshot(cluster: Cluster, *namespaces: str) -> dict[str, Any]:
    """Every Deployment, Service, ConfigMap and Secret of these namespaces: uid, generation and spec/data."""
    out: dict[str, Any] = {}
    for ns in namespaces:
        items = json.loads(cluster.kubectl("-n", ns, "get", "deploy,svc,cm,secret", "-o", "json").stdout)["items"]
        for o in items:
            m = o["metadata"]
            revision = (m.get("annotations") or {}).get("deployment.kubernetes.io/revision")
            out[f"{o['kind']}/{ns}/{m['name']}"] = (m["uid"], m.get("generation"), revision, o.get("spec"),
                                                    o.get("data"))
    return out


def _unchanged(before: dict[str, Any], after: dict[str, Any], scaled: str, when: str) -> None:
    """Every object of `before` is still there, the same; `scaled` was scaled down and back by a canary step
    (its generation moved) but has the same spec and template revision: its template was never written."""
    for key, value in before.items():
        now = after.get(key)
        if key == scaled and now is not None:
            assert now[1] > value[1] and (now[0], *now[2:]) == (value[0], *value[2:]), f"{key} changed{when}"
            continue
        assert now == value, f"{key} changed or vanished{when}"


def test_hostile_manifests(cluster: Cluster, operator: Operator, models: Models, prometheus: Prometheus,
                           holdout_host: type[_Holdouts], tmp_path: Path) -> None:
    assert operator.proc is not None and operator.pvc_root is not None
    tenant, victim = f"tenant-{uuid.uuid4().hex[:6]}", f"victim-{uuid.uuid4().hex[:6]}"
    kubectl: Callable[..., Any] = cluster.kubectl
    for ns in (tenant, victim):
        kubectl("create", "namespace", ns)
        kubectl("apply", "-f", "-", input=TARGET.format(name="churn", ns=ns))
        kubectl("-n", ns, "create", "configmap", "holdout", "--from-file=holdout.csv=/dev/stdin",
                input=models.holdout_csv)
    for target in ("m1", "m2", "m3"):  # one production each, so evaluating rollouts do not queue for one target
        kubectl("apply", "-f", "-", input=TARGET.format(name=target, ns=tenant))
    kubectl("-n", victim, "create", "secret", "generic", "db", f"--from-literal=password={SECRET_WORD}")
    # the tenant's own objects that happen to carry names the operator would use
    squat = TARGET.format(name="squat-candidate", ns=tenant).replace("replicas: 2", "replicas: 1")
    kubectl("apply", "-f", "-", input=squat)
    kubectl("apply", "-f", "-", input=TARGET.format(name="churn-canary", ns=tenant).replace("replicas: 2",
                                                                                             "replicas: 1"))
    kubectl("-n", tenant, "create", "secret", "generic", "tok", f"--from-literal=t={SECRET_WORD}")
    bomb = tmp_path / "h.parquet"
    bomb.write_bytes(_parquet_bomb())
    assert bomb.stat().st_size < 1_000_000
    kubectl("-n", tenant, "create", "configmap", "bomb", f"--from-file=h.parquet={bomb}")
    fat = pd.read_csv(io.StringIO(models.holdout_csv))
    fat["region"] = "eu"
    fat.loc[3, "region"] = SECRET_WORD + "y" * 700_000
    fat_file = tmp_path / "fat.csv"
    fat.to_csv(fat_file, index=False)
    kubectl("-n", tenant, "create", "configmap", "fatcell", f"--from-file=h.csv={fat_file}")
    # the hold-out host serves a file whose header and values must never reach a message
    secret_csv = models.holdout_csv.replace("x0", SECRET_WORD, 1).encode()
    holdout_host.files.update({"/h.csv": models.holdout_csv.encode(), "/secret.csv": secret_csv})
    # PVC layout <root>/<namespace>/<claim>/<path>: the victim's data sits next to the tenant's
    root = operator.pvc_root
    (root / tenant / "data").mkdir(parents=True, exist_ok=True)
    (root / victim / "data").mkdir(parents=True, exist_ok=True)
    (root / victim / "data" / "h.csv").write_text(models.holdout_csv.replace("label", SECRET_WORD))
    (root / tenant / "data" / "zero.csv").symlink_to("/dev/zero")
    prometheus.configure([f"127.0.0.1:{operator.metrics_port}"])

    cases = _cases(tenant, victim, operator.holdout_port)
    for c in cases:
        if c.servers is not None:
            cand, base = (operator.serve(models.good, mode) for mode in c.servers)
            operator.map({f"{tenant}/{c.name}-candidate": cand, f"{tenant}/{c.name}-baseline": base})
    before = _snapshot(cluster, tenant, victim)
    pid = operator.proc.pid
    peak = Peak(pid)
    applied: dict[str, Case] = {}
    for c in cases:
        out = kubectl("apply", "-f", "-", input=yaml.safe_dump(_body(tenant, c)), check=False)
        if c.expect == "rejected":
            assert out.returncode != 0, f"{c.name[:20]}: the API server accepted it"
            assert c.words in out.stderr, (c.name[:20], out.stderr[-800:])
            assert len(out.stderr) < 4000
        else:
            assert out.returncode == 0, (c.name, out.stderr[-800:])
            applied[c.name] = c

    statuses: dict[str, dict[str, Any]] = {}
    end = time.monotonic() + 240
    while time.monotonic() < end and len(statuses) < len(applied):
        items = json.loads(kubectl("-n", tenant, "get", "modelrollouts", "-o", "json").stdout)["items"]
        for r in items:
            st = r.get("status") or {}
            if st.get("phase") in TERMINAL:
                statuses[r["metadata"]["name"]] = st
        time.sleep(1)
    memory = peak.done()
    assert set(statuses) == set(applied), f"never ended: {sorted(set(applied) - set(statuses))}"
    for name, c in applied.items():
        st = statuses[name]
        said = f"{st.get('reason')} {st.get('message')}"
        assert st["phase"] == c.expect and c.words in said, (name, said[:600])
        assert len(st.get("message") or "") <= 1024
        for word in c.never:
            assert word not in json.dumps(st), (name, word)
    assert SECRET_WORD not in json.dumps(statuses["url-echo"]) and "x0" not in statuses["url-echo"]["message"]
    assert "region" in statuses["fat-cell"]["message"]
    assert hashlib.sha256(models.holdout_csv.encode()).hexdigest() in statuses["pinned"]["message"]  # both named

    # the token was never sent: the Secret does not pin the hold-out host
    assert f"Bearer {SECRET_WORD}" not in holdout_host.auth
    # production, the squatted names and everything of the other tenant: exactly as before
    after = _snapshot(cluster, tenant, victim)
    staged = {k for k in after if k not in before}
    assert all(k.split("/")[1] == tenant and any(k.split("/")[2].startswith(f"{n}-") for n in applied)
               for k in staged), staged
    scaled = f"Deployment/{tenant}/m3"  # cross-tenant-query's canary step gave one of its pods to the canary
    _unchanged(before, after, scaled, "")
    assert operator.proc is not None and operator.proc.pid == pid and operator.proc.poll() is None
    assert memory < CHART_LIMIT, f"operator peak {memory / 2**20:.0f} MiB"
    print(f"operator peak RSS with its children during the hostile table: {memory / 2**20:.0f} MiB")

    # deleting a rollout removes its objects (only its own) and its series
    kubectl("-n", tenant, "delete", "modelrollout", *applied, "--wait=false")
    end = time.monotonic() + 120
    while time.monotonic() < end and kubectl("-n", tenant, "get", "modelrollouts", "-o", "name").stdout.strip():
        time.sleep(1)
    assert not kubectl("-n", tenant, "get", "modelrollouts", "-o", "name").stdout.strip(), "finalizers left"
    after_delete = _snapshot(cluster, tenant, victim)
    _unchanged(before, after_delete, scaled, " after the rollouts were deleted")
    assert {k for k in after_delete if k not in before} == set()
    metrics = operator.metrics()
    assert f'namespace="{tenant}"' not in "\n".join(
        line for line in metrics.splitlines() if line.startswith(("modelrollout_rollout_phase", "modelrollout_gate_")))
    kubectl("delete", "namespace", tenant, victim, "--wait=false", check=False)
    copy.deepcopy(statuses)  # keep for debugging output on failure
