"""The operator under faults, restarts, bad data and contention, on the real control plane.

Each test also checks the invariant: production never carries a template whose gates did
not all pass.
"""

from __future__ import annotations

import io
import re
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.e2e.conftest import Models, Scenario
from tests.integration.conftest import free_port

pytestmark = pytest.mark.e2e
TERMINAL = {"Promoted", "RolledBack", "Failed"}
GATES = [{"metric": "f1", "min": 0.5}]


@pytest.mark.parametrize(("mode", "words"), [
    ("refused", "cannot connect"),
    ("500", "HTTP 500"),
    ("hang", "no answer within 2s"),
    ("close", "connection closed mid-response"),
    ("malformed", "response is not JSON"),
    ("wrong_count", "1 predictions of shape [1] for 228 rows"),
    ("huge", "exceeds the limit of 1048576"),
])
def test_model_server_faults_roll_back_with_the_fault_named(scenario: Scenario, models: Models, mode: str,
                                                            words: str) -> None:
    before = scenario.template()
    cand = f"http://127.0.0.1:{free_port()}" if mode == "refused" else scenario.op.serve(models.good, mode)
    name = f"fault-{mode.replace('_', '-')}"
    scenario.rollout(name, cand, scenario.op.serve(models.production), GATES,
                     serving={"modelName": "m", "timeout": "2s", "maxResponseSize": "1Mi"})
    st = scenario.wait_phase(name, TERMINAL)
    assert st["phase"] == "RolledBack" and st["reason"] == "EvaluationFailed", st.get("message")
    assert words in st["message"] and "candidate server" in st["message"], st["message"]
    assert scenario.template() == before and scenario.staging_objects(name) == []
    assert scenario.op.proc is not None and scenario.op.proc.poll() is None  # the operator stays up
    scenario.assert_invariant(name, before)


def put_holdout(scenario: Scenario, key: str, data: bytes) -> None:
    scenario.cluster.kubectl("-n", scenario.ns, "create", "configmap", f"h-{key.split('.')[0]}",
                             f"--from-file={key}=/dev/stdin", input=data.decode("latin-1"))


@pytest.mark.parametrize(("case", "words"), [
    ("empty", "the file is empty"),
    ("wrong-columns", "label column 'label' not found"),
    ("nan-labels", "label column 'label' has 3 missing values"),
    ("unknown-labels", "labels ['maybe'] are not among the model's classes"),
    ("too-large", "is larger than the limit of 1024"),
])
def test_bad_holdout_data_fails_with_a_clear_condition(scenario: Scenario, models: Models, case: str,
                                                       words: str) -> None:
    before = scenario.template()
    df = pd.read_csv(io.StringIO(models.holdout_csv))
    data = {
        "empty": b"",
        "wrong-columns": df.rename(columns={"label": "target"}).to_csv(index=False).encode(),
        "nan-labels": df.assign(label=df["label"].where(df.index >= 3)).to_csv(index=False).encode(),
        "unknown-labels": df.assign(label=np.where(df.index == 0, "maybe", df["label"].astype(str))).to_csv(
            index=False).encode(),
        "too-large": df.to_csv(index=False).encode(),
    }[case]
    put_holdout(scenario, f"{case}.csv", data)
    cand, base = scenario.op.serve(models.good), scenario.op.serve(models.production)
    holdout: dict[str, Any] = {"configMapRef": {"name": f"h-{case}", "key": f"{case}.csv"}, "labelColumn": "label"}
    if case == "too-large":
        holdout["maxSize"] = "1Ki"
    scenario.rollout(case, cand, base, GATES, holdout=holdout)
    st = scenario.wait_phase(case, TERMINAL)
    assert st["phase"] in {"Failed", "RolledBack"}, st.get("message")
    assert words in st["message"], st["message"]
    assert scenario.template() == before
    if case != "unknown-labels":  # read before staging: nothing was created
        assert st["phase"] == "Failed" and scenario.staging_objects(case) == []
    scenario.assert_invariant(case, before)


