"""Per-group figures of each slice column, and the bootstrap distribution of the gap between groups.

A gate on `<metric>_slice_gap` with `confidence` needs the gap's spread, not only its value. The
gap is recomputed in every resample of the whole hold-out (the same drawn rows as every other
figure, so the candidate - baseline change is paired): each row's group travels with it, group
figures come from bincounts over (resample, group, code), the formulas are kernels.py's, and the gap
is the best minus the worst group, the largest over the slice columns as for the point value; the
worst group's figure (`<metric>_worst_group`) is the worst over every slice column. Costs about one more
pass over the draws per slice column.

A group with fewer rows than `quality.minGroupRows` in the hold-out is reported with its figures but
takes no part in a gap or a worst group: its figure is mostly noise, and a gate on it would reject
good models at random.

A group that draws no rows in a resample has no figures there, and a figure undefined in a group
(0/0) leaves that group out, as for the point value. A gap needs two defined groups: with fewer
it is NaN in that resample, and the percentile interval is taken over the resamples where it is
defined (`Interval.resamples` says how many), as for every other figure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelrollout.core.figures import QUALITY, SLICE_GAP_SUFFIX, WORST_GROUP_SUFFIX, higher_is_better
from modelrollout.core.kernels import (
    IntArray,
    Kernel,
    binary_cells,
    binary_figures,
    counts,
    div,
    kernel_for,
    multiclass_auc,
    multiclass_cells,
    multiclass_figures,
    regression_figures,
    regression_rows,
    row_log_loss,
)
from modelrollout.core.problem import DataError, FloatArray, Problem

GroupKernel = Callable[[IntArray], dict[str, FloatArray]]  # row indices (b, m) -> metric -> (b, groups)


@dataclass(frozen=True)
class SliceReport:
    column: str
    groups: dict[str, dict[str, float]]  # group value -> metric -> value
    sizes: dict[str, int]
    gaps: dict[str, float]  # metric -> best minus worst group
    worst: dict[str, str]  # metric -> the worst gated group
    min_rows: int = 1  # groups with fewer rows are reported, not gated

    def gated(self, group: str) -> bool:
        return self.sizes.get(group, 0) >= self.min_rows


def _labels(values: Sequence[Any]) -> npt.NDArray[np.str_]:
    return np.asarray([str(x) for x in values])


def slice_reports(pb: Problem, slice_columns: Mapping[str, Sequence[Any]], min_rows: int = 1) -> list[SliceReport]:
    """Per-group figures for each slice column, the gap between best and worst group, and the worst."""
    out = []
    for column, values in slice_columns.items():
        v = _labels(values)
        groups: dict[str, dict[str, float]] = {}
        sizes: dict[str, int] = {}
        kernel = kernel_for(pb)
        for g in sorted(set(v.tolist())):
            rows = np.flatnonzero(v == g)[None, :]
            groups[g] = {k: float(x[0]) for k, x in kernel(rows).items()}
            sizes[g] = int(rows.shape[1])
        gaps: dict[str, float] = {}
        worst: dict[str, str] = {}
        for m in QUALITY[pb.task]:
            vals = {g: gm[m] for g, gm in groups.items() if sizes[g] >= min_rows and np.isfinite(gm.get(m, np.nan))}
            if len(vals) >= 2:
                gaps[m] = float(max(vals.values()) - min(vals.values()))
            if vals:
                pick = min if higher_is_better(m) else max
                worst[m] = pick(vals, key=lambda g: vals[g])
        out.append(SliceReport(column, groups, sizes, gaps, worst, min_rows))
    return out


def group_figures(reports: Sequence[SliceReport]) -> dict[str, float]:
    """`<metric>_slice_gap` (the largest over the columns) and `<metric>_worst_group` (the worst)."""
    out: dict[str, float] = {}
    for s in reports:
        for m, g in s.gaps.items():
            out[m + SLICE_GAP_SUFFIX] = max(out.get(m + SLICE_GAP_SUFFIX, g), g)
        for m, group in s.worst.items():
            v, name = s.groups[group][m], m + WORST_GROUP_SUFFIX
            out[name] = v if name not in out else (min if higher_is_better(m) else max)(out[name], v)
    return out


# --- per-group kernels: row indices (b, m) -> metric -> values (b, groups) ----------------


def _group_counts(codes: IntArray, idx: IntArray, k: int, groups: int) -> FloatArray:
    """(b, groups, k): how often each code occurs among the drawn rows of each group (codes: group * k + code)."""
    return counts(codes, idx, groups * k).reshape(idx.shape[0], groups, k)


def _group_sums(values: FloatArray, gi: IntArray, groups: int) -> FloatArray:
    """(b, groups): the sum of per-draw values (b, m) over each group's drawn rows."""
    b = gi.shape[0]
    flat = (gi + (np.arange(b, dtype=np.int64) * groups)[:, None]).ravel()
    return np.asarray(np.bincount(flat, weights=values.ravel(), minlength=b * groups).reshape(b, groups),
                      dtype=np.float64)


