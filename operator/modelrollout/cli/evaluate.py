"""`modelrollout evaluate`: the full evaluation against model servers that are already running."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import yaml

from modelrollout.cli.demo import progress, this_machine
from modelrollout.cli.outputs import EXIT_PROMOTE, EXIT_REJECT, UsageError, tracked, write_outputs
from modelrollout.core.spec import ModelRolloutSpec, parse_manifest
from modelrollout.evaluation import Variant, evaluate_servers
from modelrollout.exporter import export
from modelrollout.holdout import prepare, read_table
from modelrollout.holdout_reference import drift_between, reference_table
from modelrollout.probes.resources import PrometheusSource, Source
from modelrollout.serving.client import Endpoint


async def metrics_source(url: str) -> Source | None:
    """The server's own /metrics, if it exports process memory; otherwise no memory figures."""
    src = PrometheusSource(url.rstrip("/") + "/metrics")
    try:
        await src.sample()
    except Exception as e:  # any failure means: this server does not tell us its memory
        progress(f"{url}: no process metrics at /metrics ({e}); memory figures will be missing")
        return None
    return src


def endpoint(spec: ModelRolloutSpec, url: str, label: str) -> Endpoint:
    s = spec.serving
    return Endpoint(url, s.model_name, s.protocol, s.timeout, int(s.max_response_size), label,
                    outputs=(s.outputs.labels, s.outputs.probabilities))


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        doc = yaml.safe_load(Path(args.file).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{args.file}: {e}") from None
    meta, spec = parse_manifest(doc)
    hold_file = args.holdout or spec.holdout.file
    if not hold_file:
        raise UsageError("spec.holdout: the CLI reads a local file; give --holdout FILE or spec.holdout.file")
    path = Path(hold_file)
    if not path.is_absolute() and not args.holdout:
        path = Path(args.file).parent / path
    hold = prepare(read_table(path, fmt=spec.holdout.format, max_bytes=spec.holdout.max_size,
                              sha256=spec.holdout.sha256),
                   task=spec.task, label_column=spec.holdout.label_column,
                   feature_columns=spec.holdout.feature_columns, slice_columns=spec.holdout.slice_columns,
                   max_rows=spec.holdout.max_rows, seed=spec.holdout.seed, name=str(path))
    if spec.drift is not None:  # the CLI reads a local reference file, relative to the manifest
        r = spec.drift.reference_ref
        if not r.file:
            raise UsageError("spec.drift.referenceRef: the CLI reads a local file; give spec.drift.referenceRef.file")
        rpath = Path(r.file) if Path(r.file).is_absolute() else Path(args.file).parent / r.file
        ref = reference_table(read_table(rpath, fmt=r.format, max_bytes=r.max_size, sha256=r.sha256),
                              [str(c) for c in hold.features.columns], max_rows=r.max_rows, seed=r.seed,
                              name=str(rpath))
        hold.drift = drift_between(hold, ref, bins=spec.drift.bins, threshold=spec.drift.psi_threshold)

    async def run() -> int:
        cand = Variant("candidate", endpoint(spec, args.candidate, "candidate"), src := await metrics_source(
            args.candidate), memory_source="server /metrics" if src else None)
        base = None
        if args.baseline:
            base = Variant("baseline", endpoint(spec, args.baseline, "baseline"), src := await metrics_source(
                args.baseline), memory_source="server /metrics" if src else None)
        rep, measured = await evaluate_servers(spec, hold, cand, base, this_machine(), progress)
        plots: dict[str, str] = {}
        if args.report_dir or args.mlflow_uri:
            from modelrollout.cli.report_files import binary_scores, report_plots
            plots = report_plots(rep, *binary_scores(hold.labels, measured, spec.holdout.positive_label))
        about = {"candidate": args.candidate, "baseline": args.baseline or "-", "hold-out": str(path)}
        rep = tracked(rep, args, target=spec.target_ref.name, run_name=str(meta["name"]), spec=doc.get("spec"),
                      context={"command": "evaluate", "rollout": str(meta["name"]),
                               "namespace": str(meta.get("namespace", "default")), "candidate": args.candidate,
                               "baseline": args.baseline or ""}, plots=plots)
        write_outputs(rep, args, plots, about)
        export(rep, meta["name"], meta.get("namespace", "default"), metrics_file=args.metrics_file,
               pushgateway=args.pushgateway)
        return EXIT_PROMOTE if rep.decision.promote else EXIT_REJECT

    return asyncio.run(run())
