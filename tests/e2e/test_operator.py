"""The operator end to end: real API server, real model servers, real Prometheus.

Every test also checks the invariant: production never carries a template whose gates
did not all pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from modelrollout.serving.client import Endpoint, ModelClient, ServerError
from tests.conftest import MlflowServer
from tests.e2e.conftest import Models, Prometheus, Scenario
from tests.unit.test_canary import series, series_key

pytestmark = pytest.mark.e2e

QUALITY = [{"metric": "f1", "min": 0.9}, {"metric": "f1", "maxDrop": 0.02}]


def test_good_candidate_is_promoted(scenario: Scenario, models: Models, mlflow_server: MlflowServer) -> None:
    before = scenario.template()
    cand, base = scenario.op.serve(models.good), scenario.op.serve(models.production)
    scenario.rollout("good", cand, base, [*QUALITY, {"metric": "latency_p99_ms", "max": 1000},
                                          {"metric": "replicas_fit", "min": 10},
                                          {"metric": "memory_growth_mib_per_10k_requests", "max": 20}],
                     tracking={"mlflow": {"registeredModel": f"churn-{scenario.ns}"}})
    st = scenario.wait_phase("good", {"Promoted", "RolledBack", "Failed"})
    assert st["phase"] == "Promoted", st.get("message")
    t = scenario.template()
    assert t["spec"]["containers"][0]["image"] == "registry.example/churn:8"
    assert {"name": "MODEL_URI", "value": "s3://models/churn/8"} in t["spec"]["containers"][0]["env"]
    assert t["metadata"]["labels"] == before["metadata"]["labels"]  # production's Service still selects it
    assert scenario.staging_objects("good") == []
    for fig in ("f1", "roc_auc", "latency_p99_ms", "throughput_rps", "memory_peak_mib", "replicas_fit"):
        assert fig in st["candidate"]["metrics"] and fig in st["baseline"]["metrics"], fig
    assert st["candidate"]["intervals"]["f1"]["low"] <= st["candidate"]["metrics"]["f1"]
    # no metrics.k8s.io in this cluster: memory from the servers' own /metrics
    assert st["capacity"]["memorySource"] == {"candidate": "server /metrics", "baseline": "server /metrics"}
    sweep = st["sweep"]  # the load sweep's table survived the API server's pruning, every field of it
    assert sweep["default"] == {"batchSize": sweep["batchSizes"][0], "concurrency": sweep["concurrencies"][0]}
    assert len(sweep["cells"]) == len(sweep["batchSizes"]) * len(sweep["concurrencies"]) and sweep["cellsOmitted"] == 0
    for v in ("candidate", "baseline"):
        c = sweep["cells"][0][v]
        assert {"latencyPerSampleP99Ms", "latencyP99Ms", "rowsPerS", "throughputRps", "errorRatePercent",
                "requests", "errors", "seconds"} <= set(c), c
        assert c["rowsPerS"] > 0 and c["latencyPerSampleP99Ms"] > 0
    assert all(g["verdict"] == "Pass" for g in st["gates"]) and len(st["gates"]) == 5
    digest = hashlib.sha256(models.holdout_csv.encode()).hexdigest()  # of the ConfigMap's bytes, as applied
    rows = models.holdout_csv.strip().count("\n")
    assert st["holdout"]["sha256"] == digest and st["holdout"]["rows"] == st["holdout"]["rowsUsed"] == rows
    assert st["holdout"]["bytes"] == len(models.holdout_csv.encode()) and len(st["holdout"]["schemaSha256"]) == 64
    assert st["decision"]["result"] == "Promoted"
    # the hold-out's own figures and agreement with production reach status (and Prometheus, below)
    assert st["dataQuality"]["figures"]["rows"] == rows and st["dataQuality"]["figures"]["missing_percent"] == 0
    assert 0 < st["candidate"]["metrics"]["disagreement_rate"] < 0.5 and "disagreement_rate" not in st["baseline"][
        "metrics"]
    wide = scenario.cluster.kubectl("-n", scenario.ns, "get", "modelrollouts", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "PHASE", "WEIGHT", "FAILING", "REASON", "AGE", "CANDIDATE", "DECIDED"], wide
    assert next(r for r in wide if r.startswith("good ")).split()[1:5] == ["Promoted", "100", "none", "Promoted"], wide
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert st["previousTemplate"] == before
    metrics = scenario.op.metrics()
    ns = scenario.ns
    assert f'modelrollout_f1{{namespace="{ns}",rollout="good",variant="candidate"}}' in metrics
    schema = st["holdout"]["schemaSha256"]
    info = f'modelrollout_holdout_info{{namespace="{ns}",rollout="good",schema_sha256="{schema}",sha256="{digest}"}}'
    assert f"{info} 1.0" in metrics
    assert f'modelrollout_data_rows{{namespace="{ns}",rollout="good",variant="candidate"}} {float(rows)}' in metrics
    assert f'modelrollout_sweep_rows_per_second{{batch_size="{sweep["batchSizes"][0]}"' in metrics
    assert f'modelrollout_rollout_phase{{namespace="{ns}",phase="Promoted",rollout="good"}} 1.0' in metrics
    assert f'modelrollout_gate_passed{{bound="min",dry_run="false",gate="0",metric="f1",namespace="{ns}"' in metrics
    events = scenario.cluster.kubectl("-n", ns, "get", "events", "--field-selector", "involvedObject.name=good").stdout
    assert "Staging" in events and "Promoted" in events
    scenario.assert_invariant("good", before)
    _tracked_run_equals_status(scenario, mlflow_server, "good", digest)


def _tracked_run_equals_status(scenario: Scenario, mlflow_server: MlflowServer, name: str, digest: str) -> None:
    """The evaluation's MLflow run, read back: every figure of status to 1e-12, who and what as params."""
    end = time.monotonic() + 60
    while not (st := scenario.status(name)).get("tracking") and time.monotonic() < end:
        time.sleep(0.5)
    t = st.get("tracking") or {}
    assert t.get("state") == "Tracked", t
    assert t["experiment"] == f"modelrollout/{scenario.ns}/{scenario.target}"
    r = MlflowClient(tracking_uri=mlflow_server.url).get_run(t["runId"])
    assert t["url"].endswith(f"/#/experiments/{r.info.experiment_id}/runs/{t['runId']}")
    m = r.data.metrics
    for side in ("candidate", "baseline"):
        for fig, value in st[side]["metrics"].items():
            assert abs(m[f"{side}.{fig}"] - value) <= 1e-12, (side, fig, m.get(f"{side}.{fig}"), value)
    for fig, iv in st["candidate"]["intervals"].items():
        for end_ in ("low", "high"):
            assert abs(m[f"candidate.{fig}.{end_}"] - iv[end_]) <= 1e-12, (fig, end_)
    for g in st["gates"]:
        assert m[f"gate.{g['index']}.{g['metric']}.{g['bound']}.passed"] == (1.0 if g["verdict"] == "Pass" else 0.0)
    p = r.data.params
    assert (p["rollout"], p["namespace"], p["generation"], p["holdout.sha256"]) == (name, scenario.ns, "1", digest)
    assert p["candidate.image"] == "registry.example/churn:8" and p["baseline.image"] == "registry.example/churn:7"
    assert r.data.tags["decision"] == "Promote" and r.info.status == "FINISHED"
    names = {a.path for a in MlflowClient(tracking_uri=mlflow_server.url).list_artifacts(t["runId"])}
    assert names == {"report.json", "report.md", "index.html"}
    # the registered model's version of this evaluation is the champion once the promotion settled
    end = time.monotonic() + 60
    while (t := scenario.status(name)["tracking"]).get("alias") != "champion" and time.monotonic() < end:
        time.sleep(0.5)
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    champion = client.get_model_version_by_alias(f"churn-{scenario.ns}", "champion")
    assert t.get("alias") == "champion" and champion.version == t["modelVersion"] and champion.run_id == t["runId"], t
    end = time.monotonic() + 30  # the Tracked condition, written by the next reconcile of the ended rollout
    while not (c := [c for c in scenario.status(name)["conditions"] if c["type"] == "Tracked"]) and \
            time.monotonic() < end:
        time.sleep(0.5)
    assert c and (c[0]["status"], c[0]["reason"], c[0]["message"]) == ("True", "Tracked", t["url"]), c


