"""Clarify's bias measures of a binary task, with bootstrap intervals, on both models on the same rows.

Facet d (disadvantaged) is the rows whose facet value is one of `spec.fairness.disadvantaged`, facet a
(advantaged) those in `advantaged` (every other row when it is not given); rows in neither take no part.
Every measure is a function of eight counts, (facet, label, prediction), so a bootstrap draw costs one
bincount: the same draws as every other figure, hence paired candidate - production changes.

The definitions are SageMaker Clarify's, as its open-source implementation `smclarify` computes them
(tests/unit/test_fairness.py checks them against it):
  pre-training, of the labels (the same for both models): CI = (n_a - n_d) / n; DPL = q_a - q_d with q the
  share of positive labels; KL, JS (natural log), LP (p = 2), TVD (half the L1) and KS (the largest
  difference) between the facets' label distributions;
  post-training, of each model's predictions: DPPL = q^_a - q^_d (predicted positive shares); DI =
  q^_d / q^_a; DCA = c_a - c_d, c = n(1) / n^(1) (labelled over predicted positives); DCR = r_d - r_a,
  r = n(0) / n^(0); RD = TPR_a - TPR_d; SD = TNR_d - TNR_a; DAR = precision_a - precision_d; DRR =
  NPV_d - NPV_a; AD = accuracy_a - accuracy_d; TE = FN_d / FP_d - FN_a / FP_a.
A ratio with a zero denominator is undefined (NaN, so a gate on it is Inconclusive), never 0 or infinite:
smclarify returns 0 for 0/0 and an infinity for x/0, which would pass or fail a gate on no evidence. Its
KL and JS drop a label value absent from either facet; ours keep it (KL is then infinite, not negative).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelrollout.core.kernels import IntArray, Kernel, counts, div
from modelrollout.core.problem import DataError, FloatArray, Problem


@dataclass(frozen=True)
class Facet:
    column: str
    disadvantaged: tuple[str, ...]
    advantaged: tuple[str, ...] | None = None  # None: every value not disadvantaged

    def codes(self, values: Sequence[Any]) -> IntArray:
        """1 for facet d, 0 for facet a, -1 for a row in neither."""
        v = np.asarray([str(x) for x in values])
        d = np.isin(v, list(self.disadvantaged))
        a = ~d if self.advantaged is None else np.isin(v, list(self.advantaged))
        out = np.where(d, 1, np.where(a, 0, -1)).astype(np.int64)
        for side, n, given in (("disadvantaged", int(d.sum()), self.disadvantaged),
                               ("advantaged", int((out == 0).sum()), self.advantaged)):
            if n == 0:
                which = f"one of {list(given)[:5]}" if given else "a value not disadvantaged"
                raise DataError(f"fairness.{side}: no hold-out row has {which} in column {self.column!r}")
        return out


def _cells(facet: IntArray, y: FloatArray, pred: FloatArray | None) -> IntArray:
    """facet * 4 + label * 2 + prediction, and 8 for a row in neither facet (counted, then dropped)."""
    p = np.zeros_like(y) if pred is None else pred
    return np.where(facet >= 0, facet * 4 + 2 * y + p, 8).astype(np.int64)


def _dist(c: FloatArray) -> FloatArray:
    """(..., 2) label counts -> label distribution, NaN for a facet with no rows."""
    return div(c, c.sum(axis=-1, keepdims=True), np.nan)


def _kl(p: FloatArray, q: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return np.asarray(terms.sum(axis=-1), dtype=np.float64)


def pre_training(c: FloatArray) -> dict[str, FloatArray]:
    """From (..., 2 facets, 2 labels) counts: the hold-out's label bias measures."""
    na, nd = c[..., 0, :].sum(axis=-1), c[..., 1, :].sum(axis=-1)
    pa, pd = _dist(c[..., 0, :]), _dist(c[..., 1, :])
    m = (pa + pd) / 2
    diff = np.abs(pa - pd)
    return {
        "bias_ci": div(na - nd, na + nd, np.nan),
        "bias_dpl": pa[..., 1] - pd[..., 1],
        "bias_kl": _kl(pa, pd),
        "bias_js": 0.5 * (_kl(pa, m) + _kl(pd, m)),
        "bias_lp": np.sqrt((diff ** 2).sum(axis=-1)),
        "bias_tvd": 0.5 * diff.sum(axis=-1),
        "bias_ks": diff.max(axis=-1),
    }


def post_training(c: FloatArray) -> dict[str, FloatArray]:
    """From (..., 2 facets, 2 labels, 2 predictions) counts: one model's prediction bias measures."""
    tn, fp, fn, tp = c[..., 0, 0], c[..., 0, 1], c[..., 1, 0], c[..., 1, 1]  # each (..., 2 facets)
    n = tn + fp + fn + tp
    pos_pred, neg_pred = tp + fp, tn + fn
    q = div(pos_pred, n, np.nan)
    acc_ratio = div(tp + fn, pos_pred, np.nan)  # labelled positive / predicted positive
    rej_ratio = div(tn + fp, neg_pred, np.nan)
    tpr, tnr = div(tp, tp + fn, np.nan), div(tn, tn + fp, np.nan)
    ppv, npv = div(tp, pos_pred, np.nan), div(tn, neg_pred, np.nan)
    acc = div(tp + tn, n, np.nan)
    te = div(fn, fp, np.nan)

    def a_minus_d(x: FloatArray) -> FloatArray:
        return np.asarray(x[..., 0] - x[..., 1], dtype=np.float64)

    return {
        "bias_dppl": a_minus_d(q),
        "bias_di": div(q[..., 1], q[..., 0], np.nan),
        "bias_dca": a_minus_d(acc_ratio),
        "bias_dcr": -a_minus_d(rej_ratio),
        "bias_rd": a_minus_d(tpr),
        "bias_sd": -a_minus_d(tnr),
        "bias_dar": a_minus_d(ppv),
        "bias_drr": -a_minus_d(npv),
        "bias_ad": a_minus_d(acc),
        "bias_te": -a_minus_d(te),
    }


def bias_kernel(pb: Problem, facet: IntArray) -> Kernel:
    """Every bias measure of one model's predictions per draw (binary tasks: y and pred are 0/1 codes)."""
    if pb.task != "binary-classification":
        raise DataError(f"fairness measures are defined for binary-classification, not {pb.task}")
    cells = _cells(facet, pb.y, pb.pred)

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        c = counts(cells, idx, 9)[:, :8].reshape(idx.shape[0], 2, 2, 2)
        return {**pre_training(c.sum(axis=-1)), **post_training(c)}

    return kernel


def facet_sizes(facet: IntArray) -> dict[str, int]:
    return {"advantaged": int((facet == 0).sum()), "disadvantaged": int((facet == 1).sum())}
