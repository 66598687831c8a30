"""The staging queue, including after a restart (registered from status, not only memory)."""

from __future__ import annotations

from typing import Any

from modelrollout.core.queue import StagingQueue


def rollout(name: str, t: int, phase: str | None = None) -> dict[str, Any]:
    meta = {"uid": f"u-{name}", "name": name, "namespace": "ns", "creationTimestamp": f"2026-01-01T00:00:{t:02d}Z"}
    return {"metadata": meta, "status": {"phase": phase} if phase else {}}


def test_slots_are_taken_at_once_and_the_oldest_waiting_goes_first() -> None:
    q = StagingQueue(limit=2)
    a, b, c, d = (rollout(n, i)["metadata"] for i, n in enumerate("abcd"))
    for m in (a, b):
        assert q.why_wait(m) is None
        q.note(m, "Staging")
    q.note(c, "Pending")
    q.note(d, "Pending")
    assert "2 rollouts are staging or evaluating" in str(q.why_wait(c))
    q.note(a, "Promoted")  # a slot frees: c (older) takes it, d still waits behind c
    assert q.why_wait(c) is None and "1 earlier rollouts are queued" in str(q.why_wait(d))
    q.note(c, "Waiting", blocked=True)  # waiting for its target: no place in the queue
    assert q.why_wait(d) is None


def test_after_a_restart_the_slots_held_in_status_count() -> None:
    q = StagingQueue(limit=2)
    seen = [rollout("s1", 1, "Staging"), rollout("s2", 2, "Evaluating"), rollout("done", 0, "Promoted"),
            rollout("new", 3)]
    assert q.needs_seed("ns")
    q.seed("ns", seen)
    assert not q.needs_seed("ns")
    assert "2 rollouts are staging or evaluating" in str(q.why_wait(seen[3]["metadata"]))
    q.note(seen[0]["metadata"], "RolledBack")
    assert q.why_wait(seen[3]["metadata"]) is None
    q.seed("ns", seen)  # what this process saw itself wins over an older status
    assert q.why_wait(seen[3]["metadata"]) is None


def test_a_deleted_rollout_never_takes_a_slot_again() -> None:
    """A reconcile in flight when its rollout was deleted notes its phase after the drop: ignored, so
    the slot is not held for good (seen in CI: four deleted rollouts kept every later one queued)."""
    q = StagingQueue(limit=1)
    a, b = rollout("a", 1)["metadata"], rollout("b", 2)["metadata"]
    q.note(a, "Staging")
    q.drop(a["uid"])
    q.note(a, "Staging")  # the late note
    q.seed("ns", [rollout("a", 1, "Staging")])  # nor does a stale list bring it back
    assert q.why_wait(b) is None


def test_prune_frees_the_slots_of_rollouts_the_cluster_no_longer_holds() -> None:
    q = StagingQueue(limit=2)
    a, b, c = (rollout(n, i)["metadata"] for i, n in enumerate("abc"))
    q.note(a, "Staging")
    q.note(b, "Evaluating")
    assert q.why_wait(c) is not None
    assert q.prune({b["uid"], c["uid"]}) == [a["uid"]]
    assert q.why_wait(c) is None
    q.note(a, "Staging")
    assert q.prune({b["uid"], c["uid"]}) == []
