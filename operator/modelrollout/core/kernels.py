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
#: Cells of a kernel's per-draw count table scored at once: the table's passes (cumulative sums, curves)
#: then run in cache; 1,000 draws of a 1,000-row hold-out with distinct scores score ~2x faster in blocks.
TABLE_CELLS = 1 << 18


def div(num: FloatArray, den: FloatArray, zero: float = 0.0) -> FloatArray:
    """num / den where den > 0, else `zero` (scikit-learn's zero_division)."""
    out = np.full(np.broadcast(num, den).shape, zero, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def counts(codes: IntArray, idx: IntArray, k: int) -> FloatArray:
    """(b, k): how often each code 0..k-1 occurs among the rows of each draw."""
    b = idx.shape[0]
    flat = codes[idx]
    flat += (np.arange(b, dtype=np.int64) * k)[:, None]  # in place: a fresh array per pass costs page faults
    return np.bincount(flat.ravel(), minlength=b * k).reshape(b, k).astype(np.float64)


def blocked(kernel: Kernel, width: int) -> Kernel:
    """The kernel over blocks of draws whose (draws x width) tables fit in cache: the same value per draw."""
    rows = max(1, TABLE_CELLS // max(width, 1))

    def run(idx: IntArray) -> dict[str, FloatArray]:
        if idx.shape[0] <= rows:
            return kernel(idx)
        parts = [kernel(idx[i:i + rows]) for i in range(0, idx.shape[0], rows)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return run


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

    codes: IntArray  # is_positive * groups + group, per row: counts come out as contiguous rows per label
    groups: int
    losses: FloatArray  # (2, groups): each group's log loss for a negative and for a positive row

    @classmethod
    def of(cls, scores: FloatArray, positive: FloatArray) -> Ranking:
        uniq, inverse = np.unique(-scores, return_inverse=True)  # ascending -score: best first
        losses = np.stack([row_log_loss(1 + uniq), row_log_loss(-uniq)])
        return cls(positive.astype(np.int64) * uniq.size + inverse.astype(np.int64), int(uniq.size), losses)

    def counts(self, idx: IntArray) -> FloatArray:
        """(b, 2, groups): negatives, then positives drawn per score group."""
        return counts(self.codes, idx, 2 * self.groups).reshape(idx.shape[0], 2, self.groups)

    def log_loss_sums(self, gn: FloatArray | None, gp: FloatArray) -> FloatArray:
        """Summed log loss of the drawn rows, from the counts: a row's loss depends on its score and label
        only, so this needs no gather of per-row losses. Without negatives (None): the positives' only."""
        # einsum, not matmul: a BLAS call per draw matrix is slower here than one pass, and threads contend
        pos = np.asarray(np.einsum("br,r->b", gp, self.losses[1]), dtype=np.float64)
        return pos if gn is None else np.asarray(np.einsum("br,r->b", gn, self.losses[0]), dtype=np.float64) + pos


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


def _binary_kernel(pb: Problem) -> Kernel:
    cell = binary_cells(pb)
    if pb.scores is None:
        return lambda idx: binary_figures(counts(cell, idx, 4))
    ranking = Ranking.of(pb.scores, pb.y)
    r = ranking.groups
    # few distinct scores (rounded, as usual): one bincount over (prediction, label, score group) gives
    # every figure; with many, that table outgrows the draw and two small bincounts are cheaper
    joint = pb.pred.astype(np.int64) * (2 * r) + ranking.codes if 4 * r <= pb.n else None

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        b = idx.shape[0]
        if joint is not None:
            c = counts(joint, idx, 4 * r).reshape(b, 2, 2, r)
            gn, gp = c[:, 0, 0] + c[:, 1, 0], c[:, 0, 1] + c[:, 1, 1]
            conf = c.sum(axis=-1).transpose(0, 2, 1).reshape(b, 4)  # (label, prediction): tn fp fn tp
        else:
            conf, by_label = counts(cell, idx, 4), ranking.counts(idx)
            gn, gp = by_label[:, 0], by_label[:, 1]
        out = binary_figures(conf)
        out["roc_auc"], out["pr_auc"] = curves(gn, gp)
        out["log_loss"] = div(ranking.log_loss_sums(gn, gp), conf.sum(axis=-1), np.nan)
        return out

    return blocked(kernel, 4 * r if joint is not None else 2 * r)


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


def _multiclass_kernel(pb: Problem) -> Kernel:
    k = len(pb.classes)
    y = pb.y.astype(np.int64)
    cell = multiclass_cells(pb)
    rankings = None
    if pb.scores is not None:
        rankings = [Ranking.of(pb.scores[:, c], (y == c).astype(np.float64)) for c in range(k)]

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        conf = counts(cell, idx, k * k).reshape(idx.shape[0], k, k)
        out = multiclass_figures(conf)
        if rankings is not None:
            true_sum = conf.sum(axis=-1)
            per_class = [r.counts(idx) for r in rankings]
            out["roc_auc"] = multiclass_auc(np.stack([curves(c[:, 0], c[:, 1])[0] for c in per_class], axis=1),
                                            true_sum)
            # a row's loss is that of its own class's score: the positives of that class's ranking
            loss = np.sum([r.log_loss_sums(None, c[:, 1]) for r, c in zip(rankings, per_class, strict=True)], axis=0)
            out["log_loss"] = div(loss, true_sum.sum(axis=-1), np.nan)
        return out

    return blocked(kernel, max(2 * r.groups for r in rankings)) if rankings else kernel


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
