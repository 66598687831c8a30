"""The operator under faults, restarts, bad data and contention, on the real control plane.

Each test also checks the invariant: production never carries a template whose gates did
not all pass.
"""

from __future__ import annotations

import io
import json
import re
import time
from datetime import UTC, datetime
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


# Where the operator is SIGKILLed, one rollout each: (phase, canary step or None, seconds into it).
# Every rollout is applied while the operator is down (before its first reconcile) and staging is held
# until "kill-staging" has been staging a while; the rest are the kill loop's.
KILL_POINTS: dict[str, tuple[str, int | None, float]] = {
    "kill-staging": ("Staging", None, 1.5),
    "kill-evaluating": ("Evaluating", None, 0),
    "kill-mid-evaluation": ("Evaluating", None, 2),
    "kill-bad": ("Evaluating", None, 1),  # a bad candidate: still rolled back
    "kill-awaiting-approval": ("AwaitingApproval", None, 0),  # and approved while the operator is down
    "kill-canary-step-1": ("Canary", 0, 0),
    "kill-mid-canary-step-1": ("Canary", 0, 2),
    "kill-canary-step-2": ("Canary", 1, 0),
    "kill-mid-canary-step-2": ("Canary", 1, 2),
    "kill-promoted": ("Promoted", None, 0),
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


class KillLoop:
    """SIGKILLs the session operator whenever a rollout reaches its kill point, and starts it again."""

    def __init__(self, scenario: Scenario) -> None:
        self.sc, self.kills, self.approved = scenario, 0, set[str]()

    def statuses(self) -> dict[str, dict[str, Any]]:
        items = json.loads(self.sc.cluster.kubectl("-n", self.sc.ns, "get", "modelrollouts", "-o", "json").stdout)
        return {r["metadata"]["name"]: r.get("status") or {} for r in items["items"]}

    def kill(self, while_down: list[str]) -> None:
        """Kill; approve `while_down` meanwhile; check nothing was created twice; start again."""
        self.sc.op.stop(kill=True)  # SIGKILL: no cleanup, no goodbye
        self.kills += 1
        for name in while_down:
            self.approve(name)
        time.sleep(1.5)
        for name in KILL_POINTS:  # staging (2 Deployments, 2 Services) and at most one canary
            objs = self.sc.staging_objects(name)
            assert len(objs) == len(set(objs)) <= 5, (name, objs)
        self.sc.op.restart()

    def approve(self, name: str) -> None:
        if name not in self.approved:
            self.sc.annotate(name, "modelrollout.dev/approve")
            self.approved.add(name)

    def run(self, pending: dict[str, tuple[str, int | None, float]], timeout: float = 420) -> dict[str, Any]:
        """Kill at each pending point, approving the others on the way; then follow all to their decisions."""
        first_seen: dict[str, float] = {}  # an evaluation starts again after a kill: so does its clock
        end = time.monotonic() + timeout
        sts: dict[str, dict[str, Any]] = {}
        while time.monotonic() < end:
            sts, now = self.statuses(), time.monotonic()
            due = []
            for name, (phase, step, delay) in pending.items():
                st = sts.get(name, {})
                at = st.get("phase") == phase and step in (None, (st.get("canary") or {}).get("step"))
                assert at or st.get("phase") not in TERMINAL, f"{name} ended {st.get('phase')} before its kill point"
                if at and phase == "Canary":  # the step's own clock, which a kill does not reset
                    t = datetime.fromisoformat(st["canary"]["startedAt"].replace("Z", "+00:00"))
                    due += [name] if (datetime.now(UTC) - t).total_seconds() >= delay else []
                elif at and now - first_seen.setdefault(name, now) >= delay:
                    due.append(name)
            for name, st in sts.items():
                if st.get("phase") == "AwaitingApproval" and pending.get(name, ("",))[0] != "AwaitingApproval":
                    self.approve(name)
            if due:
                self.kill(while_down=[n for n in due if pending[n][0] == "AwaitingApproval"])
                for name in due:
                    del pending[name]
                first_seen.clear()
            elif not pending and all(st.get("phase") in TERMINAL for st in sts.values()):
                return sts
            time.sleep(0.3)
        raise AssertionError(f"kill points never reached: {sorted(pending)}; statuses: {json.dumps(sts)[:3000]}")


def test_operator_killed_at_every_phase_boundary_resumes_to_the_same_decision(scenario: Scenario,
                                                                              models: Models) -> None:
    """Ten rollouts side by side (each its own target) under one kill loop: each also lives through the
    others' kills, and each still ends with its own decision, production's template written at most once."""
    op, loop = scenario.op, KillLoop(scenario)
    own = {name: scenario.own_target(name) for name in KILL_POINTS}
    before = {name: (sc.template(), _generation(sc)) for name, sc in own.items()}
    good, bad, prod = op.serve(models.good), op.serve(models.bad), op.serve(models.production)
    bodies = [sc.body(name, bad if name == "kill-bad" else good, prod, [*GATES, {"metric": "f1", "maxDrop": 0.02}],
                      # no leak probe: the claim is resuming after a kill, and it halves the evaluation
                      load={"duration": "1s", "warmup": "200ms", "batchSizes": [1, 8], "leakRequests": 0},
                      quality={"resamples": 100},
                      # pauses longer than a kill's downtime (~5 s), so no step passes unseen
                      promotion={"approval": "Manual",
                                 "canary": {"steps": [{"weight": 25, "pause": "8s"}, {"weight": 50, "pause": "8s"}]}})
              for name, sc in own.items()]
    op.stop(kill=True)  # every rollout is applied while the operator is down: before its first reconcile
    scenario.hold_staging(True)  # no node takes staging pods until the taint goes: Staging holds
    kubectl = scenario.cluster.kubectl
    kubectl("apply", "-f", "-", input=yaml.safe_dump(bodies[0]))  # first in the staging queue
    time.sleep(1.1)  # the queue orders by creation time (seconds), then by name
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(bodies[1:]))
    loop.kill(while_down=[])  # already down: wait, check, start
    _progress(own["kill-staging"], "kill-staging", ("Staging", None), approve=False)
    time.sleep(KILL_POINTS["kill-staging"][2])
    op.stop(kill=True)
    scenario.hold_staging(False)  # staging pods may now be scheduled
    loop.kill(while_down=[])
    sts = loop.run({name: point for name, point in KILL_POINTS.items() if name != "kill-staging"})
    time.sleep(3)  # a restarted operator must not act on a decided rollout again
    wrong = {n: (st.get("phase"), st.get("message")) for n, st in sts.items()
             if st.get("phase") != ("RolledBack" if n == "kill-bad" else "Promoted")}
    assert not wrong, (wrong, f"after {loop.kills} kills")
    bad_st = sts["kill-bad"]
    assert bad_st["reason"] == "GatesFailed" and "f1" in bad_st["message"], bad_st
    for name, sc in own.items():
        template, gen = before[name]
        promoted = name != "kill-bad"
        # production's template changed exactly once (or not at all), and as many replicas as before
        assert _revisions_become(sc, gen + promoted) == gen + promoted, name
        assert sc.get("deployment", sc.target)["spec"]["replicas"] == 2, name
        assert sc.staging_objects(name) == [], name
        assert ("registry.example/churn:8" in str(sc.template())) == promoted, name
        sc.assert_invariant(name, template)
    deploys = kubectl("-n", scenario.ns, "get", "deploy", "-o", "name").stdout.split()
    assert sorted(deploys) == sorted(f"deployment.apps/{t}" for t in ["churn", *(sc.target for sc in own.values())])


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
