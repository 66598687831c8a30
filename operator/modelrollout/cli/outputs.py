"""What every command shares: exit codes, usage errors, and writing a report where it was asked for."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from modelrollout.core.report import Report, to_json, to_markdown, to_text
from modelrollout.core.tracking import run_params

EXIT_PROMOTE, EXIT_REJECT, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    """Bad input from the command line; printed without a traceback, exit 2."""


def write_outputs(rep: Report, args: argparse.Namespace, plots: Mapping[str, str] | None = None,
                  about: dict[str, str] | None = None) -> None:
    print(to_text(rep))
    if getattr(args, "output", None):
        Path(args.output).write_text(json.dumps(to_json(rep), indent=2) + "\n")
    if getattr(args, "markdown", None):
        Path(args.markdown).write_text(to_markdown(rep))
    if getattr(args, "report_dir", None):
        from modelrollout.cli.report_files import write_report_dir

        paths = write_report_dir(rep, Path(args.report_dir), dict(plots or {}), about)
        print(f"report: {paths['html']} (also {paths['json'].name}, {paths['markdown'].name})", file=sys.stderr)


def add_report_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-dir", help="also write the report as a folder: index.html with its plots, report.md, "
                   "report.json")


def add_tracking_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow-uri", help="also record the evaluation as a run on this MLflow tracking server; "
                   "if it cannot, the command says so and the decision and exit code stand")
    p.add_argument("--mlflow-experiment", help="the run's experiment (default modelrollout/<target>)")
    p.add_argument("--mlflow-run-name", help="the run's name (default: the rollout's or the command's)")


def tracked(rep: Report, args: argparse.Namespace, *, target: str, run_name: str,
            spec: Mapping[str, Any] | None, context: Mapping[str, str],
            plots: Mapping[str, str] | None = None) -> Report:
    """`rep` with details.tracking (run id and URL, or why not) when --mlflow-uri was given."""
    uri = getattr(args, "mlflow_uri", None)
    if not uri:
        return rep
    from modelrollout.tracking import TrackingFailed, track_report

    experiment = args.mlflow_experiment or f"modelrollout/{target}"
    try:
        t = track_report(uri, experiment, rep, run_name=args.mlflow_run_name or run_name,
                         params=run_params(rep, spec, context), plots=plots)
        info: dict[str, str] = t.as_status()
        print(f"MLflow run {t.run_id} in experiment {experiment!r}: {t.url}", file=sys.stderr)
    except TrackingFailed as e:
        info = {"state": "Failed", "message": str(e)}
        print(f"tracking failed, the decision stands: {e}", file=sys.stderr)
    return replace(rep, details={**rep.details, "tracking": info})
