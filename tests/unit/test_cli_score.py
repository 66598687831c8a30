"""`modelrollout score`: exit 0 promote, 1 reject, 2 bad input; JSON and Markdown reports."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from modelrollout.cli.main import main

EX = Path(__file__).parents[2] / "examples" / "score"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`modelrollout score ARGS` in this process (the CLI's own main, exit code and output): a new Python per
    call would spend seconds importing pandas and scikit-learn. `test_the_entry_point_...` runs a real one."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd or Path.cwd()):
        try:
            code = main(["score", *args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 2
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


BASE = ["--holdout", str(EX / "holdout.csv"), "--label-column", "malignant", "--slice-column", "region",
        "--candidate", str(EX / "candidate.csv"), "--baseline", str(EX / "baseline.csv")]


def test_the_entry_point_runs_the_same_command(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "modelrollout.cli", "score", *BASE, "--gates", str(EX / "gates.yaml"),
                          "--output", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert out.returncode == 0 and "decision: Promote" in out.stdout, out.stderr
    assert out.stdout == run(*BASE, "--gates", str(EX / "gates.yaml"), "--output", str(tmp_path / "s.json")).stdout


def test_example_promotes_and_writes_reports(tmp_path: Path) -> None:
    out = run(*BASE, "--gates", str(EX / "gates.yaml"), "--output", str(tmp_path / "r.json"),
              "--markdown", str(tmp_path / "r.md"))
    assert out.returncode == 0, out.stderr
    assert "decision: Promote" in out.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["schema"] == "modelrollout.dev/report/v1"
    assert rep["decision"]["result"] == "Promote"
    y = pd.read_csv(EX / "holdout.csv")["malignant"]
    p = pd.read_csv(EX / "candidate.csv")["prediction"]
    f1 = next(f for f in rep["figures"] if f["name"] == "f1")
    assert f1["candidate"] == pytest.approx(f1_score(y, p), abs=1e-12)
    assert f1["interval"]["low"] < f1["candidate"] < f1["interval"]["high"]
    assert {g["verdict"] for g in rep["gates"]} == {"Pass"}
    assert rep["dataQuality"]["rows"] == len(y)
    assert "| f1 |" in (tmp_path / "r.md").read_text()
    # the facet figures: per group, the worst group, Clarify's measures of both models, agreement with production
    fig = {f["name"]: f for f in rep["figures"]}
    region = pd.read_csv(EX / "holdout.csv")["region"]
    b = pd.read_csv(EX / "baseline.csv")["prediction"]
    recall = {g: float(((p == 1) & (y == 1))[region == g].sum() / (y == 1)[region == g].sum()) for g in set(region)}
    assert fig["recall_worst_group"]["candidate"] == pytest.approx(min(recall.values()))
    assert rep["candidate"]["slices"][0]["worst"]["recall"] == min(recall, key=lambda g: recall[g])
    q = {g: float((p[region == g] == 1).mean()) for g in ("apac",)} | {"rest": float((p[region != "apac"] == 1).mean())}
    assert fig["bias_di"]["candidate"] == pytest.approx(q["apac"] / q["rest"])
    assert fig["bias_di"]["baseline"] is not None and fig["bias_di"]["deltaInterval"] is not None
    assert fig["disagreement_rate"]["candidate"] == pytest.approx(float((p != b).mean()))
    assert fig["missing_percent"]["candidate"] == 0 and fig["label_balance"]["candidate"] == pytest.approx(
        min(y.mean(), 1 - y.mean()))
    assert "**by region (candidate / baseline)**" in (tmp_path / "r.md").read_text()


def test_a_group_gate_needs_a_slice_column(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("task: binary-classification\ngates: [{metric: f1_worst_group, min: 0.5}]\n")
    out = run(*[a for a in BASE if a not in ("--slice-column", "region")], "--gates", str(tmp_path / "g.yaml"))
    assert out.returncode == 2 and "gates[0].metric: f1_worst_group is a figure of groups" in out.stderr, out.stderr
    assert "--slice-column" in out.stderr


def test_failing_gate_exits_1_and_names_it(tmp_path: Path) -> None:
    gates = tmp_path / "g.yaml"
    gates.write_text("task: binary-classification\ngates: [{metric: f1, min: 0.99}]\n")
    out = run(*BASE, "--gates", str(gates))
    assert out.returncode == 1
    assert "gate 0 failed: f1 0.8757 is below the minimum 0.9900" in out.stdout


@pytest.mark.parametrize(("gates", "extra", "message"), [
    ("task: binary-classification\ngates: [{metric: r2, min: 0.5}]\n", [],
     "gates[0].metric: 'r2' is not defined for task 'binary-classification'"),
    ("task: binary-classification\ngates: [{metric: f1, min: 0.9, max: 0.1}]\n", [],
     "gates[0]: min (0.9) is greater than max (0.1)"),
    ("task: binary-classification\ngates: []\n", [], "gates:"),
    ("task: binary-classification\ngates: [{metric: f1, min: 0.5}]\n", ["--label-column", "nope"],
     "label column 'nope' not found"),
])
def test_bad_input_exits_2_with_a_clear_error(tmp_path: Path, gates: str, extra: list[str], message: str) -> None:
    g = tmp_path / "g.yaml"
    g.write_text(gates)
    out = run(*BASE, "--gates", str(g), *extra)
    assert out.returncode == 2, out.stdout
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_relative_gate_without_baseline_is_bad_input(tmp_path: Path) -> None:
    g = tmp_path / "g.yaml"
    g.write_text("task: binary-classification\ngates: [{metric: f1, maxDrop: 0.01}]\n")
    args = [a for a in BASE if a not in ("--baseline", str(EX / "baseline.csv"))]
    out = run(*args, "--gates", str(g))
    assert out.returncode == 2
    assert "gates[0]: 'f1' has a relative bound but no baseline was given" in out.stderr


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "npz"])
def test_other_formats_give_the_same_figures(tmp_path: Path, fmt: str) -> None:
    df = pd.read_csv(EX / "holdout.csv").drop(columns=["region"])
    path = tmp_path / f"h.{fmt}"
    if fmt == "parquet":
        df.to_parquet(path)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        arrays: dict[str, Any] = {c: df[c].to_numpy() for c in df.columns}
        np.savez(path, **arrays)
    g = tmp_path / "g.yaml"
    g.write_text("task: binary-classification\nquality: {resamples: 0}\ngates: [{metric: f1, min: 0.5}]\n")
    out = run("--holdout", str(path), "--label-column", "malignant", "--candidate", str(EX / "candidate.csv"),
              "--gates", str(g), "--output", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    f1 = next(f for f in json.loads((tmp_path / "r.json").read_text())["figures"] if f["name"] == "f1")
    assert f1["candidate"] == pytest.approx(f1_score(df["malignant"], pd.read_csv(EX / "candidate.csv")["prediction"]))


@pytest.mark.parametrize(("content", "name", "message"), [
    (b"", "h.csv", "the file is empty"),
    (b"a,malignant\n1,\n2,1\n", "h.csv", "label column 'malignant' has 1 missing values"),
    (b"a,malignant\n", "h.csv", "has no rows"),
    (b"this is,not\x00parquet", "h.parquet", "not a valid parquet file"),
    (b"PAR1 really", "h.csv", "not a valid csv file"),
    (b"a,b\n1,2\n", "h.xlsx", "cannot tell the format"),
])
def test_bad_holdout_files(tmp_path: Path, content: bytes, name: str, message: str) -> None:
    h = tmp_path / name
    h.write_bytes(content)
    g = tmp_path / "g.yaml"
    g.write_text("task: binary-classification\ngates: [{metric: f1, min: 0.5}]\n")
    out = run("--holdout", str(h), "--label-column", "malignant", "--candidate", str(EX / "candidate.csv"),
              "--gates", str(g))
    assert out.returncode == 2
    assert message in out.stderr, out.stderr


def test_regression_needs_numeric_labels(tmp_path: Path) -> None:
    h = tmp_path / "h.csv"
    h.write_text("x,y\n1,a\n2,b\n")
    c = tmp_path / "c.csv"
    c.write_text("prediction\n1\n2\n")
    g = tmp_path / "g.yaml"
    g.write_text("task: regression\ngates: [{metric: rmse, max: 1}]\n")
    out = run("--holdout", str(h), "--label-column", "y", "--candidate", str(c), "--gates", str(g))
    assert out.returncode == 2 and "task regression needs numeric labels" in out.stderr
