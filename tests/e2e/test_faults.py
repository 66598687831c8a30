"""The operator under faults, restarts, bad data and contention, on the real control plane.

Each test also checks the invariant: production never carries a template whose gates did
not all pass.
"""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.e2e.conftest import TARGET, Models, Scenario
from tests.integration.conftest import free_port

pytestmark = pytest.mark.e2e
TERMINAL = {"Promoted", "RolledBack", "Failed"}
GATES = [{"metric": "f1", "min": 0.5}]


SERVER_FAULTS = {
    "refused": "cannot connect",
    "500": "HTTP 500",
    "hang": "no answer within 2s",
    "close": "connection closed mid-response",
    "malformed": "response is not JSON",
    "wrong_count": "1 predictions of shape [1] for 228 rows",
    "huge": "exceeds the limit of 1048576",
}


def test_model_server_faults_roll_back_with_the_fault_named(scenario: Scenario, models: Models) -> None:
    """Every fault at once (each its own target): each rolls back naming its fault, the operator stays up."""
    cases = {f"fault-{mode.replace('_', '-')}": (mode, words) for mode, words in SERVER_FAULTS.items()}
    own = {name: scenario.own_target(name) for name in cases}
    before = {name: sc.template() for name, sc in own.items()}
    for name, (mode, _) in cases.items():
        cand = f"http://127.0.0.1:{free_port()}" if mode == "refused" else scenario.op.serve(models.good, mode)
        # the evaluation waits up to readyTimeout for a server that refuses connections: 10 s is plenty here
        own[name].rollout(name, cand, scenario.op.serve(models.production), GATES,
                          serving={"modelName": "m", "timeout": "2s", "maxResponseSize": "1Mi"},
                          staging={"readyTimeout": "10s" if mode == "refused" else "60s"})
    wrong = []
    for name, (_, words) in cases.items():
        st = own[name].wait_phase(name, TERMINAL)
        if not (st["phase"] == "RolledBack" and st["reason"] == "EvaluationFailed" and words in st["message"]
                and "candidate server" in st["message"]):
            wrong.append((name, st.get("phase"), st.get("reason"), st.get("message")))
    assert not wrong, wrong
    for name, sc in own.items():
        assert sc.template() == before[name] and sc.staging_objects(name) == [], name
        sc.assert_invariant(name, before[name])
    assert scenario.op.proc is not None and scenario.op.proc.poll() is None  # the operator stays up


def put_holdout(scenario: Scenario, key: str, data: bytes) -> None:
    scenario.cluster.kubectl("-n", scenario.ns, "create", "configmap", f"h-{key.split('.')[0]}",
                             f"--from-file={key}=/dev/stdin", input=data.decode("latin-1"))


HOLDOUT_FAULTS = {
    "empty": "the file is empty",
    "wrong-columns": "label column 'label' not found",
    "nan-labels": "label column 'label' has 3 missing values",
    "unknown-labels": "labels ['maybe'] are not among the model's classes",
    "too-large": "is more than spec.holdout.maxSize (1024 bytes)",
}