BAD = {  # kind: (gate, words of the reason)
    "worse": ({"metric": "f1", "maxDrop": 0.02}, "gate 1 failed: f1 drops by"),
    "slower": ({"metric": "latency_p99_ms", "max": 15}, "latency_p99_ms"),
    "leaking": ({"metric": "memory_growth_mib_per_10k_requests", "max": 3}, "memory_growth_mib_per_10k_requests"),
    "too-big": ({"metric": "replicas_fit", "min": 40}, "replicas_fit"),
}


def test_bad_candidates_are_rolled_back_with_the_gate_named(scenario: Scenario, models: Models) -> None:
    """Every kind at once, each with its own target: each rolls back naming its gate."""
    own = {kind: scenario.own_target(kind) for kind in BAD}
    before = {kind: sc.template() for kind, sc in own.items()}
    for kind, (gate, _) in BAD.items():
        model, mode = {"worse": (models.bad, None), "slower": (models.good, "slow"),
                       "leaking": (models.good, "leak"), "too-big": (models.good, "fat")}[kind]
        cand, base = scenario.op.serve(model, mode), scenario.op.serve(models.production)
        # a server that takes 20 ms per request one at a time would spend a minute on the default leak probe
        leak = {"load": {"duration": "1s", "warmup": "200ms", "batchSizes": [1, 8], "leakRequests": 0}} \
            if kind == "slower" else {}
        own[kind].rollout(kind, cand, base, [{"metric": "f1", "min": 0.0}, gate], **leak)
    for kind, (_, reason_words) in BAD.items():
        st = own[kind].wait_phase(kind, {"Promoted", "RolledBack", "Failed"}, timeout=300)
        assert st["phase"] == "RolledBack", (kind, st.get("message"))
        assert st["reason"] == "GatesFailed" and reason_words in st["message"], (kind, st["message"])
        gate = BAD[kind][0]
        bound = next(b for b in ("min", "max", "maxDrop") if b in gate)
        assert st["failing"] == f"{gate['metric']} {bound} {gate[bound]}" and st["weight"] == 0, (kind, st["failing"])
        assert st["decision"]["result"] == "RolledBack"
        assert own[kind].template() == before[kind]
        assert own[kind].staging_objects(kind) == []
        own[kind].assert_invariant(kind, before[kind])


