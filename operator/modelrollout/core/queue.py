"""The staging queue: at most N rollouts stage or evaluate at once, the others wait oldest first.

Kept from the rollouts' own status, not only from this process's memory: after a restart the
first reconcile in a namespace registers every rollout there from its status, so a Pending
rollout resumed before the Staging ones cannot take a slot they hold. A deleted rollout never
comes back (a reconcile still in flight when it was deleted cannot re-take its slot), and
`prune` drops whatever the cluster no longer holds, so no slot is lost for good.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelrollout.core.decide import TERMINAL

BUSY = frozenset({"Staging", "Evaluating"})
WAITING = frozenset({"Pending", "Waiting"})
Key = tuple[str, str, str]


def key(meta: Mapping[str, Any]) -> Key:
    """Queue order: creation time, then namespace and name (creation times are seconds)."""
    return str(meta.get("creationTimestamp") or ""), str(meta["namespace"]), str(meta["name"])


@dataclass
class StagingQueue:
    limit: int
    phases: dict[str, tuple[str, Key]] = field(default_factory=dict)  # uid -> (phase, key)
    seeded: set[str] = field(default_factory=set)  # namespaces registered from status
    noted: set[str] = field(default_factory=set)  # rollouts this process reconciled itself
    gone: set[str] = field(default_factory=set)  # deleted rollouts: a late note must not bring them back

    def needs_seed(self, namespace: str) -> bool:
        return namespace not in self.seeded

    def seed(self, namespace: str, rollouts: Iterable[Mapping[str, Any]]) -> None:
        """Register a namespace's rollouts from their status; what this process saw itself wins."""
        for r in rollouts:
            phase = str((r.get("status") or {}).get("phase") or "Pending")
            uid = r["metadata"]["uid"]
            if phase not in TERMINAL and uid not in self.noted and uid not in self.gone:
                self.phases[uid] = (phase, key(r["metadata"]))
        self.seeded.add(namespace)

    def note(self, meta: Mapping[str, Any], phase: str, blocked: bool = False) -> None:
        """Record the phase a rollout is entering (before any await, so the slot is taken at once).
        One waiting for its target (blocked) holds no place in the queue."""
        if meta["uid"] in self.gone:
            return
        self.noted.add(meta["uid"])
        if phase in TERMINAL:
            self.phases.pop(meta["uid"], None)
        else:
            self.phases[meta["uid"]] = ("Blocked" if blocked else phase, key(meta))

    def drop(self, uid: str) -> None:
        self.phases.pop(uid, None)
        self.noted.discard(uid)
        self.gone.add(uid)

    def prune(self, present: Iterable[str]) -> list[str]:
        """Forget the rollouts the cluster no longer holds (a deletion this process never saw)."""
        keep = set(present)
        lost = [uid for uid in self.phases if uid not in keep]
        for uid in lost:
            self.drop(uid)
        return lost

    def why_wait(self, meta: Mapping[str, Any]) -> str | None:
        """Why this rollout may not stage yet: the slots are taken, or earlier rollouts queue for them."""
        others = [v for uid, v in self.phases.items() if uid != meta["uid"]]
        busy = sum(1 for ph, _ in others if ph in BUSY)
        if busy >= self.limit:
            return f"{busy} rollouts are staging or evaluating (at most {self.limit} at once)"
        me = key(meta)
        ahead = sum(1 for ph, k in others if ph in WAITING and k < me)
        if ahead >= self.limit - busy:
            return f"{ahead} earlier rollouts are queued for the {self.limit - busy} free staging slots"
        return None