def test_bad_holdout_data_fails_with_a_clear_condition(scenario: Scenario, models: Models) -> None:
    """Every bad hold-out at once (each its own target): each ends with the problem named."""
    df = pd.read_csv(io.StringIO(models.holdout_csv))
    data = {
        "empty": b"",
        "wrong-columns": df.rename(columns={"label": "target"}).to_csv(index=False).encode(),
        "nan-labels": df.assign(label=df["label"].where(df.index >= 3)).to_csv(index=False).encode(),
        "unknown-labels": df.assign(label=np.where(df.index == 0, "maybe", df["label"].astype(str))).to_csv(
            index=False).encode(),
        "too-large": df.to_csv(index=False).encode(),
    }
    own = {case: scenario.own_target(case) for case in HOLDOUT_FAULTS}
    before = {case: sc.template() for case, sc in own.items()}
    for case in HOLDOUT_FAULTS:
        put_holdout(scenario, f"{case}.csv", data[case])
        holdout: dict[str, Any] = {"configMapRef": {"name": f"h-{case}", "key": f"{case}.csv"},
                                   "labelColumn": "label"}
        if case == "too-large":
            holdout["maxSize"] = "1Ki"
        own[case].rollout(case, scenario.op.serve(models.good), scenario.op.serve(models.production), GATES,
                          holdout=holdout)
    wrong = []
    for case, words in HOLDOUT_FAULTS.items():
        st = own[case].wait_phase(case, TERMINAL)
        # read before staging (Failed, nothing created), except labels checked against the model's classes
        expected = {"Failed", "RolledBack"} if case == "unknown-labels" else {"Failed"}
        if st.get("phase") not in expected or words not in st.get("message", ""):
            wrong.append((case, st.get("phase"), st.get("message")))
    assert not wrong, wrong
    for case, sc in own.items():
        assert sc.template() == before[case], case
        if case != "unknown-labels":
            assert sc.staging_objects(case) == [], case
        sc.assert_invariant(case, before[case])


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
    """How many pod templates production has had (the Deployment's revision): canary steps scale it,
    which bumps metadata.generation, but only a template write makes a new revision."""
    return int(scenario.get("deployment", scenario.target)["metadata"]["annotations"]
               ["deployment.kubernetes.io/revision"])


def _revisions_become(scenario: Scenario, expected: int) -> int:
    """The revision once the deployment controller has counted the last template write (it lags a moment)."""
    end = time.monotonic() + 15
    while (seen := _generation(scenario)) != expected and time.monotonic() < end:
        time.sleep(0.5)
    return seen


# Where the operator is SIGKILLed: (phase, canary step or None, seconds after reaching it).
KILL_POINTS: dict[str, tuple[str | None, int | None, float]] = {
    "before-first-reconcile": (None, None, 0),  # applied while the operator is down
    "staging": ("Staging", None, 1.5),
    "evaluating": ("Evaluating", None, 0),
    "mid-evaluation": ("Evaluating", None, 2),
    "awaiting-approval": ("AwaitingApproval", None, 0),
    "canary-step-1": ("Canary", 0, 0),
    "mid-canary-step-1": ("Canary", 0, 2),
    "canary-step-2": ("Canary", 1, 0),
    "mid-canary-step-2": ("Canary", 1, 2),
    "promoted": ("Promoted", None, 0),
}


def _progress(scenario: Scenario, name: str, until: tuple[str, int | None] | None, approve: bool,
              timeout: float = 180) -> dict[str, Any]:
    """Follow a rollout until `until` (phase, canary step) or a terminal phase, approving on the way."""
    end = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < end:
        st = scenario.status(name)
        phase, step = st.get("phase"), (st.get("canary") or {}).get("step")
        if until is not None and phase == until[0] and until[1] in (None, step):
            return st
        if phase in TERMINAL:
            assert until is None or until[0] in TERMINAL, f"{name} ended {phase} before {until}: {st.get('message')}"
            return st
        if phase == "AwaitingApproval" and approve:
            scenario.annotate(name, "modelrollout.dev/approve")
        time.sleep(0.3)
    raise AssertionError(f"{name} never reached {until}; status: {st}")


