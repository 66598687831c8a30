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

from modelrollout.core.figures import QUALITY, SLICE_GAP_SUFFIX, Task

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Kernel = Callable[[IntArray], dict[str, FloatArray]]
_EPS = float(np.finfo(np.float64).eps)
#: Resamples drawn per chunk; bounds memory to chunk * rows * 8 bytes.
CHUNK_CELLS = 4_000_000


class DataError(ValueError):
    """Hold-out data or predictions that cannot be scored; the message says what and where."""


@dataclass(frozen=True)
class Problem:
    """A scored problem: labels encoded once, so every kernel works on integer codes."""

    task: Task
    y: FloatArray  # class codes (classification) or targets (regression)
    pred: FloatArray  # predicted codes or values
    scores: FloatArray | None  # binary: P(positive), shape (n,); multiclass: (n, k) in class order
    classes: tuple[Any, ...] = ()
    n_features: int | None = None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


def encode(
    task: Task,
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    scores: np.ndarray | None = None,
    *,
    classes: Sequence[Any] | None = None,
    positive_label: Any = None,
    n_features: int | None = None,
    who: str = "predictions",
) -> Problem:
    """Check shapes and labels and encode classes as 0..k-1 in sorted order.

    For binary tasks `positive_label` (default 1, or True) is code 1. For multiclass tasks
    `classes` are the model's classes, in the order of the probability columns.
    """
    yt = np.asarray(y_true)
    yp = np.asarray(y_pred)
    n = yt.shape[0]
    if yp.shape[0] != n:
        raise DataError(f"{who}: {yp.shape[0]} predictions for {n} hold-out rows")
    if n == 0:
        raise DataError("the hold-out set has no rows")
    if task == "regression":
        yt_f, yp_f = _numeric(yt, "labels"), _numeric(yp, who)
        if not np.all(np.isfinite(yp_f)):
            raise DataError(f"{who}: {int(np.sum(~np.isfinite(yp_f)))} predictions are not finite numbers")
        return Problem(task, yt_f, yp_f, None, (), n_features)
    if task == "binary-classification":
        pos = positive_label if positive_label is not None else _default_positive(yt)
        if classes is not None:
            known = {str(_key(c)) for c in classes}
            foreign = sorted({str(_key(v)) for v in _as_list(np.unique(yt))} - known)
            if foreign:
                raise DataError(f"labels {foreign[:5]} are not among the model's classes {list(classes)[:10]}")
        labels = set(_as_list(np.unique(yt))) | set(_as_list(np.unique(yp)))
        if len(labels) > 2:
            raise DataError(f"{who}: binary task but found labels {sorted(map(str, labels))}")
        if pos not in labels and str(pos) not in {str(v) for v in labels} and len(labels) == 2:
            raise DataError(f"positive label {pos!r} is not among the labels {sorted(map(str, labels))}")
        y = (_same(yt, pos)).astype(np.float64)
        p = (_same(yp, pos)).astype(np.float64)
        s = None
        if scores is not None:
            s = np.asarray(scores, dtype=np.float64)
            if s.ndim == 2 and s.shape[1] == 2:  # predict_proba columns, in the model's class order
                keys = [str(_key(c)) for c in classes] if classes is not None else []
                s = s[:, keys.index(str(_key(pos))) if str(_key(pos)) in keys else 1]
            if s.ndim != 1 or s.shape[0] != n:
                raise DataError(f"{who}: scores of shape {np.shape(scores)} for {n} rows")
            _check_probabilities(s, who)
        negative = next((v for v in labels if not _same(np.asarray([v]), pos)[0]), None)
        return Problem(task, y, p, s, (negative, pos), n_features)
    # multiclass
    found = sorted(set(_as_list(np.unique(yt))) | set(_as_list(np.unique(yp))), key=_sort_key)
    cls = list(classes) if classes is not None else found
    index = {str(_key(c)): i for i, c in enumerate(cls)}
    missing = [c for c in found if str(_key(c)) not in index]
    if missing:
        raise DataError(f"labels {missing[:5]} are not among the model's classes {cls[:10]}")
    y = np.array([index[str(_key(v))] for v in yt], dtype=np.float64)
    p = np.array([index[str(_key(v))] for v in yp], dtype=np.float64)
    s = None
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2 or s.shape != (n, len(cls)):
            raise DataError(f"{who}: probabilities of shape {s.shape}, expected ({n}, {len(cls)})")
        _check_probabilities(s, who)
    return Problem(task, y, p, s, tuple(cls), n_features)


def _as_list(a: np.ndarray) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in a]


def _key(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) else (1, str(v))


def _same(a: np.ndarray, label: Any) -> npt.NDArray[np.bool_]:
    if a.dtype.kind in "iufb" and isinstance(label, int | float | bool | np.number):
        return np.asarray(a == label)
    return np.asarray([str(_key(v)) == str(_key(label)) for v in a])


def _default_positive(y: np.ndarray) -> Any:
    if y.dtype.kind == "b":
        return True
    return 1


def _numeric(a: np.ndarray, who: str) -> FloatArray:
    try:
        return a.astype(np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{who}: regression needs numbers, found {a[:3].tolist()}") from None


def _check_probabilities(s: FloatArray, who: str) -> None:
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise DataError(f"{who}: probabilities must lie in [0, 1] (found {np.nanmin(s):g}..{np.nanmax(s):g})")


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
        out = {
            "accuracy": _div(tp + tn, total, np.nan),
            "precision": _div(tp, tp + fp),
            "recall": _div(tp, tp + fn),
            "f1": _div(2 * tp, 2 * tp + fp + fn),
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
        r2 = np.where(ss_tot != 0, 1 - _div(sse, ss_tot), np.where(sse == 0, 1.0, 0.0))
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
    """Every quality figure for the task, equal to scikit-learn's on the same arrays.

    A figure scikit-learn leaves undefined (ROC-AUC with one class present) is NaN.
    """
    values = kernel_for(pb)(np.arange(pb.n, dtype=np.int64)[None, :])
    return {k: float(v[0]) for k, v in values.items()}


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


@dataclass
class Comparison:
    candidate: QualityReport
    baseline: QualityReport | None
    delta: dict[str, float]
    delta_intervals: dict[str, Interval]


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
        return QualityReport(m, ivs, sl, cm, pb.n)

    cand = report(candidate, dists[0] if dists else None)
    base = report(baseline, dists[1] if len(dists) > 1 else None) if baseline is not None else None
    delta: dict[str, float] = {}
    delta_iv: dict[str, Interval] = {}
    if base is not None:
        for k, v in cand.metrics.items():
            if k in base.metrics:
                delta[k] = v - base.metrics[k]
        if len(dists) > 1:
            for k in dists[0]:
                iv = percentile_interval(dists[0][k] - dists[1][k], level)
                if iv is not None:
                    delta_iv[k] = iv
    return Comparison(cand, base, delta, delta_iv)
