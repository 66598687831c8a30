"""kopf handlers: a few lines each, all calling the one reconcile.

Run with `kopf run -m modelrollout.handlers --all-namespaces` (the chart does this).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from modelrollout.controller import Controller
from modelrollout.controller.settings import Settings
from modelrollout.core.decide import ANNOTATION_RETRY, ANNOTATION_UNDO, TERMINAL
from modelrollout.core.spec import GROUP, VERSION
from modelrollout.kube.api import Kube
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.status import tracking_behind

RESOURCE = (GROUP, VERSION, "modelrollouts")
SETTINGS = Settings.from_env()
# kopf waits 60 s by default before retrying a handler that raised: after an API-server blip every
# rollout would sit still that long (seen as canary steps timing out); a few seconds is enough.
BACKOFF = 5.0
_state: dict[str, Controller] = {}


def controller() -> Controller:
    return _state["controller"]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelrollout.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="modelrollout.dev")
    settings.persistence.finalizer = "modelrollout.dev/finalizer"
    settings.posting.level = logging.WARNING
    registry = CollectorRegistry()
    start_http_server(SETTINGS.metrics_port, registry=registry)
    _state["controller"] = Controller(Kube(), SETTINGS, OperatorMetrics(registry))


def _body(body: kopf.Body) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


@kopf.on.resume(*RESOURCE, backoff=BACKOFF)
@kopf.on.create(*RESOURCE, backoff=BACKOFF)
@kopf.on.update(*RESOURCE, backoff=BACKOFF)
async def changed(body: kopf.Body, **_: Any) -> None:
    await controller().reconcile(_body(body))


def _ticking(status: kopf.Status, annotations: kopf.Annotations, **_: Any) -> bool:
    """A decided rollout needs no timer unless one of its annotations asks for something: kopf keeps
    annotations under its own prefix (modelrollout.dev/) out of its diffs, so undo and retry reach the
    operator through this timer, not as updates (and an undo may wait for the target to come back). An MLflow
    answer that came after the decision is a status change, which kopf does not report either."""
    retry = annotations.get(ANNOTATION_RETRY)
    pending = (annotations.get(ANNOTATION_UNDO) == "true" and status.get("phase") == "Promoted") or \
        (retry is not None and retry != status.get("retried"))
    return pending or str(status.get("phase") or "") not in TERMINAL or tracking_behind(status)


@kopf.timer(*RESOURCE, interval=SETTINGS.interval, backoff=BACKOFF, when=_ticking)
async def tick(body: kopf.Body, **_: Any) -> None:
    if not controller().evaluating(body):  # an evaluation in flight needs no API reads
        await controller().reconcile(_body(body))


@kopf.on.delete(*RESOURCE, backoff=BACKOFF)
async def deleted(body: kopf.Body, **_: Any) -> None:
    await controller().delete(_body(body))
