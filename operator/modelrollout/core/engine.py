"""From hold-out labels, predictions and probe figures to a report with a decision."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelrollout.core.dataquality import data_figures
from modelrollout.core.drift import FeatureDrift, drift_figures, drift_status
from modelrollout.core.fairness import Facet
from modelrollout.core.figures import Task
from modelrollout.core.gates import Evidence, decide, evaluate
from modelrollout.core.quality import Comparison, Interval, compare, encode
from modelrollout.core.report import Report
from modelrollout.core.spec import Gate, QualitySettings
from modelrollout.core.sweep import Cell, CellFigures, Sweep
from modelrollout.core.windows import Windows, paired


@dataclass(frozen=True)
class Predicted:
    """One variant's output on the hold-out rows, in row order."""

    labels: np.ndarray
    scores: np.ndarray | None = None
    classes: Sequence[Any] | None = None


@dataclass(frozen=True)
class SystemFigures:
    """Figures from the probes and capacity planning, with their sample sizes."""

    values: Mapping[str, float]
    samples: Mapping[str, int]
    intervals: Mapping[str, Interval] | None = None
    windows: Mapping[str, Windows] | None = None  # figures measured window by window, for intervals
    cells: Mapping[Cell, CellFigures] | None = None  # the load sweep, the default cell first


def score_quality(
    task: Task, labels: np.ndarray, candidate: Predicted, baseline: Predicted | None,
    settings: QualitySettings, *, positive_label: Any = None, n_features: int | None = None,
    slices: Mapping[str, Sequence[Any]] | None = None, facet: Facet | None = None,
) -> Comparison:
    classes = candidate.classes or (baseline.classes if baseline else None)
    enc = {"classes": classes, "positive_label": positive_label, "n_features": n_features}
    cand = encode(task, labels, candidate.labels, candidate.scores, who="candidate predictions", **enc)
    base = (encode(task, labels, baseline.labels, baseline.scores, who="baseline predictions", **enc)
            if baseline is not None else None)
    return compare(cand, base, level=settings.confidence, resamples=settings.resamples, seed=settings.seed,
                   slices=slices, min_group_rows=settings.min_group_rows, facet=facet)


def build_report(
    task: Task, gates: Sequence[Gate], quality: Comparison | None, *,
    candidate_system: SystemFigures | None = None, baseline_system: SystemFigures | None = None,
    data_quality: Mapping[str, Any] | None = None, details: Mapping[str, Any] | None = None,
    level: float = 0.95, holdout: Mapping[str, Any] | None = None,
    drift: Sequence[FeatureDrift] = (), drift_threshold: float = 0.25,
) -> Report:
    """Gather every figure into one Evidence, run the gates and decide."""
    cand: dict[str, float] = {}
    base: dict[str, float] | None = None
    intervals: dict[str, Interval] = {}
    delta_iv: dict[str, Interval] = {}
    samples: dict[str, int] = {}
    dists: dict[str, Any] = {}
    delta_dists: dict[str, Any] = {}
    why: dict[str, str] = {}
    if quality is not None:
        cand.update(quality.candidate.metrics)
        intervals.update(quality.candidate.intervals)
        delta_iv.update(quality.delta_intervals)
        samples.update({k: quality.candidate.samples for k in quality.candidate.metrics})
        dists, delta_dists = quality.candidate.distributions, quality.delta_distributions
        why.update({k: f"the candidate's {v}" for k, v in quality.candidate.undefined.items()})
        if quality.baseline is not None:
            base = dict(quality.baseline.metrics)
            for k, v in quality.baseline.undefined.items():
                why.setdefault(k, f"the baseline's {v}")
    data = {**data_figures(data_quality or {}), **drift_figures(drift)}  # the same rows for both models
    cand.update(data)
    samples.update({k: int(data.get("rows", 0)) for k in data})
    if base is not None:
        base.update(data)
    if candidate_system is not None:
        cand.update(candidate_system.values)
        samples.update(candidate_system.samples)
        intervals.update(candidate_system.intervals or {})
    windows = dict(candidate_system.windows or {}) if candidate_system else {}
    delta_windows: dict[str, Windows] = {}
    if baseline_system is not None:
        base = {**(base or {}), **baseline_system.values}
        for k, w in (baseline_system.windows or {}).items():
            d = paired(windows[k], w) if k in windows else None
            if d is not None:
                delta_windows[k] = d
    for src, dst in ((windows, intervals), (delta_windows, delta_iv)):  # the report's own level, for its table
        for k, w in src.items():
            iv = w.interval(level)
            if iv is not None:
                dst[k] = iv
    sweep = (Sweep(candidate_system.cells, baseline_system.cells if baseline_system else None)
             if candidate_system is not None and candidate_system.cells else None)
    ev = Evidence(cand, base, intervals, delta_iv, samples, dists, delta_dists, why, windows, delta_windows, sweep)
    results = evaluate(gates, ev)
    return Report(
        task=task, evidence=ev, gates=results, decision=decide(results),
        candidate_quality=quality.candidate if quality else None,
        baseline_quality=quality.baseline if quality else None,
        data_quality=dict(data_quality or {}), holdout=dict(holdout or {}),
        details={**(details or {}), **({"drift": drift_status(drift, drift_threshold)} if drift else {})},
    )
