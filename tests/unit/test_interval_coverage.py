"""The bootstrap intervals cover the truth as often as they say: seeded simulations with a known answer.

Regression: RMSE's percentile interval under-covers a little at small hold-outs. Measured with 400
resamples over 1,000-2,000 simulated hold-outs each, normal errors: about 92.8 % at 50-100 rows, 94 % at
200-300, 94.5-95 % at 500-1,000 (1,000 resamples gain about half a point at 200 rows). Heavy-tailed
errors (Student t, 5 degrees of freedom) under-cover more: about 88 % at 100 rows and 90 % at 500. So
this checks it at 500 rows with normal errors, where it is nominal.

Classification at 300 rows (1,000 hold-outs, 400 resamples): accuracy 94.0 %, F1 93.7 %, ROC-AUC 93.7 %,
the percentile bootstrap's usual small shortfall at this size.
"""

from __future__ import annotations

import numpy as np

from modelrollout.core.quality import compare, encode


def test_the_95_percent_rmse_interval_covers_the_true_rmse() -> None:
    """Errors N(0, 1) on 500 rows: the true RMSE is 1. Measured coverage: 94.6 % of 1,500 (94.2-95.7 % over
    four other seeds)."""
    rng = np.random.default_rng(0)
    runs, hits = 1500, 0
    for i in range(runs):
        y = rng.normal(size=500)
        iv = compare(encode("regression", y, y + rng.normal(size=500)), resamples=400, seed=i).candidate.intervals
        hits += iv["rmse"].low <= 1.0 <= iv["rmse"].high
    assert 0.93 <= hits / runs <= 0.97, hits / runs


def test_the_95_percent_accuracy_f1_and_roc_auc_intervals_cover_the_truth() -> None:
    """Hold-outs of 300 rows drawn from a population of 10^6 whose figures scikit-learn gives exactly."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(3)
    y = (rng.random(1_000_000) < 0.4).astype(int)
    s = np.clip(0.25 * y + 0.75 * rng.random(len(y)), 0, 1).round(3)  # ties, as real scores have
    p = (s >= 0.5).astype(int)
    truth = {"accuracy": accuracy_score(y, p), "f1": f1_score(y, p), "roc_auc": roc_auc_score(y, s)}
    runs, hits = 1000, dict.fromkeys(truth, 0)
    for i in range(runs):
        rows = rng.integers(0, len(y), 300)
        iv = compare(encode("binary-classification", y[rows], p[rows], s[rows]), resamples=400,
                     seed=i).candidate.intervals
        for m, t in truth.items():
            hits[m] += iv[m].low <= t <= iv[m].high
    coverage = {m: h / runs for m, h in hits.items()}
    print("coverage at 300 rows:", coverage)
    assert all(0.93 <= c <= 0.97 for c in coverage.values()), coverage
