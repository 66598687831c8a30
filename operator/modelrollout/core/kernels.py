"""Vectorised metric kernels: a matrix of drawn row indices (one row per draw) -> metric -> values.

A kernel scores b draws of rows at once: the point estimate is one draw of every row, a
bootstrap chunk is b resamples, a slice is one draw of the slice's rows. Everything is gathers
and bincounts over the drawn rows, never a Python loop over resamples. The formulas from counts
to figures take arrays of any leading shape, so the per-group kernels of slices.py share them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelrollout.core.problem import FloatArray, Problem

IntArray = npt.NDArray[np.int64]
Kernel = Callable[[IntArray], dict[str, FloatArray]]
EPS = float(np.finfo(np.float64).eps)


def div(num: FloatArray, den: FloatArray, zero: float = 0.0) -> FloatArray:
    """num / den where den > 0, else `zero` (scikit-learn's zero_division)."""
    out = np.full(np.broadcast(num, den).shape, zero, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def counts(codes: IntArray, idx: IntArray, k: int) -> FloatArray:
    """(b, k): how often each code 0..k-1 occurs among the rows of each draw."""
    b = idx.shape[0]
    flat = (codes[idx] + (np.arange(b, dtype=np.int64) * k)[:, None]).ravel()
    return np.bincount(flat, minlength=b * k).reshape(b, k).astype(np.float64)


def _sums(values: FloatArray, idx: IntArray) -> FloatArray:
    return np.asarray(values[idx].sum(axis=1), dtype=np.float64)


def curves(gn: FloatArray, gp: FloatArray) -> tuple[FloatArray, FloatArray]:
    """ROC-AUC and average precision from negatives and positives per score group, best score last axis first."""
    p, n = gp.sum(axis=-1), gn.sum(axis=-1)
    tps = np.cumsum(gp, axis=-1)
    auc = div(np.sum(gn * (tps - 0.5 * gp), axis=-1), p * n, np.nan)
    ap = div(np.sum(gp * div(tps, tps + np.cumsum(gn, axis=-1)), axis=-1), p, np.nan)
    return auc, ap


@dataclass
class Ranking:
    """Rows grouped by score (ties together), best score first, for AUC and average precision."""

    codes: IntArray  # 2 * group + is_positive, per row
    groups: int

    @classmethod
    def of(cls, scores: FloatArray, positive: FloatArray) -> Ranking:
        uniq, inverse = np.unique(-scores, return_inverse=True)  # ascending -score: best first
        return cls(inverse.astype(np.int64) * 2 + positive.astype(np.int64), int(uniq.size))

    def curves(self, idx: IntArray) -> tuple[FloatArray, FloatArray]:
        c = counts(self.codes, idx, 2 * self.groups).reshape(idx.shape[0], self.groups, 2)
        return curves(c[:, :, 0], c[:, :, 1])


def row_log_loss(p_true: FloatArray) -> FloatArray:
    return np.asarray(-np.log(np.clip(p_true, EPS, 1 - EPS)), dtype=np.float64)


def binary_cells(pb: Problem) -> IntArray:
    return (2 * pb.y + pb.pred).astype(np.int64)  # 0 tn, 1 fp, 2 fn, 3 tp


def binary_figures(c: FloatArray) -> dict[str, FloatArray]:
    """Threshold figures from confusion counts (..., 4) ordered tn, fp, fn, tp."""
    tn, fp, fn, tp = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    return {  # 0/0 is undefined (NaN), not 0: a gate on it is Inconclusive, never a pass or a fail
        "accuracy": div(tp + tn, tp + fp + fn + tn, np.nan),
        "precision": div(tp, tp + fp, np.nan),
        "recall": div(tp, tp + fn, np.nan),
        "f1": div(2 * tp, 2 * tp + fp + fn, np.nan),
    }


def binary_losses(pb: Problem) -> FloatArray | None:
    return None if pb.scores is None else row_log_loss(np.where(pb.y == 1, pb.scores, 1 - pb.scores))


def _binary_kernel(pb: Problem) -> Kernel:
    cell = binary_cells(pb)
    ranking = Ranking.of(pb.scores, pb.y) if pb.scores is not None else None
    losses = binary_losses(pb)

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        c = counts(cell, idx, 4)
        out = binary_figures(c)
        if ranking is not None and losses is not None:
            out["roc_auc"], out["pr_auc"] = ranking.curves(idx)
            out["log_loss"] = div(_sums(losses, idx), c.sum(axis=-1), np.nan)
        return out

    return kernel


def multiclass_cells(pb: Problem) -> IntArray:
    return (pb.y.astype(np.int64) * len(pb.classes) + pb.pred.astype(np.int64)).astype(np.int64)


def multiclass_figures(conf: FloatArray) -> dict[str, FloatArray]:
    """Accuracy and macro/weighted precision, recall and F1 from confusion matrices (..., k, k)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    true_sum, pred_sum = conf.sum(axis=-1), conf.sum(axis=-2)
    total = true_sum.sum(axis=-1)
    present = (true_sum + pred_sum) > 0  # scikit-learn averages over labels seen in y or pred
    per = {"precision": div(tp, pred_sum), "recall": div(tp, true_sum), "f1": div(2 * tp, true_sum + pred_sum)}
    out = {"accuracy": div(tp.sum(axis=-1), total, np.nan)}
    for name, v in per.items():
        out[f"{name}_macro"] = div((v * present).sum(axis=-1), present.sum(axis=-1).astype(np.float64))
        out[f"{name}_weighted"] = div((v * true_sum).sum(axis=-1), total)
    return out


def multiclass_auc(aucs: FloatArray, true_sum: FloatArray) -> FloatArray:
    """Macro one-vs-rest AUC from per-class AUCs (..., k): undefined unless every class is present."""
    return np.where(np.all(true_sum > 0, axis=-1), np.mean(aucs, axis=-1), np.nan)


def multiclass_losses(pb: Problem) -> FloatArray | None:
    return None if pb.scores is None else row_log_loss(pb.scores[np.arange(pb.n), pb.y.astype(np.int64)])


def _multiclass_kernel(pb: Problem) -> Kernel:
    k = len(pb.classes)
    y = pb.y.astype(np.int64)
    cell = multiclass_cells(pb)
    rankings = None
    if pb.scores is not None:
        rankings = [Ranking.of(pb.scores[:, c], (y == c).astype(np.float64)) for c in range(k)]
    losses = multiclass_losses(pb)

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        conf = counts(cell, idx, k * k).reshape(idx.shape[0], k, k)
        out = multiclass_figures(conf)
        if rankings is not None and losses is not None:
            true_sum = conf.sum(axis=-1)
            out["roc_auc"] = multiclass_auc(np.stack([r.curves(idx)[0] for r in rankings], axis=1), true_sum)
            out["log_loss"] = div(_sums(losses, idx), true_sum.sum(axis=-1), np.nan)
        return out

    return kernel


def regression_rows(pb: Problem) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-row squared, absolute and absolute percentage errors."""
    err = pb.y - pb.pred
    return err**2, np.abs(err), np.abs(err) / np.maximum(np.abs(pb.y), EPS)


def regression_figures(
    n: FloatArray, sse: FloatArray, sae: FloatArray, sape: FloatArray, ss_tot: FloatArray, n_features: int | None
) -> dict[str, FloatArray]:
    """Regression figures from row counts and sums (any shape)."""
    r2 = np.where(ss_tot != 0, 1 - div(sse, ss_tot), np.nan)  # constant labels: R² is undefined
    r2 = np.where(n >= 2, r2, np.nan)
    mse = div(sse, n, np.nan)
    out = {"mse": mse, "rmse": np.sqrt(mse), "mae": div(sae, n, np.nan), "r2": r2, "mape": div(sape, n, np.nan)}
    if n_features is not None:
        dof = n - n_features - 1
        out["adjusted_r2"] = np.where(dof > 0, 1 - (1 - r2) * div(n - 1, dof, np.nan), np.nan)
    return out


def _regression_kernel(pb: Problem) -> Kernel:
    sq, ab, ape = regression_rows(pb)

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        n = np.full(idx.shape[0], float(idx.shape[1]))
        yd = pb.y[idx]
        ss_tot = np.sum((yd - yd.mean(axis=1, keepdims=True)) ** 2, axis=1)  # two-pass, as scikit-learn
        return regression_figures(n, _sums(sq, idx), _sums(ab, idx), _sums(ape, idx), ss_tot, pb.n_features)

    return kernel


def kernel_for(pb: Problem) -> Kernel:
    if pb.task == "binary-classification":
        return _binary_kernel(pb)
    if pb.task == "multiclass-classification":
        return _multiclass_kernel(pb)
    return _regression_kernel(pb)
