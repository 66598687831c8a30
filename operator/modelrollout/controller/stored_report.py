"""The last evaluation's HTML report, plots included, gzipped in a ConfigMap the rollout owns.

Status keeps figures, not predictions, so a report rebuilt from it has no ROC curve or confusion matrix;
`kubectl modelrollout report NAME` and anyone with read access to the namespace's ConfigMaps fetch this one
instead. It is `<rollout>-report` in the rollout's namespace, owned by the rollout (deleted with it) and
bounded: a report whose gzipped HTML would pass MAX_BYTES is stored without its plots, and says so.
An object of that name the rollout did not create is never touched (status.report says why).
"""

from __future__ import annotations

import base64
import gzip
import logging
from collections.abc import Mapping
from typing import Any

from modelrollout.core.report import Report
from modelrollout.core.text import cap
from modelrollout.kube.objects import labels_of, owner_reference

log = logging.getLogger("modelrollout")
MAX_BYTES = 900 * 1024  # a ConfigMap holds at most 1 MiB, its metadata included
KEY = "report.html.gz"
ANNOTATION_PLOTS = "modelrollout.dev/report-plots"


def config_map_name(rollout: str) -> str:
    return f"{rollout}-report"


def render(report: Report, answers: tuple[Any, Mapping[str, Any]] | None, positive: Any,
           about: dict[str, str]) -> tuple[bytes, str]:
    """The gzipped HTML, and which plots it has ("all", or "none: ..." when they would not fit or failed)."""
    from modelrollout.cli.report_files import binary_scores, render_html, report_plots

    try:
        plots = report_plots(report, *binary_scores(answers[0], answers[1], positive)) if answers else \
            report_plots(report)
        note = "all"
    except Exception as e:  # the report is worth more than its pictures
        plots, note = {}, f"none: drawing failed ({type(e).__name__})"
    data = gzip.compress(render_html(report, plots, about).encode(), mtime=0)
    if len(data) > MAX_BYTES and plots:
        data = gzip.compress(render_html(report, {}, about).encode(), mtime=0)
        note = f"none: with plots the report is over {MAX_BYTES // 1024} KiB gzipped"
    return data, note


def config_map(rollout: Mapping[str, Any], data: bytes, note: str) -> dict[str, Any]:
    m = rollout["metadata"]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": config_map_name(m["name"]), "namespace": m["namespace"],
                         "labels": labels_of(rollout, "report"), "annotations": {ANNOTATION_PLOTS: cap(note, 200)},
                         "ownerReferences": [owner_reference(rollout)]},
            "binaryData": {KEY: base64.b64encode(data).decode()}}


def status_of(rollout: Mapping[str, Any], data: bytes | None, note: str) -> dict[str, Any]:
    name = config_map_name(rollout["metadata"]["name"])
    if data is None:
        return {"configMap": None, "message": cap(note, 300)}
    return {"configMap": name, "key": KEY, "bytes": len(data), "plots": cap(note, 200)}
