"""How far the candidate's outputs are from production's on the same rows: the "golden set" check.

A re-exported, quantized or recompiled model should predict what production predicts; its accuracy
staying within a bound does not show that (two models can be equally accurate on different rows).
Per row: whether the predicted labels differ (classification; regression: whether the values differ),
and the absolute difference of the scores (binary: P(positive); multiclass: the largest over the classes;
regression: the predicted values). The figures are means and the maximum over the drawn rows, resampled
with the same draws as every other figure.
"""

from __future__ import annotations

import numpy as np

from modelrollout.core.kernels import IntArray, Kernel
from modelrollout.core.problem import DataError, FloatArray, Problem


def _score_diff(c: Problem, b: Problem) -> FloatArray | None:
    if c.task == "regression":
        return np.asarray(np.abs(c.pred - b.pred), dtype=np.float64)
    if c.scores is None or b.scores is None:
        return None
    d = np.abs(c.scores - b.scores)
    return np.asarray(d if d.ndim == 1 else d.max(axis=1), dtype=np.float64)


def agreement_kernel(candidate: Problem, baseline: Problem) -> Kernel:
    """disagreement_rate, mean_abs_score_diff and max_abs_score_diff per draw (no scores: no score figures)."""
    if candidate.n != baseline.n:
        raise DataError(f"baseline has {baseline.n} rows, candidate {candidate.n}: not the same hold-out")
    if candidate.classes != baseline.classes:
        raise DataError("candidate and baseline predict different classes: their outputs cannot be compared")
    differ = (candidate.pred != baseline.pred).astype(np.float64)
    diff = _score_diff(candidate, baseline)

    def kernel(idx: IntArray) -> dict[str, FloatArray]:
        out = {"disagreement_rate": np.asarray(differ[idx].mean(axis=1), dtype=np.float64)}
        if diff is not None:
            drawn = diff[idx]
            out["mean_abs_score_diff"] = np.asarray(drawn.mean(axis=1), dtype=np.float64)
            out["max_abs_score_diff"] = np.asarray(drawn.max(axis=1), dtype=np.float64)
        return out

    return kernel
