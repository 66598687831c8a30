"""reconcile, phase by phase, on an in-memory Kube: canary weights, live gates, promotion, undo, faults.

The evaluation itself (real model servers) and the real API server are the e2e tests' job; here
a rollout starts from an evaluation that already said Promote.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from modelrollout.controller import Controller
from modelrollout.controller.settings import Settings
from modelrollout.opmetrics import OperatorMetrics
from tests.unit.fake_kube import FakeKube

NS = "ml"
TEMPLATE = {"metadata": {"labels": {"app": "churn"}}, "spec": {"containers": [{"name": "s", "image": "churn:7"}]}}


def world(steps: list[dict[str, Any]], gates: list[dict[str, Any]] | None = None,
          replicas: int = 4) -> tuple[Controller, FakeKube]:
    kube = FakeKube()
    kube.objects["Deployment", NS, "churn"] = {
        "kind": "Deployment", "metadata": {"name": "churn", "namespace": NS, "uid": "target-uid"},
        "spec": {"replicas": replicas, "template": copy.deepcopy(TEMPLATE)}}
    spec = {"targetRef": {"name": "churn"}, "task": "binary-classification", "serving": {"modelName": "m"},
            "candidate": {"image": "churn:8"}, "holdout": {"configMapRef": {"name": "h", "key": "k"},
                                                         "labelColumn": "y"},
            "gates": [{"metric": "f1", "min": 0.5}],
            "promotion": {"canary": {"steps": steps}, "gates": gates or []}}
    kube.rollouts[NS, "r"] = {
        "apiVersion": "modelrollout.dev/v1alpha1", "kind": "ModelRollout",
        "metadata": {"name": "r", "namespace": NS, "uid": "r-uid", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
        "status": {"phase": "Evaluating", "observedGeneration": 1, "previousTemplate": copy.deepcopy(TEMPLATE),
                   "evaluation": {"outcome": "Promote", "generation": 1, "startedAt": "2026-01-01T00:00:00Z"}}}
    return Controller(kube, Settings(), OperatorMetrics(CollectorRegistry())), kube


def step(c: Controller, kube: FakeKube) -> dict[str, Any]:
    asyncio.run(c.reconcile(kube.rollouts[NS, "r"]))
    return dict(kube.rollouts[NS, "r"]["status"])


def target(kube: FakeKube) -> dict[str, Any]:
    return kube.objects["Deployment", NS, "churn"]


def canary(kube: FakeKube) -> dict[str, Any]:
    return kube.objects.get(("Deployment", NS, "churn-canary")) or {}


def test_weights_are_shares_of_a_constant_total_then_promote_then_undo() -> None:
    c, kube = world([{"weight": 25, "pause": "10ms"}, {"weight": 100, "pause": "10ms"}])
    st = step(c, kube)  # Evaluating -> Canary step 1: 1 of 4 pods
    assert (st["phase"], st["canary"]["replicas"], st["previousReplicas"]) == ("Canary", 1, 4)
    assert canary(kube)["spec"]["replicas"] == 1 and target(kube)["spec"]["replicas"] == 4  # not before Available
    st = step(c, kube)  # the canary is Available: production gives way
    assert target(kube)["spec"]["replicas"] == 3 and "production to 3 of 4" in st["message"]
    time.sleep(0.02)
    st = step(c, kube)  # pause over, no live gates: step 2, all candidate
    assert st["canary"]["step"] == 1 and canary(kube)["spec"]["replicas"] == 4
    step(c, kube)
    assert target(kube)["spec"]["replicas"] == 0
    time.sleep(0.02)
    st = step(c, kube)
    assert st["phase"] == "Promoted" and canary(kube) == {}
    assert target(kube)["spec"]["replicas"] == 4
    assert target(kube)["spec"]["template"]["spec"]["containers"][0]["image"] == "churn:8"
    assert [(r["step"], r["weight"], r["outcome"]) for r in st["canary"]["steps"]] == [(1, 25, "Passed"),
                                                                                   (2, 100, "Passed")]
    # production's template changed in exactly one write, together with its replicas
    assert [w for w in kube.writes if "template=new" in w] == ["target template=new replicas=4"]
    # undo: the exact previous template comes back
    kube.rollouts[NS, "r"]["metadata"]["annotations"] = {"modelrollout.dev/undo": "true"}
    st = step(c, kube)
    assert (st["phase"], st["reason"]) == ("RolledBack", "Undone") and target(kube)["spec"]["template"] == TEMPLATE


def test_undo_refuses_when_someone_changed_the_target_since() -> None:
    c, kube = world([{"weight": 50, "pause": "10ms"}])
    for _ in range(3):
        step(c, kube)
        time.sleep(0.02)
    assert kube.rollouts[NS, "r"]["status"]["phase"] == "Promoted"
    target(kube)["spec"]["template"]["metadata"]["labels"]["hotfix"] = "1"
    kube.rollouts[NS, "r"]["metadata"]["annotations"] = {"modelrollout.dev/undo": "true"}
    st = step(c, kube)
    assert (st["phase"], st["reason"]) == ("Promoted", "UndoRefused") and "changed after" in st["message"]
    assert target(kube)["spec"]["template"]["metadata"]["labels"]["hotfix"] == "1"


def test_a_failing_live_gate_rolls_back_and_production_gets_its_replicas_back() -> None:
    # no Prometheus is configured: the gate cannot pass, which is a Fail, never a pass
    c, kube = world([{"weight": 50, "pause": "10ms"}], [{"name": "errors", "query": 'e{namespace="ml"}', "max": 0}])
    step(c, kube)
    step(c, kube)
    assert target(kube)["spec"]["replicas"] == 2
    time.sleep(0.02)
    st = step(c, kube)
    assert (st["phase"], st["reason"]) == ("RolledBack", "CanaryGateFailed"), st["message"]
    assert "errors: promotion.gates are set but the operator has no Prometheus" in st["message"]
    assert target(kube)["spec"]["replicas"] == 4 and target(kube)["spec"]["template"] == TEMPLATE
    assert canary(kube) == {}
    [record] = st["canary"]["steps"]
    assert record["outcome"] == "Failed" and record["measurements"][0]["verdict"] == "Fail"


def test_a_transient_api_error_is_retried_and_nothing_is_half_applied() -> None:
    c, kube = world([{"weight": 50, "pause": "10ms"}])
    step(c, kube)
    kube.faults["replace_template"] = ApiException(status=503, reason="unavailable")
    with pytest.raises(ApiException):  # kopf retries the handler
        step(c, kube)
    assert target(kube)["spec"]["replicas"] == 4 and kube.rollouts[NS, "r"]["status"]["phase"] == "Canary"
    step(c, kube)
    assert target(kube)["spec"]["replicas"] == 2


def test_a_squatted_canary_name_fails_and_production_is_untouched() -> None:
    c, kube = world([{"weight": 50, "pause": "10ms"}])
    kube.objects["Deployment", NS, "churn-canary"] = {"kind": "Deployment",
                                                      "metadata": {"name": "churn-canary", "uid": "someone"},
                                                      "spec": {"replicas": 9}}
    st = step(c, kube)
    assert (st["phase"], st["reason"]) == ("Failed", "NotOwned")
    assert canary(kube)["spec"]["replicas"] == 9  # left alone
    assert target(kube)["spec"] == {"replicas": 4, "template": TEMPLATE}


def test_a_spec_change_mid_canary_gives_production_its_replicas_back() -> None:
    c, kube = world([{"weight": 50, "pause": "1h"}])
    step(c, kube)
    step(c, kube)
    assert target(kube)["spec"]["replicas"] == 2
    kube.rollouts[NS, "r"]["metadata"]["generation"] = 2
    st = step(c, kube)
    assert (st["phase"], st["reason"]) == ("Pending", "SpecChanged")
    assert target(kube)["spec"]["replicas"] == 4 and canary(kube) == {} and "previousReplicas" not in st


def test_delete_waits_for_a_reconcile_in_flight_and_frees_the_slot_for_good() -> None:
    c, kube = world([{"weight": 50, "pause": "0s"}])
    meta = kube.rollouts[NS, "r"]["metadata"]
    assert c.queue is not None

    async def scenario() -> None:
        lock = c.locks.setdefault(meta["uid"], asyncio.Lock())
        await lock.acquire()  # a reconcile in flight
        deleting = asyncio.create_task(c.delete(copy.deepcopy(kube.rollouts[NS, "r"])))
        await asyncio.sleep(0.05)
        assert not deleting.done()  # the clean-up waits for it
        c.queue.note(meta, "Staging")  # what the reconcile in flight records last
        lock.release()
        await deleting
        c.queue.note(meta, "Staging")  # even later: ignored

    asyncio.run(scenario())
    assert c.queue.phases == {}


def test_a_slot_held_by_a_rollout_gone_from_the_cluster_is_freed() -> None:
    c, kube = world([{"weight": 50, "pause": "0s"}])
    assert c.queue is not None
    ghost = {"uid": "ghost", "name": "g", "namespace": NS, "creationTimestamp": "2025-01-01T00:00:00Z"}
    c.queue.note(ghost, "Staging")  # its deletion never reached this process
    c.queue.note(kube.rollouts[NS, "r"]["metadata"], "Staging")
    assert asyncio.run(c._prune()) is True
    assert set(c.queue.phases) == {"r-uid"}
    c.queue.note(ghost, "Staging")
    assert asyncio.run(c._prune()) is False  # checked at most every PRUNE_EVERY seconds


def routed_world(steps: list[dict[str, Any]], rules: list[dict[str, Any]] | None = None,
                 service: str | None = None) -> tuple[Controller, FakeKube]:
    c, kube = world(steps)
    gw: dict[str, Any] = {"httpRoute": "web", **({"service": service} if service else {})}
    kube.rollouts[NS, "r"]["spec"]["promotion"]["canary"]["trafficRouting"] = {"gatewayAPI": gw}
    kube.routes[NS, "web"] = {"metadata": {"name": "web", "namespace": NS, "resourceVersion": "1"}, "spec": {
        "parentRefs": [{"name": "gw"}],
        "rules": rules if rules is not None else [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
             "backendRefs": [{"name": "churn", "port": 80}]},
            {"backendRefs": [{"name": "static", "port": 80, "weight": 3}]}]}}
    return c, kube


def backends(kube: FakeKube) -> list[list[tuple[str, int | None]]]:
    return [[(b["name"], b.get("weight")) for b in rule["backendRefs"]]
            for rule in kube.routes[NS, "web"]["spec"]["rules"]]


def test_an_httproute_carries_exactly_each_steps_weight_and_goes_back_on_promotion() -> None:
    c, kube = routed_world([{"weight": 10, "pause": "10ms"}, {"weight": 60, "pause": "10ms"}])
    original = copy.deepcopy(kube.routes[NS, "web"]["spec"])
    st = step(c, kube)  # canary Deployment and Service; the route waits for the canary to be Available
    assert backends(kube) == [[("churn", None)], [("static", 3)]]
    svc = kube.objects["Service", NS, "churn-canary"]
    assert svc["spec"]["ports"] == [{"name": "p80", "port": 80, "targetPort": 8080}]
    pods = canary(kube)["spec"]["template"]["metadata"]["labels"]
    assert "app" not in pods and svc["spec"]["selector"].items() <= pods.items()  # no user Service selects them
    st = step(c, kube)
    assert backends(kube) == [[("churn", 90), ("churn-canary", 10)], [("static", 3)]]
    assert st["traffic"]["weight"] == 10 and target(kube)["spec"]["replicas"] == 4  # production keeps its pods
    assert st["traffic"]["original"] == [{"rule": 0, "service": "churn", "weight": None}]
    time.sleep(0.02)
    step(c, kube)  # step 2: the canary scales to its share first, then the route moves
    assert backends(kube)[0] == [("churn", 90), ("churn-canary", 10)] and canary(kube)["spec"]["replicas"] == 2
    step(c, kube)
    assert backends(kube)[0] == [("churn", 40), ("churn-canary", 60)]
    time.sleep(0.02)
    st = step(c, kube)
    assert st["phase"] == "Promoted" and st["traffic"]["weight"] == 0
    assert kube.routes[NS, "web"]["spec"] == original  # exactly as before, the weight left unset
    assert ("Service", NS, "churn-canary") not in kube.objects and canary(kube) == {}
    assert target(kube)["spec"]["template"]["spec"]["containers"][0]["image"] == "churn:8"


def test_abort_and_deletion_put_the_route_back() -> None:
    for how in ("abort", "delete"):
        c, kube = routed_world([{"weight": 30, "pause": "1h"}], service="churn",
                               rules=[{"backendRefs": [{"name": "churn", "port": 80, "weight": 5}]}])
        step(c, kube)
        step(c, kube)
        assert backends(kube) == [[("churn", 70), ("churn-canary", 30)]]
        if how == "abort":
            kube.rollouts[NS, "r"]["metadata"]["annotations"] = {"modelrollout.dev/abort": "true"}
            st = step(c, kube)
            assert (st["phase"], st["reason"], st["traffic"]["weight"]) == ("RolledBack", "Aborted", 0)
        else:
            asyncio.run(c.delete(copy.deepcopy(kube.rollouts[NS, "r"])))
        assert backends(kube) == [[("churn", 5)]], how
        assert ("Service", NS, "churn-canary") not in kube.objects and canary(kube) == {}


@pytest.mark.parametrize(("rules", "service", "words"), [
    (None, "api", "HTTPRoute 'web' has no rule that sends to Service 'api'"),
    ([{"backendRefs": [{"name": "churn", "port": 80}, {"name": "other", "port": 80}]}], None,
     "rule 0 sends to churn, other besides 'churn': the canary splits rules whose only backend is production"),
    ("missing", None, "HTTPRoute ml/web does not exist"),
])
def test_a_route_that_cannot_be_split_fails_before_anything_is_created(rules: Any, service: str | None,
                                                                       words: str) -> None:
    c, kube = routed_world([{"weight": 30, "pause": "1h"}], None if rules in (None, "missing") else rules, service)
    if rules == "missing":
        del kube.routes[NS, "web"]
    kube.rollouts[NS, "r"]["status"] = {"phase": "Pending"}
    st = step(c, kube)
    assert (st["phase"], st["reason"]) == ("Failed", "TrafficRouteInvalid"), st
    assert words in st["message"] and "spec.promotion.canary.trafficRouting.gatewayAPI" in st["message"]
    assert st["message"].endswith("; nothing was created"), st["message"]
    assert not [k for k in kube.objects if k[0] == "Service"] and canary(kube) == {}


def test_a_route_deleted_mid_pause_rolls_back_at_the_next_tick_and_says_production_was_restored() -> None:
    c, kube = routed_world([{"weight": 30, "pause": "1h"}])
    step(c, kube)
    step(c, kube)
    assert backends(kube)[0] == [("churn", 70), ("churn-canary", 30)]
    del kube.routes[NS, "web"]
    seen = [step(c, kube)]
    st = seen[-1]
    assert (st["phase"], st.get("reason")) == ("RolledBack", "TrafficRouteInvalid"), [
        (s["phase"], s.get("reason"), s.get("message")) for s in seen]
    assert "HTTPRoute ml/web does not exist" in st["message"] and "production restored" in st["message"]
    assert "nothing was created" not in st["message"], st["message"]  # the canary had run: say what was done
    assert canary(kube) == {} and target(kube)["spec"]["replicas"] == 4


def test_a_route_changed_by_its_owner_mid_step_is_not_overwritten() -> None:
    """Every write carries the route's resourceVersion: a concurrent change fails ours (kopf retries) and
    the next read splits the new rules, keeping the owner's change."""
    c, kube = routed_world([{"weight": 30, "pause": "1h"}])
    step(c, kube)
    stale = c.kube.get_route(NS, "web")
    assert stale is not None
    kube.routes[NS, "web"]["spec"]["rules"][1]["backendRefs"][0]["weight"] = 7  # the owner's edit
    kube.routes[NS, "web"]["metadata"]["resourceVersion"] = "2"
    with pytest.raises(ApiException):
        c.kube.patch_route(NS, "web", stale["spec"]["rules"], stale["metadata"]["resourceVersion"])
    step(c, kube)
    assert backends(kube) == [[("churn", 70), ("churn-canary", 30)], [("static", 7)]]


def test_a_spec_change_mid_canary_puts_the_route_back_and_forgets_its_weight() -> None:
    """The next attempt must split the route again, even at the same weight."""
    c, kube = routed_world([{"weight": 30, "pause": "1h"}])
    step(c, kube)
    step(c, kube)
    assert backends(kube)[0] == [("churn", 70), ("churn-canary", 30)]
    kube.rollouts[NS, "r"]["metadata"]["generation"] = 2
    st = step(c, kube)
    assert (st["phase"], st["reason"]) == ("Pending", "SpecChanged") and "traffic" not in st
    assert backends(kube)[0] == [("churn", None)] and ("Service", NS, "churn-canary") not in kube.objects
