"""Vectorised bootstrap against a loop of scikit-learn calls, on the same resamples.

    .venv/bin/python bench/bootstrap.py [--rows 100000] [--resamples 1000] [--repeat 3]

Prints the median time of each and the ratio; fails if the intervals differ.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
from sklearn import metrics as skm

from modelrollout.core.quality import compare, encode, resample_indices

METRICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda y, p, s: skm.accuracy_score(y, p),
    "precision": lambda y, p, s: skm.precision_score(y, p, zero_division=0),
    "recall": lambda y, p, s: skm.recall_score(y, p, zero_division=0),
    "f1": lambda y, p, s: skm.f1_score(y, p, zero_division=0),
    "roc_auc": lambda y, p, s: skm.roc_auc_score(y, s),
    "pr_auc": lambda y, p, s: skm.average_precision_score(y, s),
    "log_loss": lambda y, p, s: skm.log_loss(y, s, labels=[0, 1]),
}


def loop(
    y: np.ndarray, p: np.ndarray, s: np.ndarray, resamples: int, seed: int, level: float
) -> dict[str, tuple[float, float]]:
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for idx in resample_indices(len(y), resamples, seed):
            for row in idx:
                yr, pr, sr = y[row], p[row], s[row]
                for m, fn in METRICS.items():
                    values[m].append(fn(yr, pr, sr))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {m: tuple(np.percentile(v, q)) for m, v in values.items()}  # type: ignore[misc]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the vectorised engine (median)")
    ap.add_argument("--loop-repeat", type=int, default=1, help="runs of the scikit-learn loop (median)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, a.rows)
    s = np.clip(0.35 * y + 0.65 * rng.random(a.rows), 0, 1).round(3)  # ties, as real scores have
    p = (s >= 0.5).astype(int)
    pb = encode("binary-classification", y, p, s)

    ours, cmp = [], None
    for _ in range(a.repeat):
        t = time.perf_counter()
        cmp = compare(pb, resamples=a.resamples, seed=1, level=0.95)
        ours.append(time.perf_counter() - t)
    theirs, ref = [], {}
    for _ in range(a.loop_repeat):
        t = time.perf_counter()
        ref = loop(y, p, s, a.resamples, 1, 0.95)
        theirs.append(time.perf_counter() - t)
    assert cmp is not None
    worst = 0.0
    for m, (lo, hi) in ref.items():
        iv = cmp.candidate.intervals[m]
        worst = max(worst, abs(iv.low - lo), abs(iv.high - hi))
    print(f"rows={a.rows} resamples={a.resamples} metrics={len(METRICS)}")
    print(f"vectorised median {statistics.median(ours):.2f}s  "
          f"scikit-learn loop median {statistics.median(theirs):.2f}s")
    print(f"speed-up ratio (loop / vectorised): {statistics.median(theirs) / statistics.median(ours):.1f}x")
    print(f"largest interval difference: {worst:.2e}")
    if worst > 1e-9:
        raise SystemExit("intervals differ from the scikit-learn loop")


if __name__ == "__main__":
    main()