@pytest.mark.parametrize("kill_at", list(KILL_POINTS))
def test_operator_killed_at_every_phase_boundary_resumes_to_the_same_decision(scenario: Scenario, models: Models,
                                                                              kill_at: str) -> None:
    before, gen = scenario.template(), _generation(scenario)
    op = scenario.op
    phase, step, delay = KILL_POINTS[kill_at]
    name = f"kill-{kill_at}"
    if phase is None:
        op.stop(kill=True)
    if phase == "Staging":  # no node takes the staging pods until the taint goes: Staging holds
        scenario.hold_staging(True)
    gates = [*GATES, {"metric": "f1", "maxDrop": 0.02}]
    scenario.rollout(name, op.serve(models.good), op.serve(models.production), gates,
                     # no leak probe: the claim is resuming after a kill, and it halves the evaluation
                     load={"duration": "1s", "warmup": "200ms", "batchSizes": [1, 8], "leakRequests": 0},
                     quality={"resamples": 100},
                     promotion={"approval": "Manual",
                                "canary": {"steps": [{"weight": 25, "pause": "3s"}, {"weight": 50, "pause": "3s"}]}})
    if phase is not None:
        _progress(scenario, name, (phase, step), approve=phase != "AwaitingApproval")
        time.sleep(delay)
        op.stop(kill=True)  # SIGKILL: no cleanup, no goodbye
    if phase == "Staging":
        scenario.hold_staging(False)  # staging pods may now be scheduled
    if phase == "AwaitingApproval":
        scenario.annotate(name, "modelrollout.dev/approve")  # approved while the operator is down
    time.sleep(1.5)
    objs = scenario.staging_objects(name)  # staging (2 Deployments, 2 Services) and at most one canary
    assert len(objs) == len(set(objs)) <= 5, objs
    op.restart()
    st = _progress(scenario, name, None, approve=True)
    assert st["phase"] == "Promoted", st.get("message")
    if phase == "Promoted":
        time.sleep(3)  # a restarted operator must not act on a decided rollout again
    assert _revisions_become(scenario, gen + 1) == gen + 1  # production's template changed exactly once
    assert scenario.get("deployment", scenario.target)["spec"]["replicas"] == 2  # as many as before the canary
    deploys = scenario.cluster.kubectl("-n", scenario.ns, "get", "deploy", "-o", "name").stdout.split()
    assert deploys == [f"deployment.apps/{scenario.target}"]  # no duplicates left behind
    assert scenario.staging_objects(name) == []
    assert re.search("registry.example/churn:8", str(scenario.template()))
    scenario.assert_invariant(name, before)


def test_operator_killed_mid_evaluation_of_a_bad_candidate_still_rolls_back(scenario: Scenario,
                                                                            models: Models) -> None:
    before, gen = scenario.template(), _generation(scenario)
    op = scenario.op
    scenario.rollout("kill-bad", op.serve(models.bad), op.serve(models.production), GATES,
                     load={"duration": "3s", "warmup": "200ms", "batchSizes": [1], "leakRequests": 0})
    _progress(scenario, "kill-bad", ("Evaluating", None), approve=False)
    time.sleep(1)
    op.stop(kill=True)
    op.restart()
    st = _progress(scenario, "kill-bad", None, approve=False)
    assert st["phase"] == "RolledBack" and st["reason"] == "GatesFailed" and "f1" in st["message"], st
    assert _generation(scenario) == gen and scenario.template() == before
    assert scenario.staging_objects("kill-bad") == []
    scenario.assert_invariant("kill-bad", before)


@pytest.mark.parametrize("during", ["Evaluating", "Canary"])
def test_api_server_restarted_mid_rollout_the_operator_carries_on(scenario: Scenario, models: Models,
                                                                  during: str) -> None:
    before, gen = scenario.template(), _generation(scenario)
    op = scenario.op
    name = f"apiserver-{during.lower()}"
    scenario.rollout(name, op.serve(models.good), op.serve(models.production), GATES,
                     load={"duration": "4s", "warmup": "200ms", "batchSizes": [1, 8], "leakRequests": 2000},
                     promotion={"canary": {"steps": [{"weight": 50, "pause": "8s"}]}},
                     # in one full run the canary was not Available within the usual 60 s of a restart
                     # (cause not pinned down; the same test alone passes): the claim here is recovery, not speed
                     staging={"readyTimeout": "150s"})
    _progress(scenario, name, (during, None), approve=False)
    scenario.cluster.restart_apiserver(down_seconds=3)
    st = _progress(scenario, name, None, approve=False, timeout=300)
    pods = scenario.cluster.kubectl("-n", scenario.ns, "get", "deploy,pods,events", "-o", "wide", check=False).stdout
    assert st["phase"] == "Promoted", (st.get("message"), pods[-4000:], scenario.cluster.log_tail("kwok"))
    assert op.proc is not None and op.proc.poll() is None  # reconnected, not crashed
    assert _revisions_become(scenario, gen + 1) == gen + 1
    assert scenario.staging_objects(name) == []
    scenario.assert_invariant(name, before)


