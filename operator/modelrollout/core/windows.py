"""Intervals for system figures from load windows, measured interleaved (batch means).

A latency percentile, the throughput or the memory peak of one run is a single number: its
requests are not independent (a slow second slows every request in it), so resampling
requests would give an interval far too narrow. Instead the load runs in windows that
alternate between candidate and baseline on the same node and load generator, in the
order ABBA BAAB ... so a drift of the machine falls on both alike. Each window yields one
value of each figure; windows far longer than the machine's noise are nearly independent,
so the spread of the window values (for a relative gate: of the paired differences, window
j of the candidate minus window j of the baseline) gives a Student-t interval around the
figure pooled over all windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from modelrollout.core.figures import WINDOWED as WINDOWED
from modelrollout.core.quality import Interval


@dataclass(frozen=True)
class Windows:
    """One figure measured window by window."""

    pooled: float  # over the whole run: the figure itself (or candidate minus baseline)
    values: NDArray[np.float64]  # one per window (or per pair of windows: the differences)
    seconds: float  # load per variant behind these windows, for "how long would decide it"

    def interval(self, level: float) -> Interval | None:
        """pooled ± t(level, k-1) · sd / √k over the k windows; None under two finite windows."""
        v = self.values[np.isfinite(self.values)]
        if len(v) < 2 or not math.isfinite(self.pooled):
            return None
        half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * np.std(v, ddof=1) / math.sqrt(len(v)))
        return Interval(self.pooled - half, self.pooled + half, level, len(v))


def schedule(pairs: int, labels: Sequence[str]) -> list[tuple[int, str]]:
    """(window index, variant) in ABBA BAAB order: pair j runs A then B when j is even, else B then A."""
    out: list[tuple[int, str]] = []
    for j in range(pairs):
        order = labels if j % 2 == 0 else list(reversed(labels))
        out += [(j, label) for label in order]
    return out


def paired(candidate: Windows, baseline: Windows) -> Windows | None:
    """Candidate minus baseline, window by window (pair j ran back to back); None if the counts differ."""
    if len(candidate.values) != len(baseline.values):
        return None
    return Windows(candidate.pooled - baseline.pooled, candidate.values - baseline.values, candidate.seconds)
