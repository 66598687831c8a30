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
                 tags: Mapping[str, str] | None = None, plots: Mapping[str, str] | None = None) -> Tracked:
    """track() with the report's JSON, Markdown and HTML as the run's artifacts."""
    from modelrollout.cli.report_files import write_report_dir

    with tempfile.TemporaryDirectory(prefix="modelrollout-run-") as tmp:
        write_report_dir(rep, Path(tmp), dict(plots or {}))
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
