"""Evaluations as MLflow runs, on a real `mlflow server` (SQLite, local artifacts), read back with MlflowClient."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from prometheus_client import CollectorRegistry, generate_latest

from modelrollout.controller.settings import Settings
from modelrollout.controller.tracker import Tracker
from modelrollout.core.gates import Decision, Evidence, Outcome
from modelrollout.core.report import Report
from modelrollout.core.spec import parse_spec
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.status import StatusWriter
from modelrollout.tracking import track
from tests.conftest import MlflowServer
from tests.unit.fake_kube import FakeKube
from tests.unit.test_cli_score import BASE, EX, run

pytestmark = pytest.mark.integration


def _score(tmp: Path, name: str, *extra: str) -> tuple[Any, dict[str, Any]]:
    out = run(*BASE, "--gates", str(EX / "gates.yaml"), "--output", str(tmp / f"{name}.json"), *extra)
    return out, json.loads((tmp / f"{name}.json").read_text())


def test_a_score_run_holds_every_figure_of_the_report_its_params_and_artifacts(mlflow_server: MlflowServer,
                                                                             tmp_path: Path) -> None:
    out, rep = _score(tmp_path, "r", "--mlflow-uri", mlflow_server.url, "--mlflow-experiment", "churn-ci")
    assert out.returncode == 0, out.stderr
    t = rep["details"]["tracking"]
    assert t["state"] == "Tracked" and t["url"] == f"{mlflow_server.url}/#/experiments/{t['experimentId']}/runs/" \
        f"{t['runId']}" and t["url"] in out.stderr
    client = MlflowClient(tracking_uri=mlflow_server.url)
    r = client.get_run(t["runId"])
    m, params, tags = r.data.metrics, r.data.params, r.data.tags
    checked = 0
    for f in rep["figures"]:
        for side in ("candidate", "baseline", "delta"):
            if f[side] is not None:
                assert abs(m[f"{side}.{f['name']}"] - f[side]) <= 1e-12, (side, f["name"])
                checked += 1
        for side, key in (("candidate", "interval"), ("delta", "deltaInterval")):
            if f[key] is not None:
                assert abs(m[f"{side}.{f['name']}.low"] - f[key]["low"]) <= 1e-12
                assert abs(m[f"{side}.{f['name']}.high"] - f[key]["high"]) <= 1e-12
    assert checked > 30
    for g in rep["gates"]:
        assert m[f"gate.{g['index']}.{g['metric']}.{g['bound']}.passed"] == (1.0 if g["verdict"] == "Pass" else 0.0)
    assert m["decision.promote"] == 1.0 and tags["decision"] == "Promote" and tags["reason"]
    assert params["holdout.sha256"] == hashlib.sha256((EX / "holdout.csv").read_bytes()).hexdigest()
    assert params["holdout.sha256"] == rep["holdout"]["sha256"] and params["command"] == "score"
    assert json.loads(params["spec.gates"])[0] == {"metric": "f1", "min": 0.85}
    assert params["spec.quality.resamples"] == "1000"
    assert {a.path for a in client.list_artifacts(t["runId"])} == {"report.json", "report.md", "index.html"}
    logged = json.loads(Path(client.download_artifacts(t["runId"], "report.json", str(tmp_path))).read_text())
    assert logged["figures"] == rep["figures"]  # the artifact is the same report
    exp = client.get_experiment_by_name("churn-ci")
    assert exp is not None and exp.experiment_id == t["experimentId"]

    # a second evaluation of the same target: another run of the experiment, with the same keys to compare
    _score(tmp_path, "r2", "--mlflow-uri", mlflow_server.url, "--mlflow-experiment", "churn-ci")
    runs = client.search_runs([t["experimentId"]])
    assert len(runs) == 2 and set(runs[0].data.metrics) == set(runs[1].data.metrics)


def test_an_unreachable_tracking_server_changes_nothing_but_says_so(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plain, rep = _score(tmp_path, "plain")
    t0 = time.monotonic()
    out, failed = _score(tmp_path, "failed", "--mlflow-uri", f"http://user:pw@127.0.0.1:{port}")
    took = time.monotonic() - t0
    assert (out.returncode, out.stdout) == (plain.returncode, plain.stdout)  # the same decision, the same table
    t = failed["details"].pop("tracking")
    assert failed == rep
    assert t["state"] == "Failed" and t["message"].startswith(f"MLflow at http://127.0.0.1:{port}: ")
    assert "pw" not in t["message"] and "tracking failed, the decision stands" in out.stderr
    assert took < 40, f"tracking held the command for {took:.0f}s"


def test_more_metrics_and_params_than_one_request_may_carry_all_arrive(mlflow_server: MlflowServer) -> None:
    figures = {f"f{i}": i / 7 for i in range(1200)}  # 3600 metrics with baseline and delta; MLflow takes 1000
    rep = Report(task="regression", evidence=Evidence(figures, {k: v / 2 for k, v in figures.items()}), gates=[],
                 decision=Decision(Outcome.REJECT, "synthetic"))
    params = {f"p{i}": str(i) for i in range(250)}  # MLflow takes 100 per request
    t = track(mlflow_server.url, "batches", rep, run_name="big", params=params)
    r = MlflowClient(tracking_uri=mlflow_server.url).get_run(t.run_id)
    assert len(r.data.metrics) == 3601 and r.data.metrics["delta.f1199"] == 1199 / 7 - 1199 / 14
    assert len(r.data.params) == 250 and r.data.tags["decision"] == "Reject"


def test_the_operator_records_a_failed_tracking_in_status_and_a_metric() -> None:
    """An unreachable server (a closed port: a real connection refusal) after a decision: status.tracking says why,
    modelrollout_tracking_failures_total counts it, nothing else of status changes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kube = FakeKube()
    body = {"metadata": {"name": "r", "namespace": "ml", "generation": 3, "uid": "u"},
            "spec": {"targetRef": {"name": "churn"}, "task": "binary-classification", "serving": {"modelName": "m"},
                     "holdout": {"configMapRef": {"name": "h", "key": "h.csv"}, "labelColumn": "label"},
                     "gates": [{"metric": "f1", "min": 0.5}], "tracking": {"mlflow": {"experiment": "ci"}}}}
    kube.rollouts["ml", "r"] = {**body, "status": {"phase": "Canary"}}
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    tracker = Tracker(Settings(mlflow_tracking_uri=f"http://127.0.0.1:{port}"), metrics, StatusWriter(kube, metrics))
    rep = Report(task="binary-classification", evidence=Evidence({"f1": 0.9}, {"f1": 0.8}), gates=[],
                 decision=Decision(Outcome.PROMOTE, "all gates passed"))
    asyncio.run(tracker.run(body, parse_spec(body["spec"]), rep, {"candidate": "c:2", "baseline": "c:1"}))
    st = kube.rollouts["ml", "r"]["status"]
    assert st["phase"] == "Canary" and st["tracking"]["state"] == "Failed"
    assert st["tracking"]["experiment"] == "modelrollout/ml/ci"
    assert st["tracking"]["message"].startswith(f"MLflow at http://127.0.0.1:{port}: ")
    assert 'modelrollout_tracking_failures_total{namespace="ml"} 1.0' in generate_latest(registry).decode()