def test_manual_approval_waits_then_promotes(scenario: Scenario, models: Models) -> None:
    before = scenario.template()
    scenario.rollout("manual", scenario.op.serve(models.good), scenario.op.serve(models.production), QUALITY,
                     promotion={"approval": "Manual"})
    st = scenario.wait_phase("manual", {"AwaitingApproval", "RolledBack", "Failed"})
    assert st["phase"] == "AwaitingApproval"
    time.sleep(3)
    assert scenario.status("manual")["phase"] == "AwaitingApproval" and scenario.template() == before
    scenario.assert_invariant("manual", before)
    scenario.annotate("manual", "modelrollout.dev/approve")
    assert scenario.wait_phase("manual", {"Promoted", "RolledBack", "Failed"})["phase"] == "Promoted"
    scenario.assert_invariant("manual", before)


def canary_promotion(ns: str) -> dict[str, Any]:
    """Two steps whose live gate reads the candidate's errors in the rollout's own namespace, and a
    dry-run gate that fails every time (it asks for errors) but never decides."""
    errors = f'sum(modelserver_errors_total{{namespace="{ns}", model="m"}})'
    return {"canary": {"steps": [{"weight": 25, "pause": "3s"}, {"weight": 50, "pause": "3s"}]},
            "gates": [{"name": "no-errors", "query": errors, "max": 0},
                      {"name": "dry-wants-errors", "query": errors, "min": 1, "dryRun": True}]}


