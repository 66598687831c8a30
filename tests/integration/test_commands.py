"""`modelrollout demo` and `modelrollout evaluate` end to end, and their Prometheus output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score

from tests.integration.conftest import Server, Trained

pytestmark = pytest.mark.integration


def promtool_check(path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is required: ./dev test installs it"
    out = subprocess.run([promtool, "check", "metrics"], input=path.read_text(), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_demo_promotes_and_writes_the_report_folder(tmp_path: Path) -> None:
    metrics = tmp_path / "demo.prom"
    out = subprocess.run([sys.executable, "-m", "modelrollout.cli", "demo", "--report-dir", str(tmp_path / "r"),
                          "--duration", "1s", "--metrics-file", str(metrics)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "decision: Promote" in out.stdout
    assert "baseline: leak probe" in out.stderr  # progress is shown
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    page = (tmp_path / "r" / "index.html").read_text()
    names = {f["name"] for f in rep["figures"]}
    assert {"f1", "roc_auc", "latency_p99_ms", "throughput_rps", "memory_peak_mib",
            "memory_growth_mib_per_10k_requests", "memory_leak_mib_per_10k_requests", "memory_leak_suspected",
            "time_to_ready_s", "replicas_fit", "best_batch_size", "throughput_at_slo_rps",
            "fleet_throughput_at_slo_rps", "cpu_before_percent", "cpu_after_percent"} <= names
    fig = {f["name"]: f for f in rep["figures"]}
    assert 0 < fig["time_to_ready_s"]["candidate"] < 120 and 0 < fig["time_to_ready_s"]["baseline"] < 120
    assert fig["memory_leak_suspected"]["candidate"] in (0, 1)
    for side in ("candidate", "baseline"):  # the search's figure, its batch size, and the fleet it makes
        slo = rep["details"][side]["sloSearch"]
        assert fig["throughput_at_slo_rps"][side] == pytest.approx(slo["rowsPerS"]) and slo["batchSize"] in (1, 32)
        assert fig["fleet_throughput_at_slo_rps"][side] == pytest.approx(
            fig["replicas_fit"][side] * fig["throughput_at_slo_rps"][side])
    assert fig["throughput_at_slo_rps"]["interval"] is not None  # 2 searches per variant
    assert "throughput at the 50 ms p99 SLO" in out.stdout and "throughput at the 50 ms p99 SLO" in page
    cells = [(1, 4), (1, 16), (32, 4), (32, 16)]  # batch sizes 1, 32 x concurrencies 4, 16, the default first
    assert [(s["batch_size"], s["concurrency"]) for s in rep["details"]["candidate"]["sweep"]] == cells
    assert [(c["batchSize"], c["concurrency"]) for c in rep["sweep"]["cells"]] == cells
    assert "32 x 16" in out.stdout and "32 x 16" in (tmp_path / "r" / "report.md").read_text()
    assert page.count("data:image/png;base64,") == 5 and "Decision" in page and "<h2>Confusion matrices</h2>" in page
    assert "<h2>By group</h2>" in page
    assert "<h2>By size_band (candidate / baseline)</h2>" in page and "logistic regression" in page
    text = metrics.read_text()
    assert 'modelrollout_f1{namespace="default",rollout="demo",variant="candidate"}' in text
    assert "modelrollout_latency_p99_seconds" in text and "modelrollout_gate_passed" in text
    assert "modelrollout_throughput_at_slo_rows_per_second{" in text  # predictions, not requests, per second
    promtool_check(metrics)


def manifest(tmp_path: Path, trained: Trained, gates: list[dict[str, object]]) -> Path:
    df = pd.DataFrame(trained.X, columns=[f"x{i}" for i in range(trained.X.shape[1])])
    df["label"] = trained.y
    df.to_csv(tmp_path / "holdout.csv", index=False)
    doc = {"apiVersion": "modelrollout.dev/v1alpha1", "kind": "ModelRollout", "metadata": {"name": "ci"},
           "spec": {"targetRef": {"name": "m"}, "task": "binary-classification",
                    "serving": {"modelName": "m"}, "holdout": {"file": "holdout.csv", "labelColumn": "label"},
                    "load": {"duration": "1s", "warmup": "200ms", "batchSizes": [1, 4], "leakRequests": 2000},
                    "quality": {"resamples": 200}, "gates": gates}}
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def evaluate(path: Path, cand: Server, base: Server, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelrollout.cli", "evaluate", "-f", str(path), "--candidate",
                           cand.url, "--baseline", base.url, *extra], capture_output=True, text=True, timeout=300)


def test_evaluate_running_servers(tmp_path: Path, trained: Trained, start_server: Callable[..., Server]) -> None:
    cand, base = start_server(trained.candidate), start_server(trained.baseline)
    path = manifest(tmp_path, trained, [{"metric": "f1", "min": 0.9}, {"metric": "f1", "maxDrop": 0.0},
                                        {"metric": "memory_peak_mib", "max": 4096, "confidence": 0.9},
                                        {"metric": "error_rate_percent", "max": 0},
                                        # system figures decide on their load windows' intervals
                                        {"metric": "latency_p99_ms", "maxIncreasePercent": 5000, "confidence": 0.9},
                                        {"metric": "throughput_rps", "min": 1, "confidence": 0.9}])
    out = evaluate(path, cand, base, "--output", str(tmp_path / "r.json"), "--metrics-file", str(tmp_path / "m.prom"),
                   "--report-dir", str(tmp_path / "report"))
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    page = (tmp_path / "report" / "index.html").read_text()  # the same renderer as the demo's and the operator's
    for title in ("ROC and precision-recall curves", "Confusion matrices", "Latency and throughput against batch size",
                  "Memory over time"):
        assert f"<h2>{title}</h2><img" in page, title
    assert "<h2>Provenance</h2>" in page and cand.url in page and "worse than the baseline" in page
    assert f"report: {tmp_path / 'report' / 'index.html'}" in out.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    p99 = next(g for g in rep["gates"] if g["metric"] == "latency_p99_ms")
    assert p99["verdict"] == "Pass" and p99["interval"]["level"] == 0.9 and p99["interval"]["resamples"] == 5, p99
    assert p99["interval"]["low"] <= p99["delta"] <= p99["interval"]["high"]  # paired, around the pooled delta
    for name in ("latency_p99_ms", "throughput_rps", "memory_peak_mib", "cpu_percent"):
        fig = next(f for f in rep["figures"] if f["name"] == name)
        assert fig["interval"]["low"] <= fig["candidate"] <= fig["interval"]["high"], fig
        assert fig["deltaInterval"] is not None and fig["interval"]["level"] == 0.95, fig
    f1 = next(f for f in rep["figures"] if f["name"] == "f1")
    model = trained.models["candidate"]
    assert f1["candidate"] == pytest.approx(f1_score(trained.y, model.predict(trained.X)), abs=1e-12)  # type: ignore[attr-defined]
    assert f1["baseline"] < f1["candidate"]
    mem = next(f for f in rep["figures"] if f["name"] == "memory_peak_mib")
    assert 20 < mem["candidate"] < 4096  # read from the server's own /metrics
    promtool_check(tmp_path / "m.prom")


def test_evaluate_rejects_an_unproven_candidate_with_the_gate_named(tmp_path: Path, trained: Trained,
                                              start_server: Callable[..., Server]) -> None:
    # the shallow tree as the candidate: on 228 rows it cannot show, with 95% confidence, that it
    # is within 0.005 F1 of production; Inconclusive never promotes
    cand, base = start_server(trained.baseline), start_server(trained.candidate)
    path = manifest(tmp_path, trained, [{"metric": "f1", "maxDrop": 0.005, "confidence": 0.95},
                                        {"metric": "accuracy", "min": 0.99}])
    out = evaluate(path, cand, base)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "gate 0 inconclusive: at 95% confidence f1 may drop by more than 0.0050" in out.stdout
    assert "gate 1 failed: accuracy" in out.stdout


def test_evaluate_with_a_dead_server_is_a_failure_that_says_so(tmp_path: Path, trained: Trained,
                                                               start_server: Callable[..., Server]) -> None:
    cand, base = start_server(trained.candidate, mode="500"), start_server(trained.baseline)
    path = manifest(tmp_path, trained, [{"metric": "f1", "min": 0.5}])
    out = evaluate(path, cand, base)
    assert out.returncode == 1
    where = f"candidate server {cand.url}: POST /v2/models/m/infer (hold-out batch 0 of 228 rows)"
    assert f"{where}: HTTP 500" in out.stderr