@dataclass
class _GroupRanking:
    """Rows ranked by score within their group: each group's score ranks form one segment of bins."""

    codes: IntArray  # 2 * (segment start + rank of the score within the group, best first) + is_positive
    starts: IntArray  # first bin of each group's segment (every group has at least one row)
    seg: IntArray  # the group of each bin
    losses: FloatArray  # (bins, 2): log loss of a negative and of a positive row in each bin

    @classmethod
    def of(cls, scores: FloatArray, positive: FloatArray, group: IntArray, groups: int) -> _GroupRanking:
        local = np.zeros(group.shape[0], dtype=np.int64)
        neg_scores = []
        for g in range(groups):
            rows = group == g
            uniq, inverse = np.unique(-scores[rows], return_inverse=True)
            local[rows] = inverse
            neg_scores.append(uniq)
        sizes = np.array([u.size for u in neg_scores], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        codes = (starts[group] + local) * 2 + positive.astype(np.int64)
        uniq = np.concatenate(neg_scores)
        losses = np.stack([row_log_loss(1 + uniq), row_log_loss(-uniq)], axis=1)
        return cls(codes, starts, np.repeat(np.arange(groups), sizes), losses)

    def counts(self, idx: IntArray) -> FloatArray:
        """(b, bins, 2): negatives and positives drawn per (group, score) bin."""
        return counts(self.codes, idx, 2 * self.seg.size).reshape(idx.shape[0], self.seg.size, 2)

    def per_group(self, x: FloatArray) -> FloatArray:
        """(b, groups): x (b, bins) summed over each group's bins."""
        return np.asarray(np.add.reduceat(x, self.starts, axis=1), dtype=np.float64)

    def curves(self, c: FloatArray) -> tuple[FloatArray, FloatArray]:
        """ROC-AUC and average precision per group, as kernels.curves with the running counts per segment."""
        gn, gp = c[:, :, 0], c[:, :, 1]
        tps, fps = np.cumsum(gp, axis=1), np.cumsum(gn, axis=1)
        before = np.maximum(self.starts - 1, 0)
        first = (self.starts == 0)[None, :]
        tps -= np.where(first, 0.0, tps[:, before])[:, self.seg]  # restart at each group's first bin
        fps -= np.where(first, 0.0, fps[:, before])[:, self.seg]
        p, n = self.per_group(gp), self.per_group(gn)
        auc = div(self.per_group(gn * (tps - 0.5 * gp)), p * n, np.nan)
        ap = div(self.per_group(gp * div(tps, tps + fps)), p, np.nan)
        return auc, ap

    def log_loss_sums(self, c: FloatArray, side: int | None = None) -> FloatArray:
        """(b, groups) summed log loss, from the counts as Ranking.log_loss_sums; `side` 1: positives only."""
        loss = (c * self.losses).sum(axis=-1) if side is None else c[..., side] * self.losses[:, side]
        return self.per_group(loss)


def _binary(pb: Problem, group: IntArray, groups: int) -> GroupKernel:
    cell = group * 4 + binary_cells(pb)
    ranking = _GroupRanking.of(pb.scores, pb.y, group, groups) if pb.scores is not None else None
    bins = 0 if ranking is None else ranking.seg.size
    # as kernels._binary_kernel: one bincount over (group and score, label, prediction) while that table is small
    joint = ranking.codes * 2 + pb.pred.astype(np.int64) if ranking is not None and 4 * bins <= pb.n else None

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        if ranking is not None and joint is not None:
            c4 = counts(joint, idx, 4 * bins).reshape(idx.shape[0], bins, 2, 2)
            by_score = c4.sum(axis=3)
            c = np.stack([ranking.per_group(c4[:, :, i // 2, i % 2]) for i in range(4)], axis=-1)
        else:
            c = _group_counts(cell, idx, 4, groups)
            by_score = ranking.counts(idx) if ranking is not None else None
        out = binary_figures(c)
        if ranking is not None and by_score is not None:
            out["roc_auc"], out["pr_auc"] = ranking.curves(by_score)
            out["log_loss"] = div(ranking.log_loss_sums(by_score), c.sum(axis=-1), np.nan)
        return _drawn(out, c.sum(axis=-1))

    return kernel


def _multiclass(pb: Problem, group: IntArray, groups: int) -> GroupKernel:
    k = len(pb.classes)
    cell = group * (k * k) + multiclass_cells(pb)
    rankings = None
    if pb.scores is not None:
        y = pb.y.astype(np.int64)
        rankings = [_GroupRanking.of(pb.scores[:, c], (y == c).astype(np.float64), group, groups) for c in range(k)]

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        conf = _group_counts(cell, idx, k * k, groups).reshape(idx.shape[0], groups, k, k)
        out = multiclass_figures(conf)
        true_sum = conf.sum(axis=-1)
        if rankings is not None:
            per_class = [r.counts(idx) for r in rankings]
            aucs = np.stack([r.curves(c)[0] for r, c in zip(rankings, per_class, strict=True)], axis=-1)
            out["roc_auc"] = multiclass_auc(aucs, true_sum)
            loss = np.sum([r.log_loss_sums(c, side=1) for r, c in zip(rankings, per_class, strict=True)], axis=0)
            out["log_loss"] = div(loss, true_sum.sum(axis=-1), np.nan)
        return _drawn(out, true_sum.sum(axis=-1))

    return kernel


def _regression(pb: Problem, group: IntArray, groups: int) -> GroupKernel:
    sq, ab, ape = regression_rows(pb)

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        gi = group[idx]
        yd = pb.y[idx]
        n = _group_counts(group, idx, 1, groups)[:, :, 0]
        mean = div(_group_sums(yd, gi, groups), n, np.nan)
        ss_tot = _group_sums((yd - np.take_along_axis(mean, gi, axis=1)) ** 2, gi, groups)  # two-pass
        out = regression_figures(n, _group_sums(sq[idx], gi, groups), _group_sums(ab[idx], gi, groups),
                                 _group_sums(ape[idx], gi, groups), ss_tot, pb.n_features)
        return _drawn(out, n)

    return kernel


def _drawn(figures: dict[str, FloatArray], size: FloatArray) -> dict[str, FloatArray]:
    """A group with no drawn rows has no figures (not the 0 some averages would give)."""
    return {k: np.where(size > 0, v, np.nan) for k, v in figures.items()}


def group_kernel(pb: Problem, group: IntArray, groups: int) -> GroupKernel:
    """Every figure of each group (codes 0..groups-1, one per row) in each draw."""
    if pb.task == "binary-classification":
        return _binary(pb, group, groups)
    if pb.task == "multiclass-classification":
        return _multiclass(pb, group, groups)
    return _regression(pb, group, groups)


def gap(values: FloatArray) -> FloatArray:
    """Best minus worst of the defined groups (last axis); NaN with fewer than two defined."""
    ok = np.isfinite(values)
    hi = np.where(ok, values, -np.inf).max(axis=-1)
    lo = np.where(ok, values, np.inf).min(axis=-1)
    return np.where(ok.sum(axis=-1) >= 2, hi - lo, np.nan)


def worst(values: FloatArray, metric: str) -> FloatArray:
    """The worst of the defined groups (last axis); NaN with none defined."""
    ok = np.isfinite(values)
    if higher_is_better(metric):
        w = np.where(ok, values, np.inf).min(axis=-1)
    else:
        w = np.where(ok, values, -np.inf).max(axis=-1)
    return np.where(ok.any(axis=-1), w, np.nan)


def gap_kernel(pb: Problem, slice_columns: Mapping[str, Sequence[Any]], min_rows: int = 1) -> Kernel:
    """`<metric>_slice_gap` (the largest over the slice columns) and `<metric>_worst_group` per draw."""
    columns = []
    for column, values in slice_columns.items():
        if len(values) != pb.n:
            raise DataError(f"slice column {column!r} has {len(values)} values for {pb.n} hold-out rows")
        _, group = np.unique(_labels(values), return_inverse=True)
        group = group.astype(np.int64).ravel()
        groups = int(group.max()) + 1 if group.size else 0
        keep = np.bincount(group, minlength=groups) >= min_rows  # groups too small are not gated
        if keep.any():
            columns.append((group_kernel(pb, group, groups), keep))
    names = QUALITY[pb.task]

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        out: dict[str, FloatArray] = {}
        for per_group, keep in columns:
            for metric, values in per_group(idx).items():
                if metric in names:
                    v = values[:, keep]
                    g, w = gap(v), worst(v, metric)
                    name, wname = metric + SLICE_GAP_SUFFIX, metric + WORST_GROUP_SUFFIX
                    out[name] = np.fmax(out[name], g) if name in out else g  # fmax: a NaN column does not hide
                    pick = np.fmin if higher_is_better(metric) else np.fmax
                    out[wname] = pick(out[wname], w) if wname in out else w
        return out

    return kernel