def test_abort_during_canary_restores_production(scenario: Scenario, models: Models, prometheus: Prometheus) -> None:
    before = scenario.template()
    cand = scenario.op.serve(models.good)
    prometheus.configure([], namespaced=(scenario.ns, [cand.removeprefix("http://")]))
    scenario.rollout("abort", cand, scenario.op.serve(models.production), QUALITY,
                     promotion={"canary": {"steps": [{"weight": 50, "pause": "10m"}]},
                     "gates": canary_promotion(scenario.ns)["gates"]})
    st = scenario.wait_phase("abort", {"Canary", "RolledBack", "Failed"})
    assert st["phase"] == "Canary"
    canary = scenario.get("deployment", "churn-canary")
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/churn:8"
    assert canary["spec"]["template"]["metadata"]["labels"]["app"] == "churn"  # same Service selector
    assert scenario.template() == before
    scenario.annotate("abort", "modelrollout.dev/abort")
    st = scenario.wait_phase("abort", {"RolledBack", "Promoted", "Failed"})
    assert st["phase"] == "RolledBack" and st["reason"] == "Aborted"
    assert "production is as before" in st["message"]
    assert scenario.template() == before
    assert scenario.get("deployment", "churn")["spec"]["replicas"] == 2  # scaled back up
    assert scenario.cluster.kubectl("-n", scenario.ns, "get", "deployment", "churn-canary", check=False).returncode != 0


def test_canary_gate_failing_in_prometheus_restores_production(scenario: Scenario, models: Models,
                                                               prometheus: Prometheus) -> None:
    before = scenario.template()
    cand = scenario.op.serve(models.good)
    prometheus.configure([], namespaced=(scenario.ns, [cand.removeprefix("http://")]))
    scenario.rollout("canary-fails", cand, scenario.op.serve(models.production), QUALITY,
                     promotion=canary_promotion(scenario.ns))
    scenario.wait_phase("canary-fails", {"Canary", "RolledBack", "Failed"})

    async def live_errors() -> None:  # live traffic that the candidate cannot serve
        async with ModelClient(Endpoint(cand, "m")) as c:
            for _ in range(5):
                with pytest.raises(ServerError):
                    await c.predict(__import__("numpy").zeros((1, 3)))

    asyncio.run(live_errors())
    st = scenario.wait_phase("canary-fails", {"RolledBack", "Promoted", "Failed"})
    assert st["phase"] == "RolledBack" and st["reason"] == "CanaryGateFailed", st.get("message")
    assert "no-errors" in st["message"] and "above the maximum 0" in st["message"]
    assert prometheus.query('sum(modelserver_errors_total{model="m"})')[0]["value"][1] == "5"
    assert scenario.template() == before
    scenario.assert_invariant("canary-fails", before)


