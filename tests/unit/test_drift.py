"""Drift between the hold-out and a reference set: PSI, KS and chi-square per feature, as gates.

PSI is checked against a plain loop over pandas' quantile bins, the tests against scipy on the same
values, and the threshold convention by seeded simulation: the same distribution stays under it,
a shift of half a standard deviation goes over it.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from modelrollout.cli.main import main
from modelrollout.core.dataquality import data_gate_failures
from modelrollout.core.drift import PSI_FLOOR, drift_figures, feature_drift
from modelrollout.core.spec import Gate, SpecError, parse_spec

EX = Path(__file__).parents[2] / "examples" / "score"


def _psi_loop(h: np.ndarray, r: np.ndarray, bins: int = 10) -> float:
    """Bins at the reference's quantiles (pandas), shares floored, summed one bin at a time."""
    edges = np.unique(np.quantile(r, np.linspace(0, 1, bins + 1)[1:-1]))
    full = np.concatenate([[-np.inf], edges, [np.inf]])
    total = 0.0
    for lo, hi in itertools.pairwise(full):
        ph = max(float(((h >= lo) & (h < hi)).mean()), PSI_FLOOR)
        pr = max(float(((r >= lo) & (r < hi)).mean()), PSI_FLOOR)
        total += (ph - pr) * np.log(ph / pr)
    return total


@pytest.mark.parametrize("seed", range(5))
def test_numeric_psi_and_ks_equal_their_references(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, r = rng.normal(0.3, 1.2, 700).round(2), rng.normal(0, 1, 1500).round(2)  # ties on bin edges
    [f] = feature_drift({"x": h}, {"x": r})
    assert f.psi == pytest.approx(_psi_loop(h, r), rel=1e-12)
    ks = stats.ks_2samp(h, r)
    assert (f.statistic, f.p_value) == pytest.approx((ks.statistic, ks.pvalue))


def test_categorical_psi_and_chi_square() -> None:
    h = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20, dtype=object)
    r = np.array(["a"] * 70 + ["b"] * 30 + [None] * 5, dtype=object)  # c is new; missing values are left out
    [f] = feature_drift({"city": h}, {"city": r})
    ph, pr = np.array([0.5, 0.3, 0.2]), np.maximum(np.array([0.7, 0.3, 0.0]), PSI_FLOOR)
    assert f.kind == "categorical" and f.psi == pytest.approx(float(np.sum((ph - pr) * np.log(ph / pr))))
    chi = stats.chi2_contingency(np.array([[50, 30, 20], [70, 30, 0]]))
    assert (f.statistic, f.p_value) == pytest.approx((chi.statistic, chi.pvalue))
    assert f.drifted  # a new category of a fifth of the rows is a significant shift


def test_the_threshold_convention_by_seeded_simulation() -> None:
    """Same distribution, 2,000 rows each: under 0.1 (stable) in every one of 200 seeds; half a standard
    deviation of shift: over 0.1 in every seed (moderate or worse)."""
    same, shifted = [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        r = rng.normal(size=2000)
        same.append(feature_drift({"x": rng.normal(size=2000)}, {"x": r})[0].psi)
        shifted.append(feature_drift({"x": rng.normal(0.5, 1, 2000)}, {"x": r})[0].psi)
    assert max(same) < 0.1 and min(shifted) > 0.1 and np.median(shifted) > 0.2


def test_drift_figures_gate_before_staging() -> None:
    rng = np.random.default_rng(1)
    h = {"age": rng.normal(40, 10, 500), "income": rng.normal(0, 1, 500), "city": np.array(["x"] * 500, dtype=object)}
    r = {"age": rng.normal(40, 10, 500), "income": rng.normal(1.5, 1, 500), "city": np.array(["x"] * 500, dtype=object)}
    feats = feature_drift(h, r)
    assert next(f.feature for f in feats) == "income" and [f.drifted for f in feats] == [True, False, False]
    figs = drift_figures(feats)
    assert figs["drifted_features"] == 1 and figs["drift_psi_max"] == feats[0].psi
    why = data_gate_failures([Gate(metric="drifted_features", max=0), Gate(metric="f1", min=0.9)],
                             {"rows": 500, "columns": 3}, figs)
    assert why is not None and "gate 0 failed: drifted_features 1 is above the maximum 0" in why


def test_a_drift_gate_needs_a_reference() -> None:
    spec = {"targetRef": {"name": "m"}, "task": "regression", "serving": {"modelName": "m"},
            "holdout": {"configMapRef": {"name": "h", "key": "k"}, "labelColumn": "y"},
            "gates": [{"metric": "drift_psi_max", "max": 0.25}]}
    with pytest.raises(SpecError, match=r"spec.gates\[0\].metric: drift_psi_max compares the hold-out with a "
                       r"reference set: give drift.referenceRef"):
        parse_spec(spec)
    ok = parse_spec({**spec, "drift": {"referenceRef": {"configMapRef": {"name": "r", "key": "r.csv"}}}})
    assert ok.drift is not None and ok.drift.psi_threshold == 0.25
    with pytest.raises(SpecError, match="exactly one of configMapRef"):
        parse_spec({**spec, "drift": {"referenceRef": {}}})


def _score(*extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["score", "--holdout", str(EX / "holdout.csv"), "--label-column", "malignant",
                     "--candidate", str(EX / "candidate.csv"), "--task", "binary-classification", *extra])
    return code, out.getvalue(), err.getvalue()


def test_score_gates_drift_against_a_reference_file(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("gates: [{metric: f1, min: 0.5}, {metric: drift_psi_max, max: 0.25}]\n")
    df = pd.read_csv(EX / "holdout.csv")
    df.to_csv(tmp_path / "same.csv", index=False)
    code, out, _ = _score("--gates", str(tmp_path / "g.yaml"), "--drift-reference", str(tmp_path / "same.csv"))
    assert code == 0 and "drift_psi_max" in out and "drift from the reference set" in out
    df["mean radius"] = df["mean radius"] * 1.5  # the reference's radii are half as large again
    df.drop(columns=["malignant"]).to_csv(tmp_path / "shifted.csv", index=False)  # a reference needs no label
    code, out, _ = _score("--gates", str(tmp_path / "g.yaml"), "--drift-reference", str(tmp_path / "shifted.csv"),
                          "--markdown", str(tmp_path / "r.md"))
    assert code == 1 and "gate 1 failed: drift_psi_max" in out
    table = out[out.index("drift from the reference set"):]
    assert table.splitlines()[3].startswith("mean radius") and table.splitlines()[3].endswith("yes")
    assert "**drift from the reference set (PSI threshold 0.25)**" in (tmp_path / "r.md").read_text()
    code, _, err = _score("--gates", str(tmp_path / "g.yaml"))
    assert code == 2 and "drift_psi_max compares the hold-out with a reference set: give --drift-reference" in err
