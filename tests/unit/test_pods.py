"""Why a staging pod does not serve, from pod status as the kubelet writes it, and what the state
machine does with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelrollout.controller.settings import Settings
from modelrollout.core.decide import decide
from modelrollout.core.pods import MeasuredPod, PodProblems, measured_pod, pod_problems
from modelrollout.core.report import from_status, to_text
from tests.unit.test_decide import ago, obs, spec


def pod(name: str, *containers: dict[str, Any], scheduled: bool = True) -> dict[str, Any]:
    conditions = [] if scheduled else [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": "0/3 nodes are available: secret-node-name"}]
    return {"metadata": {"name": name}, "status": {"conditions": conditions, "containerStatuses": list(containers)}}


def crashing(restarts: int = 2) -> dict[str, Any]:
    return {"name": "server", "ready": False, "restartCount": restarts,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting: SECRET"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "Traceback: SECRET"}}}


def test_each_cause_is_named_with_the_pod_and_without_container_messages() -> None:
    oom = {"name": "server", "ready": True, "restartCount": 1, "state": {"running": {}},
           "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
    unready = {"name": "server", "ready": False, "restartCount": 0, "state": {"running": {}}}
    healthy = {"name": "server", "ready": True, "restartCount": 0, "state": {"running": {}}}
    got = pod_problems([pod("a", crashing()), pod("b", oom), pod("c", unready), pod("d", healthy)])
    assert got.fatal
    assert got.messages == (
        "pod a: container server is in CrashLoopBackOff, last exit code 1 (Error); 2 restarts",
        "pod b: container server was OOMKilled (it reached its memory limit); 1 restarts",
        "pod c: container server is running but not Ready (its readiness probe does not pass); 0 restarts")
    assert "SECRET" not in got.summary()
    assert pod_problems([pod("c", unready)]) == PodProblems(got.messages[2:], fatal=False)
    assert pod_problems([pod("d", healthy)]) == PodProblems()
    unscheduled = pod_problems([pod("e", scheduled=False)])
    assert unscheduled.messages == ("pod e: not scheduled (Unschedulable)",) and not unscheduled.fatal
    pulling = pod_problems([pod("f", {"name": "s", "state": {"waiting": {"reason": "ErrImageNeverPull"}}})])
    assert pulling.fatal and "ErrImageNeverPull" in pulling.summary()


def test_a_container_that_exited_is_a_crash_once_it_has_failed_twice() -> None:
    def exited(restarts: int) -> dict[str, Any]:
        return {"name": "server", "ready": False, "restartCount": restarts,
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "SECRET"}}}
    first = pod_problems([pod("a", exited(0))])
    assert first.messages == ("pod a: container server exited with code 1 (Error)",) and not first.fatal
    again = pod_problems([pod("a", exited(1))])
    assert again.fatal and again.messages == ("pod a: container server exited with code 1 (Error); 1 restarts",)


def test_a_long_list_is_cut_to_a_few_and_a_count() -> None:
    got = pod_problems([pod(f"p{i}", crashing()) for i in range(7)])
    assert len(got.messages) == 4 and got.messages[-1] == "4 more"


def test_a_fatal_cause_ends_staging_at_once_and_a_slow_one_is_named_at_the_timeout() -> None:
    st: dict[str, Any] = {"phase": "Staging", "observedGeneration": 1, "staging": {"startedAt": ago(10)}}
    crash = pod_problems([pod("x-candidate-1", crashing())])
    s = decide(spec(), st, obs(staging_available=False, staging_problems=crash))
    assert (s.action, s.phase, s.reason) == ("rollback", "RolledBack", "StagingPodFailing")
    assert "pod x-candidate-1" in s.message and "production is unchanged" in s.message
    unready = pod_problems([pod("x-candidate-1", {"name": "server", "ready": False, "state": {"running": {}}})])
    assert decide(spec(), st, obs(staging_available=False, staging_problems=unready)).action == "wait"
    st["staging"]["startedAt"] = ago(61)
    s = decide(spec(), st, obs(staging_available=False, staging_problems=unready))
    assert s.reason == "StagingTimeout" and "not Available within 60s (pod x-candidate-1:" in s.message


def serving(name: str, ip: str | None, ready: bool = True, leaving: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"deletionTimestamp": "2026-12-03T10:00:00Z"} if leaving else {})}
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    return {"metadata": meta, "status": {**status, **({"podIP": ip} if ip else {})}}


def test_the_measured_pod_is_the_first_ready_one_with_an_address() -> None:
    pods = [serving("m-c", "10.244.0.9"), serving("m-a", "10.244.0.7", leaving=True), serving("m-b", None),
            serving("m-d", "10.244.0.8"), serving("m-0", "10.244.0.6", ready=False)]
    got = measured_pod(pods)
    assert got == MeasuredPod("m-c", "10.244.0.9", replicas=2)  # m-a leaves, m-b has no IP, m-0 is not ready
    assert got.url(8080) == "http://10.244.0.9:8080"
    assert MeasuredPod("p", "fd00::7", 1).url(80) == "http://[fd00::7]:80"
    assert measured_pod([serving("x", None)]) is None and measured_pod([]) is None


def test_outside_a_cluster_the_address_map_stands_for_every_pod(tmp_path: Path) -> None:
    pod_ = MeasuredPod("r-candidate-1", "10.0.0.5", 2)
    assert Settings().pod_url("ml", "r-candidate", pod_, 8080) == "http://10.0.0.5:8080"
    m = tmp_path / "addresses.json"
    m.write_text(json.dumps({"ml/r-candidate": "http://127.0.0.1:5000"}))
    mapped = Settings(service_addresses_file=str(m))
    assert mapped.pod_url("ml", "r-candidate", pod_, 8080) == "http://127.0.0.1:5000"
    assert mapped.pod_url("ml", "r-baseline", pod_, 8080) == "http://10.0.0.5:8080"
    assert mapped.service_url("ml", "r-baseline", 8080) == "http://r-baseline.ml.svc:8080"


def test_the_report_says_where_memory_came_from_and_which_pod_was_loaded() -> None:
    st = {"capacity": {"memorySource": {"candidate": "metrics.k8s.io", "baseline": "server /metrics"},
                       "measuredPod": {"candidate": {"name": "r-candidate-7f-x", "replicas": 2}, "baseline": None}},
          "candidate": {"metrics": {"f1": 0.9}}, "baseline": {"metrics": {"f1": 0.8}}}
    text = to_text(from_status("binary-classification", st))
    assert ("memory and per-replica figures: candidate from metrics.k8s.io of pod r-candidate-7f-x (2 replicas "
            "ready; the load went to it alone); baseline from server /metrics") in text
    assert "memory and per-replica" not in to_text(from_status("binary-classification", {}))
