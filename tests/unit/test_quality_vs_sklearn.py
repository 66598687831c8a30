"""Every quality figure equals scikit-learn's on the same arrays, edge cases included."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from modelrollout.core.quality import compare, encode, metrics, undefined

TOL = 1e-9
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sk(fn: Callable[..., Any], *args: Any, **kw: Any) -> float:
    """scikit-learn's value, or NaN where it declares the figure undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(fn(*args, **kw))
        except ValueError:
            return float("nan")


def close(ours: float, theirs: float) -> bool:
    if np.isnan(theirs):
        return bool(np.isnan(ours))
    return abs(ours - theirs) <= TOL * max(1.0, abs(theirs))


# Scores on a coarse grid make ties common; probabilities hit the 0/1 clipping edges too.
score = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]) | st.floats(0, 1)


@st.composite
def binary_case(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(1, 60))
    y = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    s = draw(st.lists(score, min_size=n, max_size=n))
    constant = draw(st.booleans())
    p = [1] * n if constant else [int(v >= 0.5) for v in s]
    return np.array(y), np.array(p), np.array(s)


@SETTINGS
@given(binary_case())
def test_binary_matches_sklearn(case) -> None:  # type: ignore[no-untyped-def]
    y, p, s = case
    ours = metrics(encode("binary-classification", y, p, s))
    expected = {
        "accuracy": sk(skm.accuracy_score, y, p),
        # 0/0 is undefined (NaN), as scikit-learn's zero_division=np.nan, never 0
        "precision": sk(skm.precision_score, y, p, zero_division=np.nan),
        "recall": sk(skm.recall_score, y, p, zero_division=np.nan),
        "f1": sk(skm.f1_score, y, p, zero_division=np.nan),
        "roc_auc": sk(skm.roc_auc_score, y, s) if len(set(y)) == 2 else float("nan"),
        "log_loss": sk(skm.log_loss, y, s, labels=[0, 1]),
    }
    if y.sum() > 0:  # scikit-learn warns and returns a meaningless value with no positive
        expected["pr_auc"] = sk(skm.average_precision_score, y, s)
    for name, value in expected.items():
        assert close(ours[name], value), (name, ours[name], value)


@st.composite
def multiclass_case(draw):  # type: ignore[no-untyped-def]
    k = draw(st.integers(3, 5))
    n = draw(st.integers(1, 60))
    y = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    p = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    raw = np.array(draw(st.lists(st.lists(st.integers(0, 4), min_size=k, max_size=k), min_size=n, max_size=n)))
    raw = raw + 1e-3
    proba = raw / raw.sum(axis=1, keepdims=True)
    return np.array(y), np.array(p), proba, list(range(k))


@SETTINGS
@given(multiclass_case())
def test_multiclass_matches_sklearn(case) -> None:  # type: ignore[no-untyped-def]
    y, p, proba, classes = case
    ours = metrics(encode("multiclass-classification", y, p, proba, classes=classes))
    expected = {"accuracy": sk(skm.accuracy_score, y, p)}
    for avg in ("macro", "weighted"):
        expected[f"precision_{avg}"] = sk(skm.precision_score, y, p, average=avg, zero_division=0)
        expected[f"recall_{avg}"] = sk(skm.recall_score, y, p, average=avg, zero_division=0)
        expected[f"f1_{avg}"] = sk(skm.f1_score, y, p, average=avg, zero_division=0)
    expected["log_loss"] = sk(skm.log_loss, y, proba, labels=classes)
    expected["roc_auc"] = sk(skm.roc_auc_score, y, proba, multi_class="ovr", labels=classes)
    for name, value in expected.items():
        assert close(ours[name], value), (name, ours[name], value)


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def regression_case(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(2, 60))
    y = np.array(draw(st.lists(finite, min_size=n, max_size=n)))
    constant = draw(st.booleans())
    p = np.full(n, draw(finite)) if constant else np.array(draw(st.lists(finite, min_size=n, max_size=n)))
    return y, p


