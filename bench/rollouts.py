"""50 rollouts of a small model against the test control plane.

    .venv/bin/python bench/rollouts.py [--rollouts 50] [--concurrency 2]

Prints the median and 95th-percentile time from apply to decision, the operator's peak
memory (with its load-generator children), the controller's API requests per rollout, and
the ratio of apply-to-decision time to the evaluation time itself (the operator's overhead;
no other rollout operator can run here to compare with). Uses MODELROLLOUT_KUBECONFIG, or
brings the control plane up with hack/controlplane.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import skops.io as sio
import yaml
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import BIG_NODE, TARGET  # noqa: E402
from tests.integration.conftest import free_port  # noqa: E402


def kubectl(kc: str, bindir: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run([f"{bindir}/kubectl", "--kubeconfig", kc, *args], input=stdin, capture_output=True,
                          text=True, check=True).stdout


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(modelrollout_kubernetes_api_requests_total|modelrollout_evaluation_duration_seconds_sum|"
                     r"modelrollout_evaluation_duration_seconds_count) ([\d.e+]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollouts", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=2)
    a = ap.parse_args()
    script = ROOT / "hack" / "controlplane"
    bindir = subprocess.run([str(script), "bindir"], capture_output=True, text=True, check=True).stdout.strip()
    kc = os.environ.get("MODELROLLOUT_KUBECONFIG") or subprocess.run(
        [str(script), "up"], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    tmp = Path(tempfile.mkdtemp(prefix="bench-rollouts-"))
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)
    sio.dump(LogisticRegression(max_iter=5000).fit(Xtr, ytr), tmp / "good.skops")
    sio.dump(DecisionTreeClassifier(max_depth=2, random_state=0).fit(Xtr, ytr), tmp / "prod.skops")
    df = pd.DataFrame(Xte, columns=[f"x{i}" for i in range(30)])
    df["label"] = yte
    ns = f"bench-{int(time.time())}"
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    for model in ("good", "prod"):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "modelrollout.cli", "serve", str(tmp / f"{model}.skops"),
                                       "--name", "m", "--port", str(port)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    kubectl(kc, bindir, "apply", "-f", str(ROOT / "crds"))
    kubectl(kc, bindir, "apply", "-f", "-", stdin=BIG_NODE)
    kubectl(kc, bindir, "create", "namespace", ns)
    kubectl(kc, bindir, "-n", ns, "create", "configmap", "holdout", "--from-file=holdout.csv=/dev/stdin",
            stdin=df.to_csv(index=False))
    names = [f"m{i}" for i in range(a.rollouts)]
    kubectl(kc, bindir, "apply", "-f", "-", stdin="\n---\n".join(TARGET.format(name=f"t{i}", ns=ns)
                                                                  for i in range(a.rollouts)))
    addresses = {f"{ns}/{n}-candidate": urls[0] for n in names} | {f"{ns}/{n}-baseline": urls[1] for n in names}
    (tmp / "addresses.json").write_text(json.dumps(addresses))
    metrics_port = free_port()
    env = {**os.environ, "KUBECONFIG": kc, "MODELROLLOUT_SERVICE_ADDRESSES_FILE": str(tmp / "addresses.json"),
           "MODELROLLOUT_METRICS_PORT": str(metrics_port), "MODELROLLOUT_RECONCILE_INTERVAL": "1",
           "MODELROLLOUT_MAX_CONCURRENT_EVALUATIONS": str(a.concurrency)}
    op = subprocess.Popen([sys.executable, "-m", "kopf", "run", "-m", "modelrollout.handlers", "--all-namespaces",
                           "--standalone"], env=env, stdout=open(tmp / "operator.log", "wb"),  # noqa: SIM115
                          stderr=subprocess.STDOUT)
    procs.append(op)
    try:
        time.sleep(5)
        rollouts = [{"apiVersion": "modelrollout.dev/v1alpha1", "kind": "ModelRollout",
                     "metadata": {"name": n, "namespace": ns},
                     "spec": {"targetRef": {"name": f"t{i}"}, "task": "binary-classification",
                              "candidate": {"image": "registry.example/churn:8"}, "serving": {"modelName": "m"},
                              "holdout": {"configMapRef": {"name": "holdout", "key": "holdout.csv"},
                                          "labelColumn": "label"},
                              "load": {"duration": "500ms", "warmup": "100ms", "batchSizes": [1],
                                       "leakRequests": 0},
                              "quality": {"resamples": 100}, "gates": [{"metric": "f1", "min": 0.9}]}}
                    for i, n in enumerate(names)]
        applied = time.monotonic()
        kubectl(kc, bindir, "apply", "-f", "-", stdin="\n---\n".join(yaml.safe_dump(r) for r in rollouts))
        done: dict[str, float] = {}
        peak = 0.0
        proc = psutil.Process(op.pid)
        while len(done) < len(names) and time.monotonic() - applied < 1800:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            peak = max(peak, rss)
            items = json.loads(kubectl(kc, bindir, "-n", ns, "get", "modelrollouts", "-o", "json"))["items"]
            for it in items:
                if (it.get("status") or {}).get("phase") in {"Promoted", "RolledBack", "Failed"}:
                    done.setdefault(it["metadata"]["name"], time.monotonic() - applied)
            time.sleep(0.5)
        m = scrape(metrics_port)
    finally:
        for p in procs:
            p.terminate()
        kubectl(kc, bindir, "delete", "namespace", ns, "--wait=false")
    times = sorted(done.values())
    p95 = times[max(0, round(0.95 * len(times)) - 1)]
    evals = m.get("modelrollout_evaluation_duration_seconds_count", 0)
    eval_mean = m.get("modelrollout_evaluation_duration_seconds_sum", 0) / evals if evals else float("nan")
    print(f"rollouts={a.rollouts} decided={len(done)} concurrency={a.concurrency}")
    print(f"apply to decision: median {statistics.median(times):.1f}s  p95 {p95:.1f}s  (all applied at once)")
    print(f"operator peak memory (with load-generator children): {peak / 2**20:.0f} MiB")
    calls = m.get("modelrollout_kubernetes_api_requests_total", 0) / len(names)
    print(f"controller API requests per rollout: {calls:.1f} (kopf's own watch and patch calls not counted)")
    wall = times[-1]
    print(f"mean evaluation {eval_mean:.2f}s; ratio wall-clock / (evaluations x mean / concurrency): "
          f"{wall / (len(names) * eval_mean / a.concurrency):.2f}")


if __name__ == "__main__":
    main()
