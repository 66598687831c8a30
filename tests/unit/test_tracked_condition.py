"""The Tracked condition: MLflow's answer in the conditions, beside (never instead of) the decision."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from modelrollout.core.decide import Step
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.status import StatusWriter, conditions, tracked
from tests.unit.fake_kube import FakeKube

T0, T1 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC), datetime(2026, 12, 4, 10, 5, tzinfo=UTC)
OK = {"state": "Tracked", "runId": "r1", "url": "http://mlflow/#/experiments/1/runs/r1"}


def test_tracked_is_true_with_the_url_and_false_with_the_reason_of_either_failure() -> None:
    assert tracked(None, 1, None, T0) is None and tracked({"experiment": "e"}, 1, None, T0) is None
    ok = tracked(OK, 2, None, T0)
    assert ok == {"type": "Tracked", "status": "True", "reason": "Tracked", "message": OK["url"],
                  "lastTransitionTime": "2026-12-04T10:00:00Z", "observedGeneration": 2}
    down = tracked({"state": "Failed", "message": "MLflow at http://m: ConnectionError"}, 2, ok, T1)
    assert down is not None and (down["status"], down["reason"], down["lastTransitionTime"]) == (
        "False", "TrackingFailed", "2026-12-04T10:05:00Z")
    reg = tracked({**OK, "registryMessage": "no model version registered: refused"}, 2, down, T1)
    assert reg is not None and (reg["reason"], reg["message"]) == ("RegistryFailed", "no model version registered: "
                                                                   "refused")
    assert tracked(OK, 2, ok, T1)["lastTransitionTime"] == "2026-12-04T10:00:00Z"  # type: ignore[index]


def test_a_transition_keeps_it_and_a_restart_drops_it() -> None:
    step = Step("none", "Promoted", "Promoted", "every gate passed")
    with_run = conditions([], step, 1, T0, OK)
    assert [c["type"] for c in with_run] == ["Ready", "Progressing", "Waiting", "Tracked"]
    restart = Step("restart", "Pending", "Retry", "retry requested")
    assert [c["type"] for c in conditions(with_run, restart, 1, T1, None)] == ["Ready", "Progressing", "Waiting"]


def test_an_ended_rollout_gets_the_condition_when_mlflow_answers_late_and_only_once() -> None:
    kube = FakeKube()
    step = Step("none", "RolledBack", "GatesFailed", "gate 0 failed")
    st = {"phase": "RolledBack", "conditions": conditions([], step, 3, T0), "tracking": {
        "state": "Failed", "message": "MLflow at http://m: ReadTimeout"}}
    kube.rollouts["ml", "r"] = {"metadata": {"name": "r", "namespace": "ml"}, "status": st}
    w = StatusWriter(kube, OperatorMetrics(CollectorRegistry()))
    meta = {"name": "r", "namespace": "ml"}
    asyncio.run(w.sync_tracked(meta, st, 3))
    got = kube.rollouts["ml", "r"]["status"]["conditions"]
    assert [c["type"] for c in got] == ["Ready", "Progressing", "Waiting", "Tracked"]
    assert got[3]["status"] == "False" and got[3]["message"] == "MLflow at http://m: ReadTimeout"
    kube.rollouts["ml", "r"]["status"]["conditions"] = "sentinel"  # type: ignore[assignment]
    asyncio.run(w.sync_tracked(meta, {**st, "conditions": got}, 3))
    assert kube.rollouts["ml", "r"]["status"]["conditions"] == "sentinel"  # nothing new: no write


def test_the_weight_and_failing_columns() -> None:
    from modelrollout.status import failing, weight

    gates = [{"metric": "f1", "bound": "min", "threshold": 0.9, "verdict": "Pass"},
             {"metric": "latency_p99_ms", "bound": "max", "threshold": 15.0, "verdict": "Fail", "dryRun": True},
             {"metric": "replicas_fit", "bound": "min", "threshold": 40.0, "verdict": "Inconclusive"}]
    assert failing({"gates": gates}) == "replicas_fit min 40"  # a dry run never blocks
    assert failing({"gates": gates[:1]}) == "none"
    canary = {"steps": [{"step": 2, "measurements": [{"gate": "errors", "verdict": "Fail"}]}], "weight": 50}
    assert failing({"gates": gates[:1], "canary": canary}) == "errors at canary step 2"
    assert (weight("Canary", {"canary": canary}), weight("Promoted", {}), weight("RolledBack", {"canary": canary})) \
        == (50, 100, 0)


def test_an_ended_rollout_ticks_until_the_late_mlflow_answer_is_in_status() -> None:
    from modelrollout.status import tracking_behind

    step = Step("none", "Promoted", "Promoted", "every gate passed")
    before = {"phase": "Promoted", "conditions": conditions([], step, 1, T0)}
    assert not tracking_behind(before)  # nothing from MLflow (or no MLflow): no reason to tick
    late = {**before, "tracking": OK, "evaluation": {"generation": 1, "attempt": ""},
            "history": [{"generation": 1, "attempt": "", "result": "Promoted"}]}
    assert tracking_behind(late)
    synced = {**late, "conditions": conditions([], step, 1, T0, OK),
              "history": [{"generation": 1, "attempt": "", "result": "Promoted", "mlflowRunId": "r1"}]}
    assert not tracking_behind(synced)
    assert tracking_behind({**synced, "history": late["history"]})  # the run id alone still missing