@SETTINGS
@given(regression_case(), st.integers(0, 5))
def test_regression_matches_sklearn(case, n_features: int) -> None:  # type: ignore[no-untyped-def]
    y, p = case
    ours = metrics(encode("regression", y, p, n_features=n_features))
    expected = {
        "mse": skm.mean_squared_error(y, p),
        "rmse": skm.root_mean_squared_error(y, p),
        "mae": skm.mean_absolute_error(y, p),
        "mape": skm.mean_absolute_percentage_error(y, p),
    }
    for name, value in expected.items():
        assert close(ours[name], value), (name, ours[name], value)
    # R² divides by the spread of y; where that spread is a rounding residue scikit-learn's
    # value is noise, so compare only well-conditioned cases (constant y is tested below).
    assume(np.var(y) > 1e-6 * max(1.0, float(np.mean(y**2))))
    r2 = skm.r2_score(y, p)
    assert close(ours["r2"], r2)
    n = len(y)
    adj = 1 - (1 - r2) * (n - 1) / (n - n_features - 1) if n - n_features - 1 > 0 else float("nan")
    assert close(ours["adjusted_r2"], adj)


def test_r2_of_constant_targets_is_undefined_as_sklearn_without_force_finite() -> None:
    y = np.array([3.0, 3.0, 3.0])
    for pred in (y, y + 1):
        m = metrics(encode("regression", y, pred))
        assert np.isnan(m["r2"]) and not np.isfinite(skm.r2_score(y, pred, force_finite=False))  # nan or -inf
        assert undefined(m)["r2"] == "r2 undefined: every label has the same value"


def test_precision_with_no_positive_prediction_is_undefined_and_says_why() -> None:
    y, p = np.array([0, 1, 1, 0]), np.zeros(4, dtype=int)
    m = metrics(encode("binary-classification", y, p))
    assert np.isnan(m["precision"]) and m["recall"] == 0.0 and m["f1"] == 0.0
    assert undefined(m) == {"precision": "precision undefined: no positive predictions"}


def test_single_class_leaves_auc_undefined() -> None:
    y = np.zeros(5, dtype=int)
    m = metrics(encode("binary-classification", y, y, np.linspace(0, 1, 5)))
    assert np.isnan(m["roc_auc"]) and m["accuracy"] == 1.0


def test_string_labels_with_positive_label() -> None:
    y = np.array(["yes", "no", "yes", "no"])
    p = np.array(["yes", "yes", "no", "no"])
    m = metrics(encode("binary-classification", y, p, positive_label="yes"))
    assert close(m["precision"], skm.precision_score(y, p, pos_label="yes"))


def _loop_bootstrap(y: np.ndarray, p: np.ndarray, s: np.ndarray, resamples: int, seed: int,
                    level: float) -> tuple[np.ndarray, np.ndarray]:
    """The slow reference: scikit-learn on every resample, with the engine's own indices."""
    from modelrollout.core.quality import resample_indices

    f1: list[float] = []
    auc: list[float] = []
    for idx in resample_indices(len(y), resamples, seed):
        for row in idx:
            f1.append(skm.f1_score(y[row], p[row], zero_division=0))
            auc.append(sk(skm.roc_auc_score, y[row], s[row]))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    a = np.array(auc)
    return np.percentile(f1, q), np.percentile(a[np.isfinite(a)], q)