def test_twenty_rollouts_at_once_all_decide_with_evaluations_bounded(scenario: Scenario, models: Models) -> None:
    op, ns, n = scenario.op, scenario.ns, 20
    k = scenario.cluster.kubectl
    good, prod = op.serve(models.good), op.serve(models.production)
    bound = int(op.env["MODELROLLOUT_MAX_CONCURRENT_EVALUATIONS"])
    k("apply", "-f", "-", input="---".join(TARGET.format(name=f"svc{i}", ns=ns) for i in range(n)))
    k("-n", ns, "wait", "--for=condition=Available", "deployment", "--all", "--timeout=120s")
    # Hold staging (no node takes staging pods until the taint goes), so the queue is seen whole: the
    # operator's default lets 4 rollouts stage at once, and the other 16 wait (StagingQueued).
    scenario.hold_staging(True)
    bodies = [Scenario(scenario.cluster, op, ns, target=f"svc{i}").body(
        f"many-{i}", good, prod, GATES if i % 4 else [{"metric": "f1", "min": 0.99}],
        load={"duration": "1s", "warmup": "100ms", "batchSizes": [1], "leakRequests": 0},
        quality={"resamples": 100}, staging={"readyTimeout": "300s"}) for i in range(n)]
    k("apply", "-f", "-", input=yaml.safe_dump_all(bodies))  # all at once, as a burst
    held: dict[str, tuple[Any, Any]] = {}
    end = time.monotonic() + 120
    while time.monotonic() < end:
        items = json.loads(k("-n", ns, "get", "modelrollouts", "-o", "json").stdout)["items"]
        held = {r["metadata"]["name"]: ((r.get("status") or {}).get("phase"), (r.get("status") or {}).get("reason"))
                for r in items}
        if len(held) == n and all(ph in ("Staging", "Waiting") for ph, _ in held.values()):
            break
        time.sleep(1)
    waiting = sorted(name for name, (ph, why) in held.items() if (ph, why) == ("Waiting", "StagingQueued"))
    assert sum(1 for ph, _ in held.values() if ph == "Staging") == 4 and len(waiting) == n - 4, held
    scenario.hold_staging(False)

    seen, phases, staging = [], {}, []
    end = time.monotonic() + 420
    while time.monotonic() < end:
        m = re.search(r"^modelrollout_evaluations_in_progress (\S+)$", op.metrics(), re.M)
        seen.append(float(m.group(1)) if m else 0.0)
        items = json.loads(k("-n", ns, "get", "modelrollouts", "-o", "json").stdout)["items"]
        phases = {r["metadata"]["name"]: (r.get("status") or {}).get("phase") for r in items}
        staging.append(sum(1 for p in phases.values() if p in ("Staging", "Evaluating")))
        if all(p in TERMINAL for p in phases.values()):
            break
        time.sleep(0.25)
    assert all(p in TERMINAL for p in phases.values()), phases
    assert max(seen) == bound, f"evaluations in progress never reached or exceeded the bound {bound}: {max(seen)}"
    # staging stays bounded while the queue drains (status may trail the operator's own view by one write)
    assert max(staging) <= 5, staging
    expected = {f"many-{i}": ("Promoted" if i % 4 else "RolledBack") for i in range(n)}
    assert phases == expected
    assert op.proc is not None and op.proc.poll() is None
