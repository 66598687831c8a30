"""The one writer of a rollout's status.

Two kinds of write go through here and nowhere else: a transition (phase, reason, message,
conditions, plus the fields the step sets, with an Event and the phase metric) and a record (the
evaluation's figures, a canary step's measurements) that leaves the phase alone. Field names
the CRD declares are the only ones written: the API server prunes the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelrollout.core import history
from modelrollout.core.decide import TERMINAL, Step
from modelrollout.core.history import HEADLINE
from modelrollout.core.text import cap
from modelrollout.kube.api import Kube, run
from modelrollout.opmetrics import OperatorMetrics

log = logging.getLogger("modelrollout")
RECORDS = frozenset({"candidate", "baseline", "gates", "capacity", "evaluation", "canary", "traffic",
                     "sweep", "sloSearch", "holdout", "tracking", "history", "groups", "dataQuality", "drift",
                     "report"})


def now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def failing(status: Mapping[str, Any]) -> str:
    """The first gate that blocks the rollout, for the Failing column: an evaluation gate that failed or was
    inconclusive (not a dry run), else a live canary gate that did; "none" when none did."""
    for g in status.get("gates") or []:
        if g.get("verdict") in ("Fail", "Inconclusive") and not g.get("dryRun"):
            t = g.get("threshold")
            return cap(f"{g.get('metric')} {g.get('bound')} {f'{t:g}' if isinstance(t, int | float) else t}", 120)
    for record in (status.get("canary") or {}).get("steps") or []:
        for m in record.get("measurements") or []:
            if m.get("verdict") in ("Fail", "Error") and not m.get("dryRun"):
                return cap(f"{m.get('gate')} at canary step {record.get('step')}", 120)
    return "none"


def weight(phase: str, status: Mapping[str, Any]) -> int:
    """The candidate's share of production, for the Weight column: 100 once promoted, the step's weight in
    a canary step, 0 otherwise (production is all the old model)."""
    if phase == "Promoted":
        return 100
    return int((status.get("canary") or {}).get("weight") or 0) if phase == "Canary" else 0


def tracked(tracking: Mapping[str, Any] | None, generation: int, old: Mapping[str, Any] | None,
            t: datetime) -> dict[str, Any] | None:
    """The Tracked condition: True with the run's URL, False when the run or the registry failed
    (the decision stood either way); None until MLflow has answered, or without MLflow."""
    state = (tracking or {}).get("state")
    if tracking is None or state not in ("Tracked", "Failed"):
        return None
    problem = tracking.get("message") if state == "Failed" else tracking.get("registryMessage")
    status = "False" if problem else "True"
    reason = "Tracked" if not problem else "TrackingFailed" if state == "Failed" else "RegistryFailed"
    since = old["lastTransitionTime"] if old and old.get("status") == status and "lastTransitionTime" in old \
        else iso(t)
    return {"type": "Tracked", "status": status, "reason": reason, "message": cap(str(problem or tracking.get("url"))),
            "lastTransitionTime": since, "observedGeneration": generation}


def tracked_update(status: Mapping[str, Any], generation: int | None, t: datetime) -> dict[str, Any] | None:
    """The Tracked condition status should carry now, or None when it carries it already (generation None:
    whichever generation, for the question whether anything is due)."""
    prev = next((c for c in status.get("conditions") or [] if c.get("type") == "Tracked"), None)
    new = tracked(status.get("tracking"), generation or 0, prev, t)
    keys = ("status", "reason", "message") + (() if generation is None else ("observedGeneration",))
    if new is None or (prev is not None and all(prev.get(k) == new[k] for k in keys)):
        return None
    return new


def tracking_behind(status: Mapping[str, Any]) -> bool:
    """Whether MLflow answered after the rollout ended and status does not say so yet (the Tracked
    condition, the history's run id): an ended rollout then keeps ticking until the reconcile wrote it."""
    due = tracked_update(status, None, datetime.now(UTC)) is not None
    return due or history.with_run(status.get("history"), status) is not None


def conditions(old: list[dict[str, Any]], step: Step, generation: int, t: datetime,
               tracking: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Ready (promoted), Progressing (still moving) and Waiting, by the API conventions; Tracked once
    MLflow answered."""
    wanted = {
        "Ready": ("True" if step.phase == "Promoted" else "False"),
        "Progressing": ("False" if step.phase in TERMINAL else "True"),
        "Waiting": ("True" if step.phase in ("Waiting", "AwaitingApproval") else "False"),
    }
    prev = {c["type"]: c for c in old}
    out = []
    for typ, status in wanted.items():
        p = prev.get(typ, {})
        changed = p.get("status") != status
        since = iso(t) if changed or "lastTransitionTime" not in p else p["lastTransitionTime"]
        out.append({"type": typ, "status": status, "reason": step.reason, "message": step.message,
                    "lastTransitionTime": since, "observedGeneration": generation})
    track = tracked(tracking, generation, prev.get("Tracked"), t)
    return [*out, track] if track else out


@dataclass
class StatusWriter:
    kube: Kube
    metrics: OperatorMetrics

    async def record(self, meta: Mapping[str, Any], fields: Mapping[str, Any]) -> None:
        """What a stage found (figures, measurements), without a transition."""
        unknown = set(fields) - RECORDS
        if unknown:
            raise ValueError(f"not a record field: {sorted(unknown)}")
        await run(self.kube.patch_status, meta["namespace"], meta["name"], dict(fields))

    async def sync_tracked(self, meta: Mapping[str, Any], status: Mapping[str, Any], generation: int) -> None:
        """Write the Tracked condition when MLflow answered after the last transition (an ended rollout
        has no more transitions); called from the reconcile, the only other writer of conditions."""
        old = list(status.get("conditions") or [])
        new = tracked_update(status, generation, now())
        if new is None:
            return
        await run(self.kube.patch_status, meta["namespace"], meta["name"],
                  {"conditions": [*(c for c in old if c.get("type") != "Tracked"), new]})

    async def _history(self, body: Mapping[str, Any], status: Mapping[str, Any], patch: Mapping[str, Any],
                       step: Step, generation: int, t: datetime) -> list[dict[str, Any]]:
        """status.history with this attempt's entry first, from a fresh read: the evaluation's records
        may have landed after the body this reconcile holds."""
        meta, spec = body["metadata"], body.get("spec") or {}
        fresh = (await run(self.kube.get_rollout, meta["namespace"], meta["name"]) or {}).get("status") or {}
        current = {**status, **fresh, **patch}
        task = spec.get("task") if spec.get("task") in HEADLINE else None
        new = history.entry(task, current, at=iso(t), generation=generation,
                            attempt=str(current.get("retried") or ""), result=step.phase, reason=step.reason)
        limit = spec.get("historyLimit")  # the CRD defaults and bounds it
        return history.push(current.get("history"), new, limit if isinstance(limit, int) else history.DEFAULT_LIMIT)

    async def transition(self, body: Mapping[str, Any], status: Mapping[str, Any], patch: dict[str, Any],
                         step: Step, generation: int) -> None:
        """Write the step's phase, reason and message with `patch`; an Event when the reason changes."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        changed = (status.get("phase"), status.get("reason"), status.get("message")) != (
            step.phase, step.reason, step.message)
        if not changed and not patch:
            return
        t = now()
        if step.phase in TERMINAL and status.get("phase") != step.phase:
            patch["history"] = await self._history(body, status, patch, step, generation, t)
        after = {**status, **patch}
        patch.update({"weight": weight(step.phase, after), "failing": failing(after)})
        patch.update({"phase": step.phase, "reason": step.reason, "message": cap(step.message),
                      "observedGeneration": generation,
                      "conditions": conditions(list(status.get("conditions") or []), step, generation, t,
                                               patch.get("tracking", status.get("tracking")))})
        await run(self.kube.patch_status, ns, name, patch)
        self.metrics.set_phase(name, ns, step.phase)
        if status.get("phase") != step.phase or status.get("reason") != step.reason:
            warning = step.phase in ("RolledBack", "Failed")
            await run(self.kube.event, body, step.reason, f"{step.phase}: {step.message}", warning)
            if step.phase in TERMINAL:
                self.metrics.decided(name, ns, step.phase, step.reason, t.timestamp())
            log.info("%s/%s: %s (%s) %s", ns, name, step.phase, step.reason, step.message)
