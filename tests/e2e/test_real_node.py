"""The user's path on a real node: real containers from the project's image, installed by Helm.

Few tests, each doing much: they cost real pods, so scenarios share one operator and run side by side.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Models
from tests.e2e.realnode import ON_NODE, OPERATOR_NS, WATCHED, RealNode, real_node_fixture  # noqa: F401

pytestmark = pytest.mark.e2e

USER, FAULTS = WATCHED
SERVE = ["-m", "modelrollout.cli", "serve", "--host", "0.0.0.0", "--port", "8080", "--name", "m"]

# Production traffic from inside the cluster: a new connection per request through the Service's
# ClusterIP (so kube-proxy spreads requests over production and canary pods alike).
LOAD = """
import json, sys, time, urllib.request
import numpy as np
from modelrollout.serving.protocol import v2_request
body = json.dumps(v2_request(np.zeros((1, 30)))).encode()
url, end, ok, failed = sys.argv[1], time.time() + float(sys.argv[2]), 0, 0
while time.time() < end:
    try:
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
        ok += 1
    except OSError:
        failed += 1
    time.sleep(0.05)
print(f"ok={ok} failed={failed}")
"""


def load_job(node: RealNode, ns: str, service: str, seconds: int) -> dict[str, Any]:
    url = f"http://{service}.{ns}.svc.cluster.local:8080/v2/models/m/infer"
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "traffic", "namespace": ns},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                **ON_NODE, "restartPolicy": "Never",
                "containers": [{"name": "load", "image": node.image, "imagePullPolicy": "Never",
                                "command": ["python3", "-c", LOAD, url, str(seconds)]}]}}}}


# A server with a second process beside it (as KServe's or gunicorn's workers are): the parent holds 160 MiB
# and starts the model server as its child, whose own /metrics counts only itself.
TWO_PROCESSES = """
import subprocess, sys
held = bytearray(160 * 2**20)
for i in range(0, len(held), 4096):
    held[i] = 1
sys.exit(subprocess.Popen([sys.executable, *sys.argv[1:]]).wait())
"""


def server_args(model: str) -> list[str]:
    return [*SERVE[:3], f"/models/{model}", *SERVE[3:]]


def kubectl_modelrollout(node: RealNode, *args: str) -> str:
    """`kubectl modelrollout ...`: kubectl finds the plugin on PATH, as a user's shell would."""
    env = node.cluster.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([f"{node.cluster.bindir}/kubectl", "modelrollout", *args], capture_output=True,
                          text=True, env=env, check=True, timeout=60).stdout