def test_registered_model_versions_move_champion_and_challenger_as_rollouts_end(mlflow_server: MlflowServer) -> None:
    """Each evaluation a version (challenger); promotion crowns it, a rollback leaves the champion alone, an undo
    crowns the previous one again; another namespace may not move this namespace's aliases."""
    kube = FakeKube()
    metrics = OperatorMetrics(CollectorRegistry())
    tracker = Tracker(Settings(mlflow_tracking_uri=mlflow_server.url), metrics, StatusWriter(kube, metrics))
    model = f"churn-{time.time_ns()}"

    def body(name: str, ns: str = "ml") -> dict[str, Any]:
        b = {"metadata": {"name": name, "namespace": ns, "generation": 1, "uid": f"{ns}-{name}"},
             "spec": {"targetRef": {"name": "churn"}, "task": "binary-classification", "serving": {"modelName": "m"},
                      "holdout": {"configMapRef": {"name": "h", "key": "h.csv"}, "labelColumn": "label"},
                      "gates": [{"metric": "f1", "min": 0.5}],
                      "tracking": {"mlflow": {"registeredModel": model}}}}
        kube.rollouts[ns, name] = {**b, "status": {"phase": "Evaluating"}}
        return b

    rep = Report(task="binary-classification", evidence=Evidence({"f1": 0.9}, {"f1": 0.8}), gates=[],
                 decision=Decision(Outcome.PROMOTE, "all gates passed"))

    async def attempt(name: str, result: str, ns: str = "ml") -> dict[str, Any]:
        b = body(name, ns)
        spec = parse_spec(b["spec"])
        tracker.start(b, spec, rep, {"candidate": f"reg/churn:{name}", "baseline": "reg/churn:base"})
        tracker.ended(b, spec, kube.rollouts[ns, name]["status"], result)  # before the run is logged: it waits
        await asyncio.gather(*tracker.chores, *tracker.runs.values())
        return dict(kube.rollouts[ns, name]["status"]["tracking"])

    async def undo(name: str) -> dict[str, Any]:
        b = kube.rollouts["ml", name]
        tracker.ended(b, parse_spec(b["spec"]), b["status"], "Undone")
        await asyncio.gather(*tracker.chores)
        return dict(kube.rollouts["ml", name]["status"]["tracking"])

    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)

    def alias(a: str) -> str | None:
        try:
            return str(client.get_model_version_by_alias(model, a).version)
        except Exception:
            return None

    async def go() -> None:
        v1 = await attempt("v1", "Promoted")
        assert (v1["modelVersion"], v1["alias"], v1["state"]) == ("1", "champion", "Tracked"), v1
        assert (alias("champion"), alias("challenger")) == ("1", None)
        mv = client.get_model_version(model, "1")
        assert mv.run_id == v1["runId"] and mv.source == "docker://reg/churn:v1"
        assert mv.tags["modelrollout.rollout"] == "v1"
        assert client.get_registered_model(model).tags["modelrollout.namespace"] == "ml"
        v2 = await attempt("v2", "RolledBack")
        assert (v2["modelVersion"], v2["alias"]) == ("2", "")
        assert (alias("champion"), alias("challenger")) == ("1", None)
        v3 = await attempt("v3", "Promoted")
        assert (v3["alias"], v3["previousChampion"]) == ("champion", "1") and alias("champion") == "3"
        assert (await undo("v3"))["alias"] == "" and alias("champion") == "1"
        other = await attempt("x", "Promoted", ns="team-b")
        assert other["state"] == "Tracked" and "modelVersion" not in other, other  # the run, but no version
        assert "modelrollout.namespace='ml', not 'team-b'" in other["registryMessage"], other
        assert alias("champion") == "1" and len(client.search_model_versions(f"name='{model}'")) == 3
    asyncio.run(go())
