"""Hold-out metrics, bootstrap intervals, paired comparisons and slices.

One vectorised implementation (kernels.py) serves the point estimate, the bootstrap and the
slices: a kernel scores a matrix of drawn row indices (one row per resample) with gathers and
bincounts, so 1,000 resamples cost a few array passes instead of 1,000 scikit-learn calls.
The point estimate is the same kernel on one draw of every row, which is why the property
tests compare it with scikit-learn on random inputs. Slice gaps are resampled with the same
draws (slices.py), so they have intervals and paired changes like every other figure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelrollout.core.agreement import agreement_kernel
from modelrollout.core.fairness import Facet, bias_kernel
from modelrollout.core.kernels import IntArray, Kernel, kernel_for
from modelrollout.core.problem import DataError as DataError  # re-exported: callers catch it from here
from modelrollout.core.problem import FloatArray as FloatArray
from modelrollout.core.problem import Problem as Problem
from modelrollout.core.problem import encode as encode
from modelrollout.core.slices import SliceReport as SliceReport
from modelrollout.core.slices import gap_kernel, group_figures, slice_reports

#: Resamples drawn per chunk; bounds memory to chunk * rows * 8 bytes.
CHUNK_CELLS = 4_000_000


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
    bias = "a facet has no rows of the kind this measure divides by (or no rows at all)"
    return {k: f"{k} undefined: {_WHY.get(k, bias if k.startswith('bias_') else 'no rows to compute it from')}"
            for k, v in values.items() if not np.isfinite(v)}


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


def compare(
    candidate: Problem,
    baseline: Problem | None = None,
    *,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    slices: Mapping[str, Sequence[Any]] | None = None,
    min_group_rows: int = 1,
    facet: Facet | None = None,
) -> Comparison:
    """Score the candidate (and the baseline on the same rows), with paired bootstrap intervals.

    With a baseline, the candidate's figures include how far its outputs are from the baseline's
    (core/agreement.py); with a facet (a slice column), Clarify's bias measures (core/fairness.py).
    """
    if baseline is not None and baseline.n != candidate.n:
        raise DataError(f"baseline has {baseline.n} rows, candidate {candidate.n}: not the same hold-out")
    if baseline is not None and (candidate.scores is None) != (baseline.scores is None):
        has, lacks = ("candidate", "baseline") if baseline.scores is None else ("baseline", "candidate")
        raise DataError(f"the {has}'s predictions have scores (probabilities) and the {lacks}'s do not: give "
                        "both or neither, so roc_auc, pr_auc and log_loss compare like with like")

    codes = facet.codes(slices[facet.column]) if facet is not None and slices else None

    def extras(pb: Problem, other: Problem | None = None) -> list[Kernel]:
        """The bias measures and the agreement with `other`: figures whose point value is their kernel on
        every row (the per-group figures' is computed group by group, in slice_reports)."""
        return ([bias_kernel(pb, codes)] if codes is not None else []) + \
            ([agreement_kernel(pb, other)] if other is not None else [])

    def combined(parts: list[Kernel]) -> Kernel:
        return lambda idx: {k: v for part in parts for k, v in part(idx).items()}

    def kernel(pb: Problem, extra: list[Kernel]) -> Kernel:
        return combined([kernel_for(pb), *([gap_kernel(pb, slices, min_group_rows)] if slices else []), *extra])

    more = [extras(candidate, baseline)] + ([extras(baseline)] if baseline is not None else [])
    kernels = [kernel(candidate, more[0])] + ([kernel(baseline, more[1])] if baseline is not None else [])
    dists = bootstrap_distributions(kernels, candidate.n, resamples, seed) if resamples > 0 else []
    every = np.arange(candidate.n, dtype=np.int64)[None, :]

    def report(pb: Problem, dist: dict[str, FloatArray] | None, extra: list[Kernel]) -> QualityReport:
        m = metrics(pb)
        cm = confusion_matrix(pb) if pb.task != "regression" else None
        sl = slice_reports(pb, slices, min_group_rows) if slices else []
        m.update(group_figures(sl))
        m.update({k: float(v[0]) for k, v in combined(extra)(every).items()})
        dist = {k: d for k, d in (dist or {}).items() if k in m}  # no gap value (under two groups): no interval
        ivs = {}
        for k, d in dist.items():
            iv = percentile_interval(d, level)
            if iv is not None:
                ivs[k] = iv
        return QualityReport(m, ivs, sl, cm, pb.n, undefined(m), dist)

    cand = report(candidate, dists[0] if dists else None, more[0])
    base = report(baseline, dists[1] if len(dists) > 1 else None, more[1]) if baseline is not None else None
    delta: dict[str, float] = {}
    delta_iv: dict[str, Interval] = {}
    delta_dists: dict[str, FloatArray] = {}
    if base is not None:
        for k, v in cand.metrics.items():
            if k in base.metrics:
                delta[k] = v - base.metrics[k]
        for k, d in cand.distributions.items():
            if k in base.distributions:
                delta_dists[k] = d - base.distributions[k]
                iv = percentile_interval(delta_dists[k], level)
                if iv is not None:
                    delta_iv[k] = iv
    return Comparison(cand, base, delta, delta_iv, delta_dists)
