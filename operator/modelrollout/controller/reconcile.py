"""One reconcile: observe the world, ask the pure core for the next step, act on it.

All state lives in the rollout's status, so the operator can be killed at any moment: the
next reconcile observes again and continues. Data flows one way: `observe` reads, the core
decides, `act` writes objects and hands the phase change to the one status writer.
Evaluations run as background tasks (`evaluations`), bounded, never blocking the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelrollout.controller.act import Actions, api_reason
from modelrollout.controller.evaluations import Evaluations
from modelrollout.controller.observe import blocker, reach, route_lost, route_problem, staging_available, undoable
from modelrollout.controller.settings import Settings
from modelrollout.controller.tracker import Tracker
from modelrollout.core.decide import ANNOTATION_ABORT, ANNOTATION_UNDO, TERMINAL, Observed, Step, decide
from modelrollout.core.queue import StagingQueue
from modelrollout.core.spec import ModelRolloutSpec, SpecError, parse_spec
from modelrollout.kube import objects
from modelrollout.kube.api import ApiException, Kube, NotOwned, run
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.status import StatusWriter, now

log = logging.getLogger("modelrollout")
PRUNE_EVERY = 30.0  # seconds between checks that every rollout holding a staging slot still exists


@dataclass
class Controller:
    kube: Kube
    settings: Settings
    metrics: OperatorMetrics
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    ev: Evaluations = field(init=False)
    queue: StagingQueue = field(init=False)
    status: StatusWriter = field(init=False)
    act: Actions = field(init=False)
    pruned_at: float = float("-inf")

    def __post_init__(self) -> None:
        self.ev = Evaluations(self.kube, self.settings, self.metrics)
        self.queue = StagingQueue(self.settings.max_concurrent_stagings)
        self.status = StatusWriter(self.kube, self.metrics)
        self.ev.writer = self.status
        self.ev.tracker = Tracker(self.settings, self.metrics, self.status)
        self.act = Actions(self.kube, self.settings, self.metrics, self.ev, self.status)
        self.kube.on_call = self.metrics.api_requests.inc

    # --- observe -----------------------------------------------------------------------
    def evaluating(self, body: Mapping[str, Any]) -> bool:
        """True while this process evaluates the rollout's current generation and nothing asks it to stop.

        Then a timer tick has nothing to read from the API: only the evaluation's end moves the rollout
        on, and spec changes and aborts arrive as updates, which always reconcile.
        """
        meta = body["metadata"]
        state = self.ev.state(meta["uid"], int(meta.get("generation", 1)))
        aborted = (meta.get("annotations") or {}).get(ANNOTATION_ABORT) == "true"
        return state is not None and state[0] == "running" and not aborted

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        async with self.locks.setdefault(meta["uid"], asyncio.Lock()):
            # the watch stream can lag behind our own status writes: always act on a fresh read
            fresh = await run(self.kube.get_rollout, meta["namespace"], meta["name"])
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return
            try:
                await self._reconcile(fresh)
            except Exception:
                self.metrics.reconcile_errors.inc()
                raise

    async def _reconcile(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        ns, gen = meta["namespace"], int(meta.get("generation", 1))
        status = dict(body.get("status") or {})
        phase = str(status.get("phase") or "Pending")
        spec: ModelRolloutSpec | None = None
        obs: dict[str, Any] = {"generation": gen, "now": now(), "annotations": dict(meta.get("annotations") or {})}
        try:
            spec = parse_spec(body.get("spec"))
            if spec.holdout.file is not None:
                raise SpecError([])  # handled below with its own message
        except SpecError as e:
            spec = None
            obs["input_error"] = str(e) or "spec.holdout.file is for the CLI; use configMapRef, url or pvc"
            obs["input_reason"] = "InvalidSpec"
        target = None
        if spec is not None and phase not in TERMINAL:
            target = await run(self.kube.get_deployment, ns, spec.target_ref.name)
            obs["target_exists"] = target is not None
            if phase in ("Pending", "Waiting"):
                obs["blocked_by"] = await blocker(self.kube, body, spec)
                err = await reach(self.kube, body, spec) or await route_problem(self.kube, ns, spec)
                if err is None and target is not None and not obs["blocked_by"]:
                    err = await self.ev.load_holdout(body, spec)
                if err:
                    obs["input_error"], obs["input_reason"] = err
            elif phase == "Staging":
                obs["staging_available"] = await staging_available(self.kube, body, spec)
                if obs["staging_available"] is False:
                    obs["staging_problems"] = await self.ev.pod_problems(body, spec)
            elif phase == "Canary":
                obs["canary_available"] = await run(self.kube.deployment_available, ns,
                                                    objects.canary_name(spec.target_ref.name))
                obs["production_replicas"] = None if target is None else int(target["spec"].get("replicas", 1))
                if (status.get("traffic") or {}).get("weight"):  # the route carries the canary: is it still there?
                    obs["route_lost"] = await route_lost(self.kube, ns, spec)
            state = self.ev.state(meta["uid"], gen)
            if state is not None:
                obs["evaluation"], obs["evaluation_error"] = state
        if phase == "Promoted" and obs["annotations"].get(ANNOTATION_UNDO) == "true":
            target, obs["undo_blocked"] = await undoable(self.kube, ns, spec, status)
        if phase in ("Pending", "Waiting") and spec is not None and not obs.get("blocked_by"):
            if self.queue.needs_seed(ns):  # after a restart: who holds a slot is in status
                self.queue.seed(ns, await run(self.kube.list_rollouts, ns))
            obs["queue_full"] = self.queue.why_wait(meta)
            if obs["queue_full"] and await self._prune():
                obs["queue_full"] = self.queue.why_wait(meta)
        step = decide(spec, status, Observed(**obs))
        # recorded before any await, so other reconciles see the slot taken
        self.queue.note(meta, step.phase, blocked=step.reason == "TargetBusy")
        try:
            await self.act.apply(body, spec, status, step, target)
        except NotOwned as e:
            await self.act.apply(body, spec, status, Step("fail", "Failed", "NotOwned", str(e)), target)
        except ApiException as e:
            if e.status is None or e.status >= 500 or e.status in (408, 409, 429):
                raise  # transient: kopf retries the handler
            # the API server refused what we sent (an invalid object): retrying cannot help
            refusal = f"the API server refused a change for this rollout (HTTP {e.status}: {api_reason(e)})"
            await self.act.apply(body, spec, status, Step("fail", "Failed", "Refused", refusal), target)

    async def delete(self, body: Mapping[str, Any]) -> None:
        """On deletion: staging and canary go; production gets back the replicas and route weights a
        canary step took, and is otherwise left exactly as it is.

        Under the rollout's lock, so a reconcile in flight finishes first: it cannot create staging
        objects after the clean-up, nor take a queue slot back after the drop."""
        meta = body["metadata"]
        async with self.locks.setdefault(meta["uid"], asyncio.Lock()):
            spec = None
            with contextlib.suppress(SpecError):
                spec = parse_spec(body.get("spec"))
            status = dict(body.get("status") or {})
            if status.get("phase") not in TERMINAL:  # a canary step may have scaled production or split its route
                await self.act.restore(body, spec, status, None)
            await self.act.cleanup(body, spec, status)
            self.ev.forget(meta["uid"])
            if self.ev.tracker is not None:
                self.ev.tracker.forget(meta["uid"])
            self.queue.drop(meta["uid"])
            self.metrics.forget(meta["name"], meta["namespace"])
        self.locks.pop(meta["uid"], None)

    async def _prune(self) -> bool:
        """At most every PRUNE_EVERY seconds while rollouts queue: free the slots of rollouts gone from
        the cluster (a deletion this process did not see). True if any slot freed."""
        t = asyncio.get_running_loop().time()
        if t - self.pruned_at < PRUNE_EVERY:
            return False
        self.pruned_at = t
        present: set[str] = set()
        # per namespace, not cluster-wide: with the chart's rbac.namespaces the operator may list only those
        for ns in sorted({k[1] for _, k in self.queue.phases.values()}):
            present |= {r["metadata"]["uid"] for r in await run(self.kube.list_rollouts, ns)
                        if not r["metadata"].get("deletionTimestamp")}
        lost = self.queue.prune(present)
        if lost:
            log.warning("staging queue: freed %d slot(s) of rollouts no longer in the cluster", len(lost))
        return bool(lost)
