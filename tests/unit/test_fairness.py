"""Facets, bias measures, agreement with production and the hold-out's data figures, against references.

Clarify's measures are checked against Clarify's own open-source implementation (smclarify) on random
hold-outs, per-group figures against Fairlearn's MetricFrame (which calls scikit-learn), worst groups and
bias intervals against a plain loop over the very same bootstrap resamples.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from smclarify.bias.metrics import posttraining as post
from smclarify.bias.metrics import pretraining as pre

from modelrollout.core.dataquality import data_figures, data_gate_failures
from modelrollout.core.engine import build_report
from modelrollout.core.fairness import Facet, bias_kernel
from modelrollout.core.gates import Verdict
from modelrollout.core.quality import DataError, Problem, compare, encode, metrics, resample_indices
from modelrollout.core.spec import Gate, SpecError, parse_gates_file, parse_spec

logging.getLogger("smclarify").setLevel(logging.CRITICAL)
ALL = np.arange


def _clarify(label: np.ndarray, pred: np.ndarray, facet: np.ndarray, d: str) -> dict[str, float]:
    """smclarify's value of each measure (facet d: rows equal to `d`, facet a: the rest), NaN where it raises."""
    lab, prd, feat = pd.Series(label == 1), pd.Series(pred == 1), pd.Series(facet)
    idx = feat == d
    calls: dict[str, tuple[Any, ...]] = {
        "ci": (pre.CI, feat, idx), "dpl": (pre.DPL, feat, idx, lab), "kl": (pre.KL, lab, idx),
             "js": (pre.JS, lab, idx), "lp": (pre.LP, lab, idx), "tvd": (pre.TVD, lab, idx), "ks": (pre.KS, lab, idx),
             "dppl": (post.DPPL, feat, idx, prd), "di": (post.DI, feat, idx, prd)}
    calls |= {n.lower(): (getattr(post, n), feat, idx, lab, prd) for n in ("DCA", "DCR", "RD", "SD", "DAR", "DRR",
                                                                          "AD", "TE")}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (fn, *args) in calls.items():
            try:
                out["bias_" + name] = float(fn(*args))
            except (ValueError, ZeroDivisionError):
                out["bias_" + name] = float("nan")
    return out


def _ours(label: np.ndarray, pred: np.ndarray, facet: np.ndarray, d: str) -> dict[str, float]:
    pb = encode("binary-classification", label, pred, None)
    k = bias_kernel(pb, Facet("f", (d,)).codes(facet.tolist()))
    return {m: float(v[0]) for m, v in k(ALL(pb.n, dtype=np.int64)[None, :]).items()}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(12, 400), st.floats(0.05, 0.6), st.floats(0.02, 0.98))
def test_every_clarify_measure_equals_smclarify(seed: int, n: int, share_d: float, base_rate: float) -> None:
    rng = np.random.default_rng(seed)
    facet = np.where(rng.random(n) < share_d, "f", rng.choice(["m", "x"], n))
    label = (rng.random(n) < np.where(facet == "f", base_rate / 2, base_rate)).astype(int)
    pred = np.where(rng.random(n) < 0.7, label, 1 - label)
    # every (facet, label, prediction) at least once: no zero denominator, where smclarify's 0/0 = 0 and
    # x/0 = inf differ from our "undefined" on purpose (test_a_zero_denominator_is_undefined_not_zero)
    facet[:8], label[:8], pred[:8] = ["f"] * 4 + ["m"] * 4, [0, 0, 1, 1] * 2, [0, 1, 0, 1] * 2
    want, got = _clarify(label, pred, facet, "f"), _ours(label, pred, facet, "f")
    assert set(got) == set(want)
    for m, w in want.items():
        assert got[m] == pytest.approx(w, rel=1e-9, abs=1e-12), m


def test_a_zero_denominator_is_undefined_not_zero() -> None:
    label = np.array([1, 1, 0, 0, 1, 0])
    pred = np.array([1, 1, 1, 0, 0, 0])  # facet d predicts no positive: DI's numerator 0, DCA undefined in d
    facet = np.array(["a", "a", "a", "a", "d", "d"])
    got = _ours(label, pred, facet, "d")
    assert got["bias_di"] == 0.0 and np.isnan(got["bias_dca"]) and np.isnan(got["bias_dar"])
    with pytest.raises(DataError, match=r"fairness.disadvantaged: no hold-out row has one of \['q'\]"):
        Facet("region", ("q",)).codes(facet.tolist())


