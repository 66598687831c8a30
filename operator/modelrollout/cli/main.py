"""`modelrollout ...`: the same engine as the operator, for a terminal or a CI pipeline.

Exit codes: 0 the decision is to promote, 1 it is not, 2 bad input, 3 an internal error (a bug).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from modelrollout.cli.outputs import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_PROMOTE,
    EXIT_REJECT,
    UsageError,
    add_report_argument,
    add_tracking_arguments,
    tracked,
    write_outputs,
)
from modelrollout.core.engine import Predicted, build_report, score_quality
from modelrollout.core.gatefit import fit_problems
from modelrollout.core.quality import DataError
from modelrollout.core.spec import SpecError, parse_gates_file
from modelrollout.core.text import cap
from modelrollout.holdout import prepare, read_predictions, read_table
from modelrollout.holdout_reference import drift_between, reference_table
from modelrollout.serving.client import ServerError
from modelrollout.serving.options import add_serve_arguments


def _load_yaml(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({e})") from None


def cmd_score(args: argparse.Namespace) -> int:
    gates_doc = _load_yaml(args.gates)
    gf = parse_gates_file(gates_doc, task=args.task, has_baseline=args.baseline is not None)
    task = args.task or gf.task
    if task is None:
        raise UsageError("the task is needed: give --task or put `task:` in the gates file")
    unfit = fit_problems([g.metric for g in gf.gates], args.slice_column or [], gf.fairness, "--slice-column",
                         drift=args.drift_reference is not None)
    if unfit:
        raise SpecError(unfit)
    df = read_table(args.holdout)
    hold = prepare(df, task=task, label_column=args.label_column, slice_columns=args.slice_column or [],
                   feature_columns=args.feature_column,
                   name=args.holdout)
    cand = read_predictions(args.candidate, task=task, column=args.prediction_column)
    base = read_predictions(args.baseline, task=task, column=args.prediction_column) if args.baseline else None
    cmp = score_quality(
        task, hold.labels, Predicted(cand.labels, cand.scores, cand.classes),
        Predicted(base.labels, base.scores, base.classes) if base else None, gf.quality,
        positive_label=args.positive_label, n_features=hold.features.shape[1], slices=hold.slices,
        facet=gf.fairness.as_facet() if gf.fairness else None,
    )
    drift = []
    if args.drift_reference:
        ref = reference_table(read_table(args.drift_reference), [str(c) for c in hold.features.columns], max_rows=None,
                              seed=0, name=args.drift_reference)
        drift = drift_between(hold, ref, bins=10, threshold=args.psi_threshold)
    rep = build_report(task, gf.gates, cmp, data_quality=hold.summary, holdout=hold.fingerprint, drift=drift,
                       drift_threshold=args.psi_threshold)
    spec = gates_doc.get("spec", gates_doc) if isinstance(gates_doc, dict) else None
    target = str(((spec or {}).get("targetRef") or {}).get("name") or "score")
    plots: dict[str, str] = {}
    if args.report_dir or args.mlflow_uri:  # the confusion matrices (ROC and PR need the servers' classes)
        from modelrollout.cli.report_files import report_plots
        plots = report_plots(rep)
    rep = tracked(rep, args, target=target, run_name=f"score {Path(args.candidate).name}", spec=spec,
                  context={"command": "score", "candidate": str(args.candidate), "baseline": str(args.baseline or "")},
                  plots=plots)
    write_outputs(rep, args, plots, {"candidate predictions": str(args.candidate),
                                     "baseline predictions": str(args.baseline or "-"), "hold-out": str(args.holdout)})
    return EXIT_PROMOTE if rep.decision.promote else EXIT_REJECT


def cmd_demo(args: argparse.Namespace) -> int:
    from modelrollout.cli.demo import run_demo

    code: int = run_demo(args)
    return code


def cmd_evaluate(args: argparse.Namespace) -> int:
    from modelrollout.cli.evaluate import run_evaluate

    code: int = run_evaluate(args)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    from modelrollout.serving.server import run_server

    code: int = run_server(args)
    return code


def _label(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelrollout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="gate predictions that already exist (e.g. from a batch job)")
    s.add_argument("--holdout", required=True, help="hold-out file: .csv, .parquet, .jsonl or .npz")
    s.add_argument("--label-column", required=True)
    s.add_argument("--slice-column", action="append", help="a column to report per-group figures for")
    s.add_argument("--drift-reference", help="a reference set (same formats, no label needed) to measure each "
                   "feature's drift from: drift_psi_max, drifted_features")
    s.add_argument("--psi-threshold", type=float, default=0.25, help="a feature drifted at this PSI (default 0.25)")
    s.add_argument("--feature-column", action="append",
                   help="a column the model takes (repeat; default: every column but the label and slices); "
                        "adjusted_r2 counts these")
    s.add_argument("--candidate", required=True, help="candidate predictions (column `prediction`, "
                   "optional `score` or `proba_<class>`)")
    s.add_argument("--baseline", help="baseline predictions, same layout")
    s.add_argument("--prediction-column", default="prediction")
    s.add_argument("--positive-label", type=_label, default=None)
    s.add_argument("--task", choices=["binary-classification", "multiclass-classification", "regression"])
    s.add_argument("--gates", required=True, help="a ModelRollout manifest or a file with `gates:`")
    s.add_argument("--output", help="write the JSON report here")
    s.add_argument("--markdown", help="write a Markdown report (for a pull-request comment) here")
    add_tracking_arguments(s)
    add_report_argument(s)
    s.set_defaults(func=cmd_score)

    d = sub.add_parser("demo", help="train, serve and gate two models on this machine, no cluster needed")
    d.add_argument("--report-dir", default="modelrollout-report")
    d.add_argument("--duration", default="3s", help="load per batch size (default 3s)")
    d.add_argument("--metrics-file", help="also write the figures in Prometheus textfile format")
    d.add_argument("--pushgateway", help="also push the figures to this Pushgateway URL")
    add_tracking_arguments(d)
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("evaluate", help="evaluate model servers that are already running")
    e.add_argument("-f", "--file", required=True, help="a ModelRollout manifest")
    e.add_argument("--candidate", required=True, help="candidate server base URL")
    e.add_argument("--baseline", help="baseline server base URL")
    e.add_argument("--holdout", help="hold-out file (overrides spec.holdout)")
    e.add_argument("--output", help="write the JSON report here")
    e.add_argument("--markdown", help="write a Markdown report here")
    e.add_argument("--metrics-file", help="also write the figures in Prometheus textfile format")
    e.add_argument("--pushgateway", help="also push the figures to this Pushgateway URL")
    add_tracking_arguments(e)
    add_report_argument(e)
    e.set_defaults(func=cmd_evaluate)

    v = sub.add_parser("serve", help="serve a scikit-learn model over the V2 and V1 inference protocols")
    add_serve_arguments(v)
    v.set_defaults(func=cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (SpecError, DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_REJECT
    except Exception as e:  # a bug, not a verdict: never exit with "reject" (1) for it
        where = traceback.extract_tb(e.__traceback__)[-1]
        print(f"internal error: {type(e).__name__}: {cap(str(e), 300)} (at {Path(where.filename).name}:"
              f"{where.lineno}); please report it", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
