"""Input mistakes are clear errors (exit 2) naming what is wrong; a bug is exit 3, never "reject"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import r2_score, roc_auc_score

from modelrollout.cli import main as cli
from modelrollout.core.figures import Task
from modelrollout.core.quality import DataError, compare, encode, metrics
from modelrollout.serving.protocol import ProtocolError, parse_v2_response
from tests.unit.test_cli_score import BASE, EX, run

TASK: Task = "binary-classification"


def test_a_nan_score_is_named_as_such_with_its_row() -> None:
    with pytest.raises(DataError, match=r"candidate: 1 scores are not numbers \(NaN or infinite\), the first in row 2"):
        encode(TASK, [0, 1, 1], [0, 1, 1], np.array([0.1, 0.9, np.nan]), who="candidate")


def test_one_class_of_string_labels_without_a_positive_label_is_refused() -> None:
    """All rows would be scored negative (accuracy 1.0, F1 0.0) if the positive label were guessed."""
    with pytest.raises(DataError, match=r"positive label 1 is not among the labels \['yes'\] \(set holdout"):
        encode(TASK, ["yes"] * 4, ["yes"] * 4)
    encode(TASK, ["yes"] * 4, ["yes"] * 4, positive_label="yes")  # named: fine
    encode(TASK, [0, 0, 0], [0, 0, 1])  # 0/1 labels: 1 is positive, even if absent


def test_multiclass_probabilities_must_sum_to_one() -> None:
    s = np.array([[0.5, 0.3, 0.1], [0.2, 0.3, 0.5]])
    with pytest.raises(DataError, match=r"1 rows do not \(row 0 sums to 0.9\)"):
        encode("multiclass-classification", [0, 2], [0, 2], s, classes=[0, 1, 2])


def test_scores_for_one_variant_only_are_refused_not_a_crash() -> None:
    cand = encode(TASK, [0, 1, 1, 0], [0, 1, 1, 0], np.array([0.1, 0.8, 0.7, 0.2]))
    base = encode(TASK, [0, 1, 1, 0], [0, 1, 0, 0])
    with pytest.raises(DataError, match=r"the candidate's predictions have scores .* and the baseline's do not"):
        compare(cand, base, resamples=10)


def test_a_score_column_in_one_file_only_exits_2(tmp_path: Path) -> None:
    pd.read_csv(EX / "baseline.csv")[["prediction"]].to_csv(tmp_path / "b.csv", index=False)
    args = [*BASE[:BASE.index("--baseline")], "--baseline", str(tmp_path / "b.csv"), "--gates", str(EX / "gates.yaml")]
    out = run(*args)
    assert out.returncode == 2 and "error: the candidate's predictions have scores" in out.stderr, out
    assert "Traceback" not in out.stderr


def test_an_internal_error_exits_3_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # No real input makes the engine raise an unexpected exception any more, so one is injected:
    # the claim is what the CLI does with a bug, not how one arises.
    def boom(*_: object, **__: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "build_report", boom)
    code = cli.main(["score", *BASE, "--gates", str(EX / "gates.yaml")])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("internal error: ZeroDivisionError: division by zero (at test_bad_predictions.py:")
    assert err.count("\n") == 1


def test_feature_columns_named_on_the_command_line_are_what_adjusted_r2_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = x @ [2.0, -1.0] + rng.normal(scale=0.5, size=200)
    pd.DataFrame({"id": range(200), "ts": range(10**9, 10**9 + 200), "x0": x[:, 0], "x1": x[:, 1], "y": y}) \
        .to_csv(tmp_path / "h.csv", index=False)
    pd.DataFrame({"prediction": x @ [2.0, -1.0]}).to_csv(tmp_path / "c.csv", index=False)
    (tmp_path / "g.yaml").write_text("task: regression\ngates: [{metric: r2, min: 0}]\n")

    r2 = r2_score(y, x @ [2.0, -1.0])
    for extra, p in ([], 4), (["--feature-column", "x0", "--feature-column", "x1"], 2):
        out = run("--holdout", str(tmp_path / "h.csv"), "--label-column", "y", "--candidate", str(tmp_path / "c.csv"),
                  "--gates", str(tmp_path / "g.yaml"), "--output", str(tmp_path / "r.json"), *extra)
        assert out.returncode == 0, out.stderr
        figs = {f["name"]: f["candidate"] for f in json.loads((tmp_path / "r.json").read_text())["figures"]}
        assert figs["adjusted_r2"] == pytest.approx(1 - (1 - r2) * 199 / (200 - p - 1), abs=1e-12), p


def test_two_probability_columns_without_a_class_order_are_refused_never_guessed() -> None:
    y = np.array([0, 1, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
    with pytest.raises(DataError, match=r"class order is unknown: .* set spec.serving.classes"):
        encode(TASK, y, y, proba)
    for positive in (0, 1):  # the column is the positive label's, whichever it is
        for classes in ([0, 1], [1, 0]):
            cols = proba if classes == [0, 1] else proba[:, ::-1]
            pb = encode(TASK, y, y, cols, classes=classes, positive_label=positive)
            assert metrics(pb)["roc_auc"] == pytest.approx(roc_auc_score(y == positive, proba[:, positive]))
    one = encode(TASK, y, y, proba[:, 1:])  # one column: the second class's probability, here the positive's
    assert one.scores is not None and one.scores.tolist() == proba[:, 1].tolist()


def test_one_probability_column_is_the_second_classs_whatever_the_positive_label() -> None:
    y = np.array([0, 1, 1, 0, 1])
    p1 = np.array([[0.1], [0.8], [0.7], [0.4], [0.6]])  # P(class 1), as predict_proba[:, 1]
    for classes, positive in (([0, 1], 0), ([0, 1], 1), (["1", "0"], 0)):
        col = p1 if classes == [0, 1] else 1 - p1  # with classes [1, 0] the column is P(0)
        pb = encode(TASK, y, y, col, classes=classes, positive_label=positive)
        assert metrics(pb)["roc_auc"] == pytest.approx(roc_auc_score(y == positive, np.where(
            positive == 1, p1[:, 0], 1 - p1[:, 0]))), (classes, positive)
    with pytest.raises(DataError, match=r"one probability column.*class order is unknown.*positive label is 0"):
        encode(TASK, y, y, p1, positive_label=0)  # refused, never guessed (roc_auc came out 0.007 for 0.993)


def test_a_servers_single_default_output_and_named_outputs() -> None:
    out0 = {"outputs": [{"name": "output-0", "datatype": "INT64", "shape": [3], "data": [1, 0, 1]}]}
    assert parse_v2_response(out0, 3).labels.tolist() == [1, 0, 1]
    two = {"outputs": [{"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]},
                       {"name": "p", "datatype": "FP64", "shape": [2], "data": [0.9, 0.2]}]}
    with pytest.raises(ProtocolError, match=r"no output named 'predict'.*spec.serving.outputs.labels"):
        parse_v2_response(two, 2)
    got = parse_v2_response(two, 2, "label", "p")
    assert got.labels.tolist() == [1, 0] and got.proba is not None and got.proba.shape == (2, 1)


def test_probabilities_alone_are_not_taken_for_labels() -> None:
    """KServe's scikit-learn runtime with PREDICT_PROBA answers one output, `output-0`, of class probabilities."""
    probs = {"outputs": [{"name": "output-0", "datatype": "FP64", "shape": [2, 2], "data": [0.9, 0.1, 0.3, 0.7]}]}
    with pytest.raises(ProtocolError, match=r"'output-0' has 2 columns of numbers: probabilities, not one label"):
        parse_v2_response(probs, 2, "output-0", None)
    with pytest.raises(ProtocolError, match=r"'output-0' has 2 columns"):  # taken as the only output
        parse_v2_response(probs, 2)
    codes = {"outputs": [{"name": "output-0", "datatype": "INT64", "shape": [2, 2], "data": [1, 0, 0, 1]}]}
    with pytest.raises(ProtocolError, match=r"2 predictions of shape \[2, 2\] for 2 rows"):  # codes: no hint
        parse_v2_response(codes, 2)