def test_canary_steps_pass_then_promote(scenario: Scenario, models: Models, prometheus: Prometheus) -> None:
    before = scenario.template()
    cand = scenario.op.serve(models.good)
    prometheus.configure([], namespaced=(scenario.ns, [cand.removeprefix("http://")]))
    scenario.rollout("canary-ok", cand, scenario.op.serve(models.production), QUALITY,
                     promotion=canary_promotion(scenario.ns))
    seen, production = set(), set()
    end = time.monotonic() + 180
    while time.monotonic() < end:
        target = scenario.get("deployment", "churn")
        t = target["spec"]["template"]
        st = scenario.status("canary-ok")  # read after the template: it can only be newer
        if st.get("phase") == "Canary" and st.get("canary"):
            seen.add(st["canary"].get("weight"))
            production.add(target["spec"]["replicas"])
        if t != before:  # production may only change once every gate passed
            assert (st.get("evaluation") or {}).get("outcome") == "Promote"
            assert st.get("phase") in {"Canary", "Promoted"}
        if st.get("phase") in {"Promoted", "RolledBack", "Failed"}:
            break
        time.sleep(0.3)
    assert st["phase"] == "Promoted", st.get("message")
    assert seen == {25, 50}
    # 2 replicas in all: at 25 % and at 50 % the canary has 1 and production gives way to 1, then gets 2 back
    assert 1 in production and production <= {1, 2}, production
    assert scenario.get("deployment", "churn")["spec"]["replicas"] == 2
    assert scenario.cluster.kubectl("-n", scenario.ns, "get", "deployment", "churn-canary", check=False).returncode != 0
    scenario.assert_invariant("canary-ok", before)
    # every measurement is recorded: in status, and as the operator's Prometheus series
    steps = st["canary"]["steps"]
    assert [(r["step"], r["weight"], r["outcome"]) for r in steps] == [(1, 25, "Passed"), (2, 50, "Passed")], steps
    for r in steps:
        m = {x["gate"]: x for x in r["measurements"]}
        assert (m["no-errors"]["verdict"], m["no-errors"]["value"], m["no-errors"]["threshold"]) == ("Pass", 0, 0)
        assert (m["dry-wants-errors"]["verdict"], m["dry-wants-errors"]["dryRun"]) == ("Fail", True)
    metrics = series(scenario.op.metrics())
    where = {"rollout": "canary-ok", "namespace": scenario.ns}
    for step in ("1", "2"):
        assert metrics[series_key("modelrollout_canary_gate_value", **where, gate="no-errors", step=step,
                            variant="canary")] == 0
        assert metrics[series_key("modelrollout_canary_gate_measurements", **where, gate="dry-wants-errors", step=step,
                            verdict="Fail")] == 1


def test_deleting_mid_way_removes_staging_and_leaves_production(scenario: Scenario, models: Models) -> None:
    before = scenario.template()
    scenario.rollout("gone", scenario.op.serve(models.good, "slow"), scenario.op.serve(models.production), QUALITY,
                     load={"duration": "20s", "batchSizes": [1]})
    scenario.wait_phase("gone", {"Evaluating"})
    assert len(scenario.staging_objects("gone")) == 4
    scenario.cluster.kubectl("-n", scenario.ns, "delete", "modelrollout", "gone", "--timeout=60s")
    end = time.monotonic() + 60
    while scenario.staging_objects("gone") and time.monotonic() < end:
        time.sleep(0.5)
    assert scenario.staging_objects("gone") == []
    assert scenario.template() == before


def test_spec_change_mid_rollout_restarts_the_evaluation_with_the_new_spec(scenario: Scenario,
                                                                           models: Models) -> None:
    before = scenario.template()
    cand, base = scenario.op.serve(models.good), scenario.op.serve(models.production)
    load = {"duration": "3s", "warmup": "200ms", "batchSizes": [1, 8], "leakRequests": 2000}
    scenario.rollout("respec", cand, base, QUALITY, load=load)
    scenario.wait_phase("respec", {"Evaluating"})
    strict = [*QUALITY, {"metric": "f1", "min": 0.999}]  # the same candidate cannot pass this
    scenario.rollout("respec", cand, base, strict, load=load)
    st = scenario.wait_phase("respec", {"Promoted", "RolledBack", "Failed"})
    assert st["phase"] == "RolledBack" and st["reason"] == "GatesFailed", st.get("message")
    assert "0.999" in st["message"], st["message"]
    assert st["observedGeneration"] == 2 and (st.get("evaluation") or {}).get("generation") == 2
    strict_gate = [g for g in st["gates"] if g["metric"] == "f1" and g["threshold"] == 0.999]
    assert strict_gate and strict_gate[0]["verdict"] == "Fail"
    events = scenario.get("events", "--field-selector", "involvedObject.name=respec")["items"]
    changed = [e["message"] for e in events if e["reason"] == "SpecChanged"]
    assert changed and "evaluation restarted with the new spec" in changed[0], [e["reason"] for e in events]
    assert scenario.template() == before and scenario.staging_objects("respec") == []
    scenario.assert_invariant("respec", before)