def test_a_second_rollout_of_the_same_target_waits_then_runs(scenario: Scenario, models: Models) -> None:
    before = scenario.template()
    slow = scenario.op.serve(models.good, "slow")
    base = scenario.op.serve(models.production)
    scenario.rollout("first", slow, base, GATES, load={"duration": "3s", "batchSizes": [1], "leakRequests": 0})
    scenario.wait_phase("first", {"Staging", "Evaluating"})
    scenario.rollout("second", scenario.op.serve(models.good), base, [*GATES, {"metric": "f1", "maxDrop": 0.02}])
    st = scenario.wait_phase("second", {"Waiting"}, timeout=30)
    assert st["reason"] == "TargetBusy" and "rollout 'first' is active for Deployment 'churn'" in st["message"]
    waiting = next(c for c in st["conditions"] if c["type"] == "Waiting")
    assert waiting["status"] == "True"
    assert scenario.wait_phase("first", TERMINAL)["phase"] == "Promoted"
    assert scenario.wait_phase("second", TERMINAL)["phase"] == "Promoted"
    scenario.assert_invariant("second", before)


def test_model_server_credentials_come_from_a_secret(scenario: Scenario, models: Models) -> None:
    before = scenario.template()
    scenario.cluster.kubectl("-n", scenario.ns, "create", "secret", "generic", "model-token",
                             "--from-literal=token=s3cret")
    cand, base = scenario.op.serve(models.good, "auth"), scenario.op.serve(models.production, "auth")
    scenario.rollout("no-token", cand, base, GATES)
    st = scenario.wait_phase("no-token", TERMINAL)
    assert st["phase"] == "RolledBack" and "HTTP 401" in st["message"]
    scenario.rollout("token", cand, base, GATES,
                     serving={"modelName": "m", "authSecretRef": {"name": "model-token", "key": "token"}})
    assert scenario.wait_phase("token", TERMINAL)["phase"] == "Promoted"
    spec = scenario.get("modelrollout", "token")["spec"]
    assert "s3cret" not in str(spec)  # the manifest names the Secret, never the credential
    scenario.assert_invariant("token", before)


def _generation(scenario: Scenario) -> int:
    return int(scenario.get("deployment", scenario.target)["metadata"]["generation"])


@pytest.mark.parametrize("kill_at", ["Staging", "Evaluating", "Canary"])
def test_operator_killed_mid_rollout_resumes_to_the_same_decision(scenario: Scenario, models: Models,
                                                                  kill_at: str) -> None:
    before, gen = scenario.template(), _generation(scenario)
    op = scenario.op
    name = f"kill-{kill_at.lower()}"
    gates = [*GATES, {"metric": "f1", "maxDrop": 0.02}]
    scenario.rollout(name, op.serve(models.good), op.serve(models.production), gates,
                     load={"duration": "2s", "warmup": "200ms", "batchSizes": [1, 8], "leakRequests": 2000},
                     promotion={"canary": {"steps": [{"weight": 50, "pause": "4s"}]}})
    scenario.wait_phase(name, {kill_at, *TERMINAL})
    op.stop(kill=True)  # SIGKILL: no cleanup, no goodbye
    time.sleep(2)
    objs = scenario.staging_objects(name)  # staging (2 Deployments, 2 Services) and at most one canary
    assert len(objs) == len(set(objs)) <= 5, objs
    op.restart()
    st = scenario.wait_phase(name, TERMINAL)
    assert st["phase"] == "Promoted", st.get("message")
    assert _generation(scenario) == gen + 1  # production changed exactly once
    deploys = scenario.cluster.kubectl("-n", scenario.ns, "get", "deploy", "-o", "name").stdout.split()
    assert deploys == [f"deployment.apps/{scenario.target}"]  # no duplicates left behind
    assert re.search("registry.example/churn:8", str(scenario.template()))
    scenario.assert_invariant(name, before)
