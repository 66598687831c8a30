"""Hold-out metrics, bootstrap intervals, paired comparisons and slices.

One vectorised implementation serves the point estimate, the bootstrap and the slices: a
kernel scores a matrix of drawn row indices (one row per resample) with gathers and
bincounts, so 1,000 resamples cost a few array passes instead of 1,000 scikit-learn calls.
The point estimate is the same kernel on one draw of every row, which is why the property
tests compare it with scikit-learn on random inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modelrollout.core.figures import QUALITY, SLICE_GAP_SUFFIX
from modelrollout.core.problem import DataError as DataError  # re-exported: callers catch it from here
from modelrollout.core.problem import FloatArray as FloatArray
from modelrollout.core.problem import Problem as Problem
from modelrollout.core.problem import encode as encode

IntArray = npt.NDArray[np.int64]
Kernel = Callable[[IntArray], dict[str, FloatArray]]
_EPS = float(np.finfo(np.float64).eps)
#: Resamples drawn per chunk; bounds memory to chunk * rows * 8 bytes.
CHUNK_CELLS = 4_000_000


# --- kernels: row indices (b, m) -> metric -> values (b,) ----------------------------
# A kernel scores b draws of rows at once: the point estimate is one draw of every row,
# a bootstrap chunk is b resamples, a slice is one draw of the slice's rows. Everything is
# gathers and bincounts over the drawn rows, never a Python loop over resamples.


def _div(num: FloatArray, den: FloatArray, zero: float = 0.0) -> FloatArray:
    """num / den where den > 0, else `zero` (scikit-learn's zero_division)."""
    out = np.full(np.broadcast(num, den).shape, zero, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _counts(codes: IntArray, idx: IntArray, k: int) -> FloatArray:
    """(b, k): how often each code 0..k-1 occurs among the rows of each draw."""
    b = idx.shape[0]
    flat = (codes[idx] + (np.arange(b, dtype=np.int64) * k)[:, None]).ravel()
    return np.bincount(flat, minlength=b * k).reshape(b, k).astype(np.float64)


def _sums(values: FloatArray, idx: IntArray) -> FloatArray:
    return np.asarray(values[idx].sum(axis=1), dtype=np.float64)


@dataclass
class _Ranking:
    """Rows grouped by score (ties together), best score first, for AUC and average precision."""

    codes: IntArray  # 2 * group + is_positive, per row
    groups: int

    @classmethod
    def of(cls, scores: FloatArray, positive: FloatArray) -> _Ranking:
        uniq, inverse = np.unique(-scores, return_inverse=True)  # ascending -score: best first
        return cls(inverse.astype(np.int64) * 2 + positive.astype(np.int64), int(uniq.size))

    def curves(self, idx: IntArray) -> tuple[FloatArray, FloatArray]:
        c = _counts(self.codes, idx, 2 * self.groups).reshape(idx.shape[0], self.groups, 2)
        gn, gp = c[:, :, 0], c[:, :, 1]
        p, n = gp.sum(axis=1), gn.sum(axis=1)
        tps = np.cumsum(gp, axis=1)
        auc = _div(np.sum(gn * (tps - 0.5 * gp), axis=1), p * n, np.nan)
        ap = _div(np.sum(gp * _div(tps, tps + np.cumsum(gn, axis=1)), axis=1), p, np.nan)
        return auc, ap


def _row_log_loss(p_true: FloatArray) -> FloatArray:
    return np.asarray(-np.log(np.clip(p_true, _EPS, 1 - _EPS)), dtype=np.float64)


def _binary_kernel(pb: Problem) -> Kernel:
    cell = (2 * pb.y + pb.pred).astype(np.int64)  # 0 tn, 1 fp, 2 fn, 3 tp
    ranking = losses = None
    if pb.scores is not None:
        ranking = _Ranking.of(pb.scores, pb.y)
        losses = _row_log_loss(np.where(pb.y == 1, pb.scores, 1 - pb.scores))

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        tn, fp, fn, tp = _counts(cell, idx, 4).T
        total = tp + fp + fn + tn
        out = {  # 0/0 is undefined (NaN), not 0: a gate on it is Inconclusive, never a pass or a fail
            "accuracy": _div(tp + tn, total, np.nan),
            "precision": _div(tp, tp + fp, np.nan),
            "recall": _div(tp, tp + fn, np.nan),
            "f1": _div(2 * tp, 2 * tp + fp + fn, np.nan),
        }
        if ranking is not None and losses is not None:
            out["roc_auc"], out["pr_auc"] = ranking.curves(idx)
            out["log_loss"] = _div(_sums(losses, idx), total, np.nan)
        return out

    return kernel


def _multiclass_kernel(pb: Problem) -> Kernel:
    k = len(pb.classes)
    y = pb.y.astype(np.int64)
    cell = y * k + pb.pred.astype(np.int64)
    rankings = losses = None
    if pb.scores is not None:
        rankings = [_Ranking.of(pb.scores[:, c], (y == c).astype(np.float64)) for c in range(k)]
        losses = _row_log_loss(pb.scores[np.arange(pb.n), y])

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        conf = _counts(cell, idx, k * k).reshape(idx.shape[0], k, k)
        tp = np.diagonal(conf, axis1=1, axis2=2)
        true_sum, pred_sum = conf.sum(axis=2), conf.sum(axis=1)
        total = true_sum.sum(axis=1)
        present = (true_sum + pred_sum) > 0  # scikit-learn averages over labels seen in y or pred
        per = {
            "precision": _div(tp, pred_sum),
            "recall": _div(tp, true_sum),
            "f1": _div(2 * tp, true_sum + pred_sum),
        }
        out = {"accuracy": _div(tp.sum(axis=1), total, np.nan)}
        for name, v in per.items():
            out[f"{name}_macro"] = _div((v * present).sum(axis=1), present.sum(axis=1).astype(np.float64))
            out[f"{name}_weighted"] = _div((v * true_sum).sum(axis=1), total)
        if rankings is not None and losses is not None:
            aucs = np.stack([r.curves(idx)[0] for r in rankings], axis=1)
            out["roc_auc"] = np.where(np.all(true_sum > 0, axis=1), np.mean(aucs, axis=1), np.nan)
            out["log_loss"] = _div(_sums(losses, idx), total, np.nan)
        return out

    return kernel


def _regression_kernel(pb: Problem) -> Kernel:
    err = pb.y - pb.pred
    sq, ab, ape = err**2, np.abs(err), np.abs(err) / np.maximum(np.abs(pb.y), _EPS)

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        n = np.full(idx.shape[0], float(idx.shape[1]))
        yd = pb.y[idx]
        ss_tot = np.sum((yd - yd.mean(axis=1, keepdims=True)) ** 2, axis=1)  # two-pass, as scikit-learn
        sse = _sums(sq, idx)
        r2 = np.where(ss_tot != 0, 1 - _div(sse, ss_tot), np.nan)  # constant labels: R² is undefined
        r2 = np.where(n >= 2, r2, np.nan)
        mse = _div(sse, n, np.nan)
        out = {"mse": mse, "rmse": np.sqrt(mse), "mae": _div(_sums(ab, idx), n, np.nan), "r2": r2,
               "mape": _div(_sums(ape, idx), n, np.nan)}
        if pb.n_features is not None:
            dof = n - pb.n_features - 1
            out["adjusted_r2"] = np.where(dof > 0, 1 - (1 - r2) * _div(n - 1, dof, np.nan), np.nan)
        return out

    return kernel


def kernel_for(pb: Problem) -> Kernel:
    if pb.task == "binary-classification":
        return _binary_kernel(pb)
    if pb.task == "multiclass-classification":
        return _multiclass_kernel(pb)
    return _regression_kernel(pb)


# --- point estimates, bootstrap, paired comparison, slices --------------------------


def metrics(pb: Problem) -> dict[str, float]:
    """Every quality figure for the task, equal to scikit-learn's on the same arrays where it is defined.

    An undefined figure is NaN (`undefined` says why): ROC-AUC with one class present, precision,
    recall and F1 at 0/0 (scikit-learn's `zero_division=np.nan`), R² of constant labels (its
    `force_finite=False`).
    """
    values = kernel_for(pb)(np.arange(pb.n, dtype=np.int64)[None, :])
    return {k: float(v[0]) for k, v in values.items()}


_WHY = {
    "precision": "no positive predictions", "recall": "no positive labels in the hold-out",
    "f1": "no positive labels and no positive predictions", "r2": "every label has the same value",
    "adjusted_r2": "every label has the same value, or no more rows than features + 1",
    "roc_auc": "the hold-out has one class only", "pr_auc": "the hold-out has no positive labels",
}


def undefined(values: Mapping[str, float]) -> dict[str, str]:
    """Why each undefined (NaN) figure has no value, in words for a report."""
    return {k: f"{k} undefined: {_WHY.get(k, 'no rows to compute it from')}" for k, v in values.items()
            if not np.isfinite(v)}


def confusion_matrix(pb: Problem) -> list[list[int]]:
    k = max(len(pb.classes), 2)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (pb.y.astype(np.int64), pb.pred.astype(np.int64)), 1)
    return [[int(v) for v in row] for row in cm]


def resample_indices(n: int, resamples: int, seed: int) -> Iterator[IntArray]:
    """Bootstrap row indices, chunk by chunk; the loop reference draws the very same ones."""
    rng = np.random.default_rng(seed)
    per = max(1, min(resamples, CHUNK_CELLS // max(n, 1)))
    done = 0
    while done < resamples:
        b = min(per, resamples - done)
        yield rng.integers(0, n, size=(b, n), dtype=np.int64)
        done += b


def bootstrap_distributions(
    kernels: Sequence[Kernel], n: int, resamples: int, seed: int
) -> list[dict[str, FloatArray]]:
    """Each kernel's figures over the same resamples (paired when given two kernels)."""
    parts: list[list[dict[str, FloatArray]]] = [[] for _ in kernels]
    for idx in resample_indices(n, resamples, seed):
        for i, k in enumerate(kernels):
            parts[i].append(k(idx))
    return [
        {m: np.concatenate([p[m] for p in chunks]) for m in (chunks[0] if chunks else {})}
        for chunks in parts
    ]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float
    resamples: int  # resamples for which the figure was defined

    def as_dict(self) -> dict[str, float | int]:
        return {"low": self.low, "high": self.high, "level": self.level, "resamples": self.resamples}


def percentile_interval(dist: FloatArray, level: float) -> Interval | None:
    ok = dist[np.isfinite(dist)]
    if ok.size == 0:
        return None
    lo, hi = np.percentile(ok, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return Interval(float(lo), float(hi), level, int(ok.size))


@dataclass(frozen=True)
class SliceReport:
    column: str
    groups: dict[str, dict[str, float]]  # group value -> metric -> value
    sizes: dict[str, int]
    gaps: dict[str, float]  # metric -> best minus worst group


@dataclass
class QualityReport:
    """Figures of one variant, with intervals; `delta` is candidate minus baseline."""

    metrics: dict[str, float]
    intervals: dict[str, Interval] = field(default_factory=dict)
    slices: list[SliceReport] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    samples: int = 0
    undefined: dict[str, str] = field(default_factory=dict)  # figure -> why it has no value
    distributions: dict[str, FloatArray] = field(default_factory=dict)  # bootstrap, for any gate's level


@dataclass
class Comparison:
    candidate: QualityReport
    baseline: QualityReport | None
    delta: dict[str, float]
    delta_intervals: dict[str, Interval]
    delta_distributions: dict[str, FloatArray] = field(default_factory=dict)  # paired, candidate - baseline


def slice_reports(pb: Problem, slice_columns: Mapping[str, Sequence[Any]]) -> list[SliceReport]:
    """Per-group figures for each slice column, and the gap between best and worst group."""
    out = []
    for column, values in slice_columns.items():
        v = np.asarray([str(x) for x in values])
        groups: dict[str, dict[str, float]] = {}
        sizes: dict[str, int] = {}
        kernel = kernel_for(pb)
        for g in sorted(set(v.tolist())):
            rows = np.flatnonzero(v == g)[None, :]
            groups[g] = {k: float(x[0]) for k, x in kernel(rows).items()}
            sizes[g] = int(rows.shape[1])
        gaps: dict[str, float] = {}
        for m in QUALITY[pb.task]:
            vals = [gm[m] for gm in groups.values() if m in gm and np.isfinite(gm[m])]
            if len(vals) >= 2:
                gaps[m] = float(max(vals) - min(vals))
        out.append(SliceReport(column, groups, sizes, gaps))
    return out


def compare(
    candidate: Problem,
    baseline: Problem | None = None,
    *,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    slices: Mapping[str, Sequence[Any]] | None = None,
) -> Comparison:
    """Score the candidate (and the baseline on the same rows), with paired bootstrap intervals."""
    if baseline is not None and baseline.n != candidate.n:
        raise DataError(f"baseline has {baseline.n} rows, candidate {candidate.n}: not the same hold-out")
    if baseline is not None and (candidate.scores is None) != (baseline.scores is None):
        has, lacks = ("candidate", "baseline") if baseline.scores is None else ("baseline", "candidate")
        raise DataError(f"the {has}'s predictions have scores (probabilities) and the {lacks}'s do not: give "
                        "both or neither, so roc_auc, pr_auc and log_loss compare like with like")
    kernels = [kernel_for(candidate)] + ([kernel_for(baseline)] if baseline is not None else [])
    dists = bootstrap_distributions(kernels, candidate.n, resamples, seed) if resamples > 0 else []

    def report(pb: Problem, dist: dict[str, FloatArray] | None) -> QualityReport:
        m = metrics(pb)
        ivs = {}
        for k, d in (dist or {}).items():
            iv = percentile_interval(d, level)
            if iv is not None:
                ivs[k] = iv
        cm = confusion_matrix(pb) if pb.task != "regression" else None
        sl = slice_reports(pb, slices) if slices else []
        for s in sl:
            for metric, gap in s.gaps.items():
                name = metric + SLICE_GAP_SUFFIX
                m[name] = max(m.get(name, gap), gap)
        return QualityReport(m, ivs, sl, cm, pb.n, undefined(m), dict(dist or {}))

    cand = report(candidate, dists[0] if dists else None)
    base = report(baseline, dists[1] if len(dists) > 1 else None) if baseline is not None else None
    delta: dict[str, float] = {}
    delta_iv: dict[str, Interval] = {}
    delta_dists: dict[str, FloatArray] = {}
    if base is not None:
        for k, v in cand.metrics.items():
            if k in base.metrics:
                delta[k] = v - base.metrics[k]
        if len(dists) > 1:
            for k in dists[0]:
                delta_dists[k] = dists[0][k] - dists[1][k]
                iv = percentile_interval(delta_dists[k], level)
                if iv is not None:
                    delta_iv[k] = iv
    return Comparison(cand, base, delta, delta_iv, delta_dists)