def test_advantaged_values_leave_other_rows_out() -> None:
    rng = np.random.default_rng(3)
    n = 300
    facet = rng.choice(["a", "d", "other"], n)
    label, pred = rng.integers(0, 2, n), rng.integers(0, 2, n)
    pb = encode("binary-classification", label, pred, None)
    k = bias_kernel(pb, Facet("f", ("d",), ("a",)).codes(facet.tolist()))
    got = {m: float(v[0]) for m, v in k(ALL(n, dtype=np.int64)[None, :]).items()}
    keep = facet != "other"
    assert got == pytest.approx(_ours(label[keep], pred[keep], facet[keep], "d"), nan_ok=True)


def _case(seed: int, n: int) -> tuple[Problem, Problem, dict[str, list[str]]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    s2 = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    region = rng.choice(["eu", "us", "apac", "tiny"], n, p=[0.5, 0.38, 0.1, 0.02]).tolist()
    cand = encode("binary-classification", y, (s >= 0.5).astype(int), s)
    base = encode("binary-classification", y, (s2 >= 0.5).astype(int), s2)
    return cand, base, {"region": region}


def test_per_group_figures_equal_fairlearn_metricframe() -> None:
    cand, base, slices = _case(1, 900)
    c = compare(cand, base, resamples=0, slices=slices, min_group_rows=30)
    frame = MetricFrame(metrics={"accuracy": skm.accuracy_score, "recall": skm.recall_score,
                                 "f1": skm.f1_score}, y_true=cand.y, y_pred=cand.pred,
                        sensitive_features=pd.Series(slices["region"], name="region"))
    groups = c.candidate.slices[0].groups
    for g, row in frame.by_group.iterrows():
        for m in ("accuracy", "recall", "f1"):
            assert groups[str(g)][m] == pytest.approx(row[m], abs=1e-12)
    sizes = c.candidate.slices[0].sizes
    gated = {g: v["f1"] for g, v in groups.items() if sizes[g] >= 30}
    assert "tiny" not in gated  # 2 % of 900: under min_group_rows, reported but not gated
    assert c.candidate.metrics["f1_worst_group"] == min(gated.values())
    assert c.candidate.metrics["f1_slice_gap"] == pytest.approx(max(gated.values()) - min(gated.values()))
    assert c.candidate.slices[0].worst["f1"] == min(gated, key=lambda g: gated[g])
    assert c.candidate.metrics["log_loss_worst_group"] == max(v["log_loss"] for g, v in groups.items() if g in gated)


def test_worst_group_and_bias_distributions_equal_a_loop_over_the_same_resamples() -> None:
    cand, base, slices = _case(2, 240)
    facet = Facet("region", ("apac",), ("eu", "us"))
    c = compare(cand, base, resamples=40, seed=5, slices=slices, min_group_rows=20, facet=facet)
    region = np.asarray(slices["region"])
    gated = [g for g in ("eu", "us", "apac", "tiny") if (region == g).sum() >= 20]
    codes = facet.codes(slices["region"])
    assert cand.scores is not None
    scores, i = cand.scores, 0
    for idx in resample_indices(cand.n, 40, 5):
        for row in idx:
            sub = dataclasses.replace(cand, y=cand.y[row], pred=cand.pred[row], scores=scores[row])
            per = [metrics(dataclasses.replace(sub, y=sub.y[region[row] == g], pred=sub.pred[region[row] == g],
                                               scores=scores[row][region[row] == g]))["recall"]
                   for g in gated if (region[row] == g).any()]
            per = [v for v in per if np.isfinite(v)]
            assert c.candidate.distributions["recall_worst_group"][i] == pytest.approx(min(per))
            keep = codes[row] >= 0
            want = _ours(sub.y[keep].astype(int), sub.pred[keep].astype(int),
                         np.where(codes[row][keep] == 1, "d", "a"), "d")
            assert c.candidate.distributions["bias_di"][i] == pytest.approx(want["bias_di"], nan_ok=True)
            i += 1
    assert c.delta_distributions["bias_ci"] == pytest.approx(0.0)  # a property of the labels: the same both sides
    assert "bias_di" in c.delta_intervals and "disagreement_rate" not in c.baseline.metrics  # type: ignore[union-attr]


def test_agreement_with_production() -> None:
    cand, base, _ = _case(4, 500)
    same = compare(cand, dataclasses.replace(cand), resamples=50)
    assert same.candidate.metrics["disagreement_rate"] == 0.0
    assert same.candidate.metrics["max_abs_score_diff"] == 0.0
    other = compare(cand, base, resamples=50).candidate
    assert cand.scores is not None and base.scores is not None
    assert other.metrics["disagreement_rate"] == pytest.approx(np.mean(cand.pred != base.pred))
    assert other.metrics["mean_abs_score_diff"] == pytest.approx(np.mean(np.abs(cand.scores - base.scores)))
    assert other.metrics["max_abs_score_diff"] == pytest.approx(np.max(np.abs(cand.scores - base.scores)))
    gate = Gate(metric="disagreement_rate", max=0.001)
    for cmp, verdict in ((same, Verdict.PASS), (compare(cand, base, resamples=50), Verdict.FAIL)):
        rep = build_report("binary-classification", [gate], cmp)
        assert rep.gates[0].verdict is verdict, rep.gates[0].message
    reg_c = encode("regression", np.arange(10.0), np.arange(10.0) + 0.5, None)
    reg_b = encode("regression", np.arange(10.0), np.arange(10.0), None)
    assert compare(reg_c, reg_b, resamples=0).candidate.metrics["max_abs_score_diff"] == pytest.approx(0.5)


def _summary(rows: int = 100, missing: dict[str, int] | None = None, dup: int = 0,
             labels: dict[str, int] | None = None) -> dict[str, object]:
    return {"rows": rows, "columns": 4, "missing": missing or {"a": 0, "b": 0, "c": 0, "y": 0},
            "duplicateRows": dup, "labels": labels or {"0": 60, "1": 40}}


def test_data_figures_and_the_gates_that_fail_before_staging() -> None:
    s = _summary(missing={"a": 0, "income": 30, "c": 2, "y": 0}, dup=5, labels={"0": 95, "1": 5})
    f = data_figures(s)
    assert f == {"rows": 100, "missing_percent": 8.0, "worst_column_missing_percent": 30.0, "duplicate_rows": 5,
                 "duplicate_percent": 5.0, "label_balance": 0.05}
    gates = [Gate(metric="worst_column_missing_percent", max=10), Gate(metric="label_balance", min=0.1),
             Gate(metric="duplicate_rows", max=10), Gate(metric="f1", min=0.5)]
    why = data_gate_failures(gates, s)
    assert why is not None and "gate 0 failed" in why and "gate 1 failed" in why and "gate 2" not in why
    assert "income (30%)" in why and "c (2%)" in why
    assert data_gate_failures(gates, _summary()) is None
    assert data_gate_failures([gates[0].model_copy(update={"dry_run": True})], s) is None
    assert data_figures(_summary(labels={"1": 100}))["label_balance"] == 0.0


BASE = {"targetRef": {"name": "m"}, "task": "binary-classification", "serving": {"protocol": "v2", "modelName": "m"},
        "holdout": {"configMapRef": {"name": "h", "key": "k"}, "labelColumn": "y"}}


def _problems(spec: dict[str, object], **kw: bool) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(spec, **kw)
    return [f"{p.path}: {p.message}" for p in e.value.problems]


def test_gates_that_can_never_be_computed_are_refused_naming_the_field() -> None:
    probs = _problems({**BASE, "gates": [{"metric": "f1_slice_gap", "max": 0.1}, {"metric": "bias_di", "min": 0.8}]})
    assert any(p.startswith("spec.gates[0].metric") and "holdout.sliceColumns" in p for p in probs), probs
    assert any(p.startswith("spec.gates[1].metric") and "fairness.facet" in p for p in probs), probs
    hold = {**BASE["holdout"], "sliceColumns": ["region"]}  # type: ignore[dict-item]
    probs = _problems({**BASE, "holdout": hold, "fairness": {"facet": "sex", "disadvantaged": ["f"]},
                       "gates": [{"metric": "bias_di", "min": 0.8}]})
    assert probs == ["spec.fairness.facet: fairness.facet 'sex' is not one of holdout.sliceColumns (['region'])"]
    ok = parse_spec({**BASE, "holdout": hold, "fairness": {"facet": "region", "disadvantaged": ["apac"]},
                     "gates": [{"metric": "bias_di", "min": 0.8}, {"metric": "f1_worst_group", "maxDrop": 0.02}]})
    assert ok.fairness is not None and ok.fairness.as_facet().disadvantaged == ("apac",)
    probs = _problems({**BASE, "gates": [{"metric": "missing_percent", "maxIncrease": 1}]})
    assert "figure of the hold-out" in probs[0]
    probs = _problems({**BASE, "gates": [{"metric": "disagreement_rate", "max": 0.001}]}, has_baseline=False)
    assert "needs a baseline" in probs[0]
    probs = _problems({**BASE, "task": "regression", "gates": [{"metric": "bias_di", "min": 0.8}]})
    assert "binary-classification" in probs[0]
    with pytest.raises(SpecError, match="--slice-column"):
        from modelrollout.core.gatefit import fit_problems
        gf = parse_gates_file({"gates": [{"metric": "f1_worst_group", "min": 0.5}]}, task="binary-classification",
                              has_baseline=True)
        raise SpecError(fit_problems([g.metric for g in gf.gates], [], gf.fairness, "--slice-column", False))
