"""One evaluation as one MLflow run, through the official client (mlflow-skinny).

Tracking is a record of a decision, never part of it: callers log after deciding, and a server
that is down, slow or refuses costs at most a few bounded retries, then a TrackingFailed the
caller reports. The client's own retry policy (7 retries with doubling back-off, 120 s per request)
would hold an evaluation for minutes, so it is bounded here unless the environment sets it.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrollout.core.report import Report
from modelrollout.core.text import cap
from modelrollout.core.tracking import PARAM_CHARS, capped, run_metrics, run_tags

CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class TrackingFailed(Exception):
    """The run could not be recorded; the message is bounded and names no credentials."""


@dataclass(frozen=True)
class Tracked:
    run_id: str
    experiment_id: str
    url: str  # the run in MLflow's UI

    def as_status(self) -> dict[str, str]:
        return {"state": "Tracked", "runId": self.run_id, "experimentId": self.experiment_id, "url": self.url}


OWNER_TAG = "modelrollout.namespace"  # a registered model's aliases move only for rollouts of this namespace
CHAMPION, CHALLENGER = "champion", "challenger"


def _client(uri: str) -> Any:
    for k, v in CLIENT_DEFAULTS.items():
        os.environ.setdefault(k, v)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _failed(uri: str, e: Exception) -> TrackingFailed:
    return TrackingFailed(cap(f"MLflow at {_shown(uri)}: {type(e).__name__}: {_first_line(e)}", 400))


def _owned(client: Any, model: str, namespace: str, *, create: bool) -> None:
    """The registered model, created for `namespace` if missing; one another namespace (or nobody) claimed
    is refused: registered model names are global, and a tenant must not move another team's champion."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(model).tags or {}
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST" or not create:
            raise
        client.create_registered_model(model, tags={OWNER_TAG: namespace},
                                       description="Versions registered by modelrollout evaluations.")
        return
    if tags.get(OWNER_TAG) != namespace:
        raise TrackingFailed(f"registered model {model!r} has tag {OWNER_TAG}={tags.get(OWNER_TAG)!r}, not "
                             f"{namespace!r}: only rollouts of the namespace it names may move its aliases")


def register(uri: str, model: str, namespace: str, run_id: str, source: str, tags: Mapping[str, str]) -> str:
    """A new version of `model` for the evaluated candidate, linked to its run, marked the challenger."""
    client = _client(uri)
    try:
        _owned(client, model, namespace, create=True)
        mv = client.create_model_version(model, source, run_id=run_id, tags=dict(tags))
        client.set_registered_model_alias(model, CHALLENGER, mv.version)
        return str(mv.version)
    except TrackingFailed:
        raise
    except Exception as e:
        raise _failed(uri, e) from None


def settle(uri: str, model: str, namespace: str, version: str, result: str, previous: str | None) -> str | None:
    """Move the aliases for how the rollout ended; returns the champion version before a promotion.

    Promoted: `champion` moves to `version`. Rolled back or failed: `challenger` leaves `version`.
    Undone: `champion` goes back to `previous` (or is removed if there was none)."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        _owned(client, model, namespace, create=False)
        if result == "Promoted":
            try:
                before = str(client.get_model_version_by_alias(model, CHAMPION).version)
            except MlflowException:
                before = None
            client.set_registered_model_alias(model, CHAMPION, version)
            with contextlib.suppress(MlflowException):  # it is the champion now, no longer the challenger
                if str(client.get_model_version_by_alias(model, CHALLENGER).version) == version:
                    client.delete_registered_model_alias(model, CHALLENGER)
            return before
        if result == "Undone":
            try:
                if str(client.get_model_version_by_alias(model, CHAMPION).version) != version:
                    return None  # another rollout's version is the champion since: not ours to move back
            except MlflowException:
                return None
            if previous:
                client.set_registered_model_alias(model, CHAMPION, previous)
            else:
                client.delete_registered_model_alias(model, CHAMPION)
            return None
        with contextlib.suppress(MlflowException):
            if str(client.get_model_version_by_alias(model, CHALLENGER).version) == version:
                client.delete_registered_model_alias(model, CHALLENGER)
        return None
    except TrackingFailed:
        raise
    except Exception as e:
        raise _failed(uri, e) from None


def track(uri: str, experiment: str, rep: Report, *, run_name: str, params: Mapping[str, str],
          tags: Mapping[str, str] | None = None, files: Path | None = None) -> Tracked:
    """Log `rep` as a finished run of `experiment` (created if missing); `files`: a folder of artifacts."""
    for k, v in CLIENT_DEFAULTS.items():
        os.environ.setdefault(k, v)
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    rid: str | None = None
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        eid = found.experiment_id if found is not None else client.create_experiment(experiment)
        run = client.create_run(eid, run_name=run_name)
        rid = run.info.run_id
        ts = int(time.time() * 1000)
        # one call: the client splits it within MLflow's limits (1,000 metrics, 100 params and tags a request)
        client.log_batch(rid, metrics=[Metric(k, v, ts, 0) for k, v in run_metrics(rep).items()],
                         params=[Param(k, v) for k, v in capped(params, PARAM_CHARS).items()],
                         tags=[RunTag(k, v) for k, v in {**run_tags(rep), **dict(tags or {})}.items()])
        if files is not None:
            client.log_artifacts(rid, str(files))
        client.set_terminated(rid, "FINISHED")
    except Exception as e:  # whatever the client raises (MlflowException, requests' errors): a record, not a decision
        if rid is not None:  # a half-logged run says so in MLflow's UI
            with contextlib.suppress(Exception):
                client.set_terminated(rid, "FAILED")
        raise TrackingFailed(cap(f"MLflow at {_shown(uri)}: {type(e).__name__}: {_first_line(e)}", 400)) from None
    return Tracked(rid, str(eid), f"{_shown(uri).rstrip('/')}/#/experiments/{eid}/runs/{rid}")


def track_report(uri: str, experiment: str, rep: Report, *, run_name: str, params: Mapping[str, str],
                 tags: Mapping[str, str] | None = None, plots: Mapping[str, str] | None = None,
                 about: dict[str, str] | None = None) -> Tracked:
    """track() with the report's JSON, Markdown and HTML (with its plots) as the run's artifacts."""
    from modelrollout.cli.report_files import write_report_dir

    with tempfile.TemporaryDirectory(prefix="modelrollout-run-") as tmp:
        write_report_dir(rep, Path(tmp), dict(plots or {}), about)
        return track(uri, experiment, rep, run_name=run_name, params=params, tags=tags, files=Path(tmp))


def _shown(uri: str) -> str:
    """The URI without credentials or query."""
    from urllib.parse import urlsplit

    u = urlsplit(uri)
    host = u.hostname or ""
    return f"{u.scheme}://{host}{f':{u.port}' if u.port else ''}{u.path}" if u.scheme else "the tracking URI"


def _first_line(e: Any) -> str:
    """The error's first line, any URL's user:password@ removed (the client quotes the URLs it called)."""
    text = str(getattr(e, "message", None) or e).strip().splitlines()
    return re.sub(r"(?<=//)[^/@\s]*@", "", text[0]) if text else ""