def test_helm_install_stage_canary_promote_and_roll_back(real_node: RealNode, models: Models) -> None:
    node = real_node
    # The chart's operator pod: Ready under the chart's ServiceAccount, its liveness endpoint answering.
    (op_pod,) = node.pods(OPERATOR_NS, "app.kubernetes.io/name=modelrollout")
    assert op_pod["spec"]["serviceAccountName"] == "modelrollout"
    assert all(c["ready"] for c in op_pod["status"]["containerStatuses"])
    with urllib.request.urlopen(f"http://{op_pod['status']['podIP']}:8081/healthz", timeout=5) as r:
        assert r.status == 200

    node.models(USER, models, models.holdout_csv)
    node.apply(node.production(USER, "churn", replicas=2))
    node.ready(USER, "churn")
    node.apply([load_job(node, USER, "churn", seconds=400)])
    canary_rate = f'sum(rate(modelserver_requests_total{{namespace="{USER}", pod=~"churn-canary-.*"}}[20s]))'
    errors = (f'sum(rate(modelserver_errors_total{{namespace="{USER}", pod=~"churn-canary-.*"}}[20s])) or vector(0)')
    # the share of requests the canary pods served through production's Service, in the step's last 15 s
    share = (f'sum(rate(modelserver_requests_total{{namespace="{USER}", pod=~"churn-canary-.*"}}[15s])) / '
             f'sum(rate(modelserver_requests_total{{namespace="{USER}", pod=~"churn-.*"}}[15s]))')
    # two staging replicas each: the load and memory readings go to one pod, named in status
    node.rollout(USER, "good", "churn", server_args("good.skops"), staging={"readyTimeout": "120s", "replicas": 2},
                 promotion={
        "canary": {"steps": [{"weight": 50, "pause": "25s"}]},
        "gates": [{"name": "canary-serves", "query": canary_rate, "min": 0.5},
                  {"name": "canary-errors", "query": errors, "max": 0.01},
                  {"name": "canary-share", "query": share, "min": 0, "dryRun": True}]})
    st = node.wait_phase(USER, "good", {"Promoted", "RolledBack", "Failed"}, timeout=420)
    assert st["phase"] == "Promoted", st
    # Real figures: memory from the containers' cgroups through metrics.k8s.io, capacity from the node.
    assert st["capacity"]["memorySource"] == {"candidate": "metrics.k8s.io", "baseline": "metrics.k8s.io"}
    by_pod = st["capacity"]["measuredPod"]
    assert {v: (m["name"].startswith(f"good-{v}-"), m["replicas"]) for v, m in by_pod.items()} == {
        "candidate": (True, 2), "baseline": (True, 2)}, by_pod
    # the measured pod served every prediction of the evaluation; its sibling none (per pod, not a mix)
    served_by = {s["metric"]["pod"]: float(s["value"][1]) for s in node.prometheus.query(
        f'sum by (pod) (max_over_time(modelserver_requests_total{{namespace="{USER}", pod=~"good-candidate-.*"}}'
        '[15m]))')}
    assert len(served_by) == 2 and served_by.pop(by_pod["candidate"]["name"]) > 500, served_by
    assert list(served_by.values()) == [0.0], served_by
    mem = st["capacity"]["perReplicaMemoryMiB"]["candidate"]
    assert 40 < mem < 400, mem  # a Python model server, measured, not the 1 MiB a simulated pod reports
    alloc = node.get("default", "node", "mr-node")["status"]["allocatable"]["memory"]
    fit = st["capacity"]["replicasFit"]["candidate"]
    assert 1 <= fit <= int(alloc.removesuffix("Ki")) // 1024 // 200, (fit, alloc)
    # Weight 50 of 2 replicas: production gave one pod to the canary, so the canary served half the
    # requests (one new connection each, ~200 in the window: 0.4..0.6 is 3 standard deviations; with
    # production not scaled down it would serve a third).
    [record] = st["canary"]["steps"]
    measured = {m["gate"]: m for m in record["measurements"]}
    assert 0.4 <= measured["canary-share"]["value"] <= 0.6, measured["canary-share"]
    assert node.get(USER, "deployment", "churn")["spec"]["replicas"] == 2  # given back on promotion
    # The canary pods served production traffic (the gate said so, and Prometheus still has it).
    served = node.prometheus.query(f'max_over_time(({canary_rate})[10m:5s])')
    assert served and float(served[0]["value"][1]) > 0.5, served
    # Production now runs the candidate, and the canary is gone.
    template = node.get(USER, "deployment", "churn")["spec"]["template"]
    assert "/models/good.skops" in template["spec"]["containers"][0]["args"]
    assert node.kubectl("-n", USER, "get", "deployment", "churn-canary", check=False).returncode != 0
    node.ready(USER, "churn")
    before = {p["metadata"]["uid"] for p in node.pods(USER, "app=churn")}
    assert "Promoted" in kubectl_modelrollout(node, "-n", USER, "status", "good")

    # A worse candidate, served by two processes: rolled back on the gate it failed, production's pods
    # untouched, alert firing; its memory is the pod's (cgroup), not the one process its /metrics describes.
    node.rollout(USER, "bad", "churn", ["-c", TWO_PROCESSES, *server_args("bad.skops")])
    st = node.wait_phase(USER, "bad", {"Promoted", "RolledBack", "Failed"}, timeout=300)
    assert st["phase"] == "RolledBack", st
    assert st["capacity"]["memorySource"]["candidate"] == "metrics.k8s.io"
    own = node.prometheus.query(f'max(max_over_time(process_resident_memory_bytes{{namespace="{USER}", '
                                f'pod=~"bad-candidate-.*"}}[15m]))')
    own_mib = float(own[0]["value"][1]) / 2**20
    cand, base = st["candidate"]["metrics"]["memory_peak_mib"], st["baseline"]["metrics"]["memory_peak_mib"]
    # the pod's working set holds the parent's 160 MiB beside the same server code as the baseline's (measured
    # 311 vs 146 MiB), and is above what the server process reports of itself (its RSS, 225 MiB, counts shared
    # library pages the working set does not, so the two differ by less than the parent's share)
    assert cand > base + 120 and cand > own_mib, (cand, own_mib, base)
    failed = [g for g in st["gates"] if g["verdict"] == "Fail"]
    assert failed and all(g["metric"] == "f1" for g in failed), failed
    assert "f1" in st["decision"]["reason"]
    assert {p["metadata"]["uid"] for p in node.pods(USER, "app=churn")} == before
    assert "/models/good.skops" in node.get(USER, "deployment", "churn")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    firing: list[dict[str, Any]] = []
    for _ in range(60):
        firing = node.prometheus.query(f'ALERTS{{alertname="ModelRolloutRolledBack", alertstate="firing", '
                                       f'namespace="{USER}"}}')
        if firing:
            break
        time.sleep(2)
    assert firing, "the chart's ModelRolloutRolledBack alert did not fire"
    out = kubectl_modelrollout(node, "-n", USER, "status", "bad")
    assert "RolledBack" in out and "f1" in out
    job = node.get(USER, "job", "traffic")
    assert not job["status"].get("failed"), job["status"]
    node.kubectl("-n", USER, "delete", "job", "traffic", "--wait=false")