def test_bootstrap_equals_the_scikit_learn_loop_for_the_same_seed() -> None:
    rng = np.random.default_rng(3)
    n = 300
    y = rng.integers(0, 2, n)
    s = np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1).round(2)
    p = (s >= 0.5).astype(int)
    cmp = compare(encode("binary-classification", y, p, s), resamples=200, seed=7, level=0.9)
    f1_iv, auc_iv = _loop_bootstrap(y, p, s, 200, 7, 0.9)
    iv = cmp.candidate.intervals
    assert iv["f1"].low == pytest.approx(f1_iv[0], abs=1e-12)
    assert iv["f1"].high == pytest.approx(f1_iv[1], abs=1e-12)
    assert iv["roc_auc"].low == pytest.approx(auc_iv[0], abs=1e-12)
    assert iv["roc_auc"].high == pytest.approx(auc_iv[1], abs=1e-12)


def test_bootstrap_is_reproducible_and_seed_dependent() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=200)
    pb = encode("regression", y, y + rng.normal(scale=0.5, size=200), n_features=3)
    a = compare(pb, resamples=100, seed=5).candidate.intervals["mse"]
    b = compare(pb, resamples=100, seed=5).candidate.intervals["mse"]
    c = compare(pb, resamples=100, seed=6).candidate.intervals["mse"]
    assert a == b and a != c
    assert a.low < metrics(pb)["mse"] < a.high


def test_paired_delta_interval_detects_a_clearly_better_candidate() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    y = rng.integers(0, 2, n)
    good = np.where(rng.random(n) < 0.95, y, 1 - y)
    bad = np.where(rng.random(n) < 0.75, y, 1 - y)
    cmp = compare(encode("binary-classification", y, good), encode("binary-classification", y, bad),
                  resamples=300, seed=0)
    iv = cmp.delta_intervals["accuracy"]
    assert 0 < iv.low < cmp.delta["accuracy"] < iv.high
    assert cmp.delta["accuracy"] == pytest.approx(
        skm.accuracy_score(y, good) - skm.accuracy_score(y, bad), abs=1e-12)


def test_slices_report_per_group_figures_and_the_gap() -> None:
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    p = np.array([1, 0, 1, 0, 0, 1, 0, 1])
    region = ["eu"] * 4 + ["us"] * 4
    cmp = compare(encode("binary-classification", y, p), resamples=0, slices={"region": region})
    sl = cmp.candidate.slices[0]
    assert sl.groups["eu"]["accuracy"] == 1.0 and sl.groups["us"]["accuracy"] == 0.0
    assert sl.sizes == {"eu": 4, "us": 4}
    assert cmp.candidate.metrics["accuracy_slice_gap"] == 1.0


@pytest.mark.parametrize("decimals", [1, 3])  # few distinct scores: one joint table; many: two bincounts
def test_every_binary_bootstrap_figure_equals_scikit_learn_on_each_resample(decimals: int) -> None:
    from modelrollout.core.quality import resample_indices

    rng = np.random.default_rng(5)
    n = 300
    y = rng.integers(0, 2, n)
    s = np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1).round(decimals)
    p = np.where(rng.random(n) < 0.1, 1 - (s >= 0.5), s >= 0.5).astype(int)  # not a function of the score
    dist = compare(encode("binary-classification", y, p, s), resamples=60, seed=2).candidate.distributions
    fns: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
        "accuracy": lambda y, p, s: sk(skm.accuracy_score, y, p),
        "precision": lambda y, p, s: sk(skm.precision_score, y, p, zero_division=np.nan),
        "recall": lambda y, p, s: sk(skm.recall_score, y, p, zero_division=np.nan),
        "f1": lambda y, p, s: sk(skm.f1_score, y, p, zero_division=np.nan),
        "roc_auc": lambda y, p, s: sk(skm.roc_auc_score, y, s),
        "pr_auc": lambda y, p, s: sk(skm.average_precision_score, y, s),
        "log_loss": lambda y, p, s: sk(skm.log_loss, y, s, labels=[0, 1]),
    }
    rows = [row for idx in resample_indices(n, 60, 2) for row in idx]
    for name, fn in fns.items():
        expected = [fn(y[r], p[r], s[r]) for r in rows]
        assert all(close(ours, e) for ours, e in zip(dist[name], expected, strict=True)), name
