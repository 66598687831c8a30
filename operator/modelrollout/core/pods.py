"""Why a staging pod is not serving, in words a user can act on, from pod status alone.

Only reasons, exit codes and counts are reported: never a container's message or logs, which can
carry data the rollout's author may not be allowed to read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Waiting reasons that will not resolve by themselves: waiting longer only delays the verdict.
FATAL_WAITING = frozenset({"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull",
                           "InvalidImageName", "CreateContainerConfigError", "CreateContainerError",
                           "RunContainerError"})
MAX_LISTED = 3


@dataclass(frozen=True)
class PodProblems:
    messages: tuple[str, ...] = ()
    fatal: bool = False  # a container crash-loops, cannot start, or was OOM-killed

    def summary(self) -> str:
        return "; ".join(self.messages)


def _container(pod: str, c: Mapping[str, Any]) -> tuple[str, bool] | None:
    state = c.get("state") or {}
    waiting = state.get("waiting") or {}
    ended = state.get("terminated") or (c.get("lastState") or {}).get("terminated") or {}
    restarts = int(c.get("restartCount") or 0)
    where = f"pod {pod}: container {c.get('name')!s}"
    if ended.get("reason") == "OOMKilled":
        return f"{where} was OOMKilled (it reached its memory limit); {restarts} restarts", True
    exited = state.get("terminated") or {}
    if exited:
        again = exited.get("exitCode") not in (0, None) and restarts >= 1  # it failed again: a crash loop
        return f"{where} exited with code {exited.get('exitCode')} ({exited.get('reason')})" + (
            f"; {restarts} restarts" if again else ""), again
    reason = str(waiting.get("reason") or "")
    if reason in FATAL_WAITING:
        last = f", last exit code {ended.get('exitCode')} ({ended.get('reason')})" if ended else ""
        return f"{where} is in {reason}{last}; {restarts} restarts", True
    if "running" in state and not c.get("ready"):
        return f"{where} is running but not Ready (its readiness probe does not pass); {restarts} restarts", False
    if reason:
        return f"{where} is waiting ({reason})", False
    return None


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> PodProblems:
    """What keeps each pod from serving; a few are listed, then a count of the rest."""
    found: list[str] = []
    fatal = False
    for p in pods:
        name = str((p.get("metadata") or {}).get("name"))
        st = p.get("status") or {}
        unscheduled = [c for c in st.get("conditions") or []
                       if c.get("type") == "PodScheduled" and c.get("status") == "False"]
        if unscheduled:
            found.append(f"pod {name}: not scheduled ({unscheduled[0].get('reason') or 'Unschedulable'})")
        for c in st.get("containerStatuses") or []:
            got = _container(name, c)
            if got:
                found.append(got[0])
                fatal = fatal or got[1]
    more = len(found) - MAX_LISTED
    listed = found[:MAX_LISTED] + ([f"{more} more"] if more > 0 else [])
    return PodProblems(tuple(listed), fatal)


def time_to_ready(pods: Sequence[Mapping[str, Any]]) -> float | None:
    """Seconds from scheduled to Ready of the slowest ready pod, from the API's own condition times: how
    long a new replica takes before it can absorb traffic. None while no pod is ready."""
    out: list[float] = []
    for p in pods:
        conds = {c.get("type"): c for c in (p.get("status") or {}).get("conditions") or []}
        sched, ready = conds.get("PodScheduled") or {}, conds.get("Ready") or {}
        if ready.get("status") != "True" or not sched.get("lastTransitionTime") or not ready.get(
                "lastTransitionTime"):
            continue
        out.append((_when(ready["lastTransitionTime"]) - _when(sched["lastTransitionTime"])).total_seconds())
    return max(out) if out else None


def _when(stamp: Any) -> datetime:
    """The API gives RFC 3339 strings, the Python client datetimes."""
    if isinstance(stamp, datetime):
        return stamp
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))


@dataclass(frozen=True)
class MeasuredPod:
    """The one staging pod the load goes to when a variant has several replicas: per-replica figures
    (latency, throughput, memory) are then that pod's own, not a Service's mix of pods."""

    name: str
    ip: str
    replicas: int  # ready pods of the variant at the time

    def url(self, port: int) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{port}"


def measured_pod(pods: Sequence[Mapping[str, Any]]) -> MeasuredPod | None:
    """The first ready pod by name that has an IP and is not on its way out (None when there is none)."""
    ready = []
    for p in pods:
        meta, st = p.get("metadata") or {}, p.get("status") or {}
        conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
        if conds.get("Ready") == "True" and st.get("podIP") and not meta.get("deletionTimestamp"):
            ready.append((str(meta.get("name")), str(st["podIP"])))
    if not ready:
        return None
    name, ip = min(ready)
    return MeasuredPod(name, ip, len(ready))
