"""The rollout state machine, transition by transition, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from modelrollout.core.decide import (
    Observed,
    canary_split,
    candidate_template,
    decide,
)
from modelrollout.core.spec import ModelRolloutSpec, parse_spec

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def spec(**promotion: Any) -> ModelRolloutSpec:
    return parse_spec({
        "targetRef": {"name": "churn"}, "task": "binary-classification", "serving": {"modelName": "m"},
        "staging": {"readyTimeout": "60s"},
        "holdout": {"configMapRef": {"name": "h", "key": "h.csv"}, "labelColumn": "y"},
        "gates": [{"metric": "f1", "min": 0.5}], "promotion": promotion})


def obs(**kw: Any) -> Observed:
    return Observed(**{"generation": 1, "now": NOW, **kw})


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_new_rollout_stages_unless_the_target_is_busy() -> None:
    assert decide(spec(), {}, obs()).action == "stage"
    s = decide(spec(), {}, obs(blocked_by="older"))
    assert (s.action, s.phase, s.reason) == ("wait", "Waiting", "TargetBusy") and "'older'" in s.message
    s = decide(spec(), {"phase": "Waiting"}, obs(queue_full="4 rollouts are staging or evaluating"))
    assert (s.action, s.phase, s.reason) == ("wait", "Waiting", "StagingQueued") and "when a slot frees" in s.message
    assert decide(spec(), {"phase": "Waiting"}, obs()).action == "stage"


def test_input_errors_fail_before_anything_is_created() -> None:
    s = decide(spec(), {}, obs(input_error="ConfigMap ns/h has no key 'h.csv'", input_reason="HoldoutNotFound"))
    assert (s.action, s.phase, s.reason) == ("fail", "Failed", "HoldoutNotFound")
    s = decide(spec(), {}, obs(target_exists=False))
    assert s.reason == "TargetNotFound" and "nothing was created" in s.message


def test_staging_waits_then_times_out_into_rollback() -> None:
    st: dict[str, Any] = {"phase": "Staging", "observedGeneration": 1, "staging": {"startedAt": ago(10)}}
    assert decide(spec(), st, obs(staging_available=False)).action == "wait"
    assert decide(spec(), st, obs(staging_available=True)).action == "evaluate"
    st["staging"]["startedAt"] = ago(61)
    s = decide(spec(), st, obs(staging_available=False))
    assert (s.action, s.reason) == ("rollback", "StagingTimeout")


def test_evaluation_outcomes() -> None:
    st: dict[str, Any] = {"phase": "Evaluating", "observedGeneration": 1}
    assert decide(spec(), st, obs()).action == "evaluate"
    assert decide(spec(), st, obs(evaluation="running")).action == "wait"
    s = decide(spec(), st, obs(evaluation="error", evaluation_error="candidate server: HTTP 500"))
    assert s.reason == "EvaluationFailed" and "HTTP 500" in s.message
    st["evaluation"] = {"outcome": "Reject", "reason": "gate 0 failed: f1", "generation": 1}
    assert decide(spec(), st, obs()).reason == "GatesFailed"
    st["evaluation"] = {"outcome": "Promote", "reason": "ok", "generation": 1}
    assert decide(spec(), st, obs()).action == "promote"
    assert decide(spec(approval="Manual"), st, obs()).action == "await_approval"
    approved = obs(annotations={"modelrollout.dev/approve": "true"})
    assert decide(spec(approval="Manual"), st, approved).action == "promote"
    canary = spec(canary={"steps": [{"weight": 10, "pause": "1m"}]})
    s = decide(canary, st, obs())
    assert (s.action, s.canary_step) == ("canary", 0)


def test_an_old_evaluation_never_promotes_a_new_spec() -> None:
    st = {"phase": "Evaluating", "observedGeneration": 1,
          "evaluation": {"outcome": "Promote", "reason": "ok", "generation": 1}}
    s = decide(spec(), st, obs(generation=2))
    assert (s.action, s.reason) == ("restart", "SpecChanged") and "generation 2" in s.message


def test_canary_measures_during_the_pause_then_next_step_or_promote() -> None:
    sp = spec(canary={"steps": [{"weight": 10, "pause": "1m"}, {"weight": 50, "pause": "1m"}]},
              gates=[{"name": "errors", "query": 'e{namespace="a"}', "max": 0, "count": 2}])
    st: dict[str, Any] = {"phase": "Canary", "observedGeneration": 1, "canary": {"step": 0, "startedAt": ago(29)}}
    assert decide(sp, st, obs(canary_available=True)).action == "wait"
    st["canary"]["startedAt"] = ago(30)
    assert decide(sp, st, obs(canary_available=True)).action == "measure"
    first = {"index": 0, "verdict": "Pass", "since": 30}
    st["canary"]["steps"] = [{"step": 1, "measurements": [first]}]
    s = decide(sp, st, obs(canary_available=True))
    assert s.action == "wait" and "measuring" in s.message
    st["canary"]["startedAt"] = ago(60)
    assert decide(sp, st, obs(canary_available=True)).action == "measure"
    st["canary"]["steps"] = [{"step": 1, "measurements": [first, {**first, "since": 60}]}]
    assert decide(sp, st, obs(canary_available=True)).canary_step == 1
    st["canary"] = {"step": 1, "startedAt": ago(61), "steps": [{"step": 2, "measurements": [first, first]}]}
    assert decide(sp, st, obs(canary_available=True)).action == "promote"
    st["canary"]["steps"] = [{"step": 2, "measurements": [{**first, "verdict": "Fail", "message": "errors: 3"}]}]
    s = decide(sp, st, obs(canary_available=True))
    assert (s.action, s.reason) == ("rollback", "CanaryGateFailed") and "production restored" in s.message
    assert "canary step 2" in s.message and "errors: 3" in s.message
    st["canary"]["steps"] = [{"step": 2, "measurements": [{**first, "verdict": "Error", "message": "down"}]}]
    assert decide(sp, st, obs(canary_available=True)).reason == "CanaryInconclusive"


def test_abort_wins_in_any_active_phase_and_terminal_phases_stay() -> None:
    for phase in ("Staging", "Evaluating", "AwaitingApproval", "Canary"):
        s = decide(spec(), {"phase": phase, "observedGeneration": 1},
                   obs(annotations={"modelrollout.dev/abort": "true"}))
        assert (s.action, s.reason) == ("rollback", "Aborted")
    done = {"phase": "RolledBack", "observedGeneration": 1, "reason": "GatesFailed", "message": "m"}
    assert decide(spec(), done, obs(annotations={"modelrollout.dev/abort": "true"})).action == "none"
    s = decide(spec(), done, obs(annotations={"modelrollout.dev/retry": "1"}))
    assert (s.action, s.reason) == ("restart", "Retry")
    assert decide(spec(), {**done, "retried": "1"}, obs(annotations={"modelrollout.dev/retry": "1"})).action == "none"


def test_canary_weights_are_the_candidates_share_of_a_constant_total_within_one_pod() -> None:
    for total in range(1, 21):
        for weight in range(1, 101):
            canary, production = canary_split(total, weight)
            assert canary >= 1 and (production >= 1) == (weight < 100)
            if weight == 100:
                assert (canary, production) == (total, 0)
            elif total > 1 and canary < total:  # room for both at this total
                assert canary + production == total
                assert abs(canary - total * weight / 100) <= 0.5 or canary == 1, (total, weight, canary)
    assert canary_split(10, 25) == (3, 7)  # 2.5 rounds up
    assert canary_split(2, 10) == (1, 1)  # the canary has a pod at any weight
    assert canary_split(1, 50) == (1, 1)  # and production keeps one until 100


def test_candidate_template_changes_only_the_first_container() -> None:
    t: dict[str, Any] = {"metadata": {"labels": {"app": "x"}},
         "spec": {"containers": [{"name": "s", "image": "a:1", "env": [{"name": "K", "value": "1"},
                                                                      {"name": "M", "value": "old"}]},
                                 {"name": "sidecar", "image": "proxy:1"}]}}
    c = candidate_template(t, "a:2", [{"name": "M", "value": "new"}], None)
    assert c["spec"]["containers"][0]["image"] == "a:2"
    assert c["spec"]["containers"][0]["env"] == [{"name": "K", "value": "1"}, {"name": "M", "value": "new"}]
    assert c["spec"]["containers"][1] == t["spec"]["containers"][1]
    assert t["spec"]["containers"][0]["image"] == "a:1"  # the input is not changed


def test_promote_skips_the_pause_of_the_step_it_names_or_every_step_but_never_a_failed_gate() -> None:
    sp = spec(canary={"steps": [{"weight": 10, "pause": "10m"}, {"weight": 50, "pause": "10m"}]},
              gates=[{"name": "errors", "query": 'e{namespace="a"}', "max": 0, "count": 2}])
    passed = {"index": 0, "verdict": "Pass", "since": 30}
    st: dict[str, Any] = {"phase": "Canary", "observedGeneration": 1, "canary": {
        "step": 0, "startedAt": ago(31), "steps": [{"step": 1, "measurements": [passed]}]}}
    assert decide(sp, st, obs(canary_available=True)).action == "wait"  # 9 minutes of the pause left
    s = decide(sp, st, obs(canary_available=True, annotations={"modelrollout.dev/promote": "1"}))
    assert (s.action, s.canary_step) == ("canary", 1) and "pause skipped" in s.message
    # a stale "1" does nothing at step 2; "2" at the last step promotes; "full" promotes from any step
    st["canary"] = {"step": 1, "startedAt": ago(31), "steps": [{"step": 2, "measurements": [passed]}]}
    assert decide(sp, st, obs(canary_available=True, annotations={"modelrollout.dev/promote": "1"})).action == "wait"
    s = decide(sp, st, obs(canary_available=True, annotations={"modelrollout.dev/promote": "2"}))
    assert (s.action, s.reason) == ("promote", "PromotedByUser")
    st["canary"]["step"] = 0
    st["canary"]["steps"] = [{"step": 1, "measurements": [passed]}]
    s = decide(sp, st, obs(canary_available=True, annotations={"modelrollout.dev/promote": "full"}))
    assert (s.action, s.phase, s.reason) == ("promote", "Promoted", "PromotedByUser") and "skipped" in s.message
    st["canary"]["steps"] = [{"step": 1, "measurements": [{**passed, "verdict": "Fail", "message": "errors: 3"}]}]
    s = decide(sp, st, obs(canary_available=True, annotations={"modelrollout.dev/promote": "full"}))
    assert (s.action, s.reason) == ("rollback", "CanaryGateFailed")  # a failed live gate still wins
