"""`modelrollout demo`: the whole evaluation on this machine, with no cluster and no input.

Trains a baseline and a better candidate on a data set that ships inside scikit-learn,
serves each with the reference server as a local process, evaluates both (quality with
intervals, latency/throughput sweep, memory and leak probe, capacity against this
machine's memory), applies the example gates and writes a report folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import psutil
import skops.io as sio
import yaml
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from modelrollout.cli.outputs import tracked
from modelrollout.core.capacity import Node
from modelrollout.core.report import to_text
from modelrollout.core.spec import parse_manifest
from modelrollout.core.units import parse_duration
from modelrollout.evaluation import Variant, evaluate_servers
from modelrollout.exporter import export
from modelrollout.holdout import prepare, read_table
from modelrollout.probes.resources import ProcessSource
from modelrollout.serving.client import Endpoint


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(folder: Path) -> tuple[Path, Path, Path]:
    """Baseline: a depth-2 tree. Candidate: a scaled logistic regression. Hold-out: 40%."""
    data = load_breast_cancer(as_frame=True)
    X, y = data.data, 1 - data.target  # 1 = malignant
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)
    base = DecisionTreeClassifier(max_depth=2, random_state=0).fit(Xtr.to_numpy(), ytr)
    cand = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(Xtr.to_numpy(), ytr)
    paths = folder / "baseline.skops", folder / "candidate.skops", folder / "holdout.csv"
    sio.dump(base, paths[0])
    sio.dump(cand, paths[1])
    hold = Xte.copy()
    hold["size_band"] = np.where(Xte["mean radius"] > Xte["mean radius"].median(), "large", "small")
    hold["malignant"] = yte
    hold.to_csv(paths[2], index=False)
    return paths


@contextlib.contextmanager
def serve(model: Path, name: str) -> Iterator[tuple[str, int, float]]:
    """A reference server as a child process (url, pid, when started); always stopped, even on Ctrl-C."""
    port, started = free_port(), time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelrollout.cli", "serve", str(model), "--name", name, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", proc.pid, started
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def this_machine() -> list[Node]:
    vm = psutil.virtual_memory()
    return [Node(name=socket.gethostname(), allocatable_memory_bytes=float(vm.total),
                 allocatable_cpu_millis=1000.0 * (os.cpu_count() or 1),
                 requested_memory_bytes=float(vm.total - vm.available))]


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    doc = yaml.safe_load(resources.files("modelrollout").joinpath("data/demo.yaml").read_text())
    doc["spec"]["load"]["duration"] = args.duration
    parse_duration(args.duration)
    meta, spec = parse_manifest(doc)
    out = Path(args.report_dir)
    with tempfile.TemporaryDirectory(prefix="modelrollout-demo-") as tmp:
        progress("training a baseline (decision tree) and a candidate (logistic regression)")
        base_model, cand_model, hold_path = train(Path(tmp))
        hold = prepare(read_table(hold_path), task=spec.task, label_column=spec.holdout.label_column,
                       slice_columns=spec.holdout.slice_columns, name=str(hold_path))
        name = spec.serving.model_name
        with serve(cand_model, name) as (cand_url, cand_pid, cand_at), \
                serve(base_model, name) as (base_url, base_pid, base_at):
            progress(f"serving candidate at {cand_url}, baseline at {base_url}")
            variants = [
                Variant(label, Endpoint(url, name, spec.serving.protocol, spec.serving.timeout,
                                        int(spec.serving.max_response_size), label,
                                        outputs=(spec.serving.outputs.labels, spec.serving.outputs.probabilities)),
                        ProcessSource(pid),
                        memory_source="process (psutil)", started_at=at)
                for label, url, pid, at in (("candidate", cand_url, cand_pid, cand_at),
                                            ("baseline", base_url, base_pid, base_at))]
            rep, measured = asyncio.run(evaluate_servers(spec, hold, variants[0], variants[1], this_machine(),
                                                         progress))
    from modelrollout.cli.report_files import binary_scores, report_plots, write_report_dir

    plots = report_plots(rep, *binary_scores(hold.labels, measured, spec.holdout.positive_label))
    rep = tracked(rep, args, target="demo", run_name="demo", spec=doc["spec"], plots=plots,
                  context={"command": "demo", "candidate": "logistic regression", "baseline": "decision tree"})
    paths = write_report_dir(rep, out, plots, {"candidate": "logistic regression (scikit-learn)",
                                               "baseline": "decision tree (scikit-learn)"})
    export(rep, meta["name"], meta.get("namespace", "default"), metrics_file=args.metrics_file,
           pushgateway=args.pushgateway)
    print(to_text(rep))
    print(f"\nreport: {paths['html']} (also {paths['json'].name}, {paths['markdown'].name}); "
          f"{time.monotonic() - started:.0f}s")
    return 0 if rep.decision.promote else 1