def test_candidates_that_crash_never_get_ready_or_are_oom_killed(real_node: RealNode, models: Models) -> None:
    node = real_node
    node.models(FAULTS, models, models.holdout_csv)
    cases = {
        "crash": server_args("missing.skops"),  # the server exits: no such model file
        "unready": [*server_args("good.skops")[:-4], "--port", "9090", "--name", "m"],  # probe checks 8080
        "oom": ["/models/servers.py", "/models/good.skops", "8080", "flood", "0.0.0.0"],  # leaks to its limit
    }
    for name in cases:
        node.apply(node.production(FAULTS, f"prod-{name}", replicas=1, memory_limit="300Mi"))
    for name in cases:
        node.ready(FAULTS, f"prod-{name}")
    before = {n: {p["metadata"]["uid"] for p in node.pods(FAULTS, f"app=prod-{n}")} for n in cases}
    for name, args in cases.items():
        node.rollout(FAULTS, name, f"prod-{name}", args, staging={"readyTimeout": "45s"})
    got = {n: node.wait_phase(FAULTS, n, {"Promoted", "RolledBack", "Failed"}, timeout=300) for n in cases}

    crash = got["crash"]
    assert crash["phase"] == "RolledBack" and crash["decision"]["reason"].startswith("a staging pod cannot serve")
    assert "pod crash-candidate-" in crash["decision"]["reason"]
    crashed = r"(CrashLoopBackOff, last exit code|exited with code) [1-9]\d* \(Error\)"
    assert re.search(crashed, crash["decision"]["reason"])
    unready = got["unready"]
    assert unready["phase"] == "RolledBack", unready
    assert "not Available within 45s" in unready["decision"]["reason"]
    assert "pod unready-candidate-" in unready["decision"]["reason"] and "not Ready" in unready["decision"]["reason"]
    oom = got["oom"]
    assert oom["phase"] in ("RolledBack", "Failed"), oom
    assert "pod oom-candidate-" in oom["decision"]["reason"] and "OOMKilled" in oom["decision"]["reason"]
    # Production untouched, and the operator never restarted.
    for n in cases:
        assert {p["metadata"]["uid"] for p in node.pods(FAULTS, f"app=prod-{n}")} == before[n]
        assert "/models/production.skops" in node.get(FAULTS, "deployment", f"prod-{n}")["spec"]["template"][
            "spec"]["containers"][0]["args"]
    (op_pod,) = node.pods(OPERATOR_NS, "app.kubernetes.io/name=modelrollout")
    assert op_pod["status"]["containerStatuses"][0]["restartCount"] == 0
    # the operator reached the model servers by Service DNS: no address map in its environment
    env = {e["name"] for e in op_pod["spec"]["containers"][0]["env"]}
    assert "MODELROLLOUT_SERVICE_ADDRESSES_FILE" not in env
