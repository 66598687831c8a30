"""The catalogue of figures the engine produces and gates may name.

Gates take a mapping of figures, not a fixed list; this catalogue only lets the manifest
parser reject names nothing will ever produce, and tells which direction is better.
"""

from __future__ import annotations

from typing import Final, Literal

Task = Literal["binary-classification", "multiclass-classification", "regression"]
TASKS: Final[tuple[Task, ...]] = ("binary-classification", "multiclass-classification", "regression")

QUALITY: Final[dict[Task, tuple[str, ...]]] = {
    "binary-classification": ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss"),
    "multiclass-classification": (
        "accuracy", "precision_macro", "recall_macro", "f1_macro",
        "precision_weighted", "recall_weighted", "f1_weighted", "roc_auc", "log_loss",
    ),
    "regression": ("mse", "rmse", "mae", "r2", "adjusted_r2", "mape"),
}

#: Figures from the probes and capacity planning, defined for every task.
SYSTEM: Final[tuple[str, ...]] = (
    "latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "latency_p999_ms",
    "latency_max_ms", "throughput_rps", "error_rate_percent", "best_batch_size",
    "memory_before_mib", "memory_peak_mib", "memory_after_mib", "memory_growth_percent",
    "memory_growth_mib_per_10k_requests", "memory_leak_mib_per_10k_requests", "memory_leak_suspected",
    "cpu_percent", "cpu_before_percent", "cpu_after_percent", "time_to_ready_s", "throughput_at_slo_rps",
    "replicas_fit", "fleet_throughput_rps", "fleet_throughput_at_slo_rps", "replicas_needed", "cost_per_million_usd",
)

#: system figures measured window by window (core/windows.py), so they have intervals; a maximum
#: (latency_max_ms) has none: one slow request decides it
WINDOWED: Final[tuple[str, ...]] = (
    "latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "latency_p999_ms",
    "throughput_rps", "memory_peak_mib", "cpu_percent", "throughput_at_slo_rps",
)
#: system figures each cell of the load sweep (batch size x concurrency) has, so a gate may name a cell
#: (core/sweep.py); memory, CPU, capacity and the leak probe are per variant, not per cell
PER_CELL: Final[tuple[str, ...]] = (
    "latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "latency_p999_ms",
    "latency_max_ms", "throughput_rps", "error_rate_percent",
)
#: seconds of warm-up (new connections) before each load window but a variant's first
WINDOW_WARMUP: Final = 0.25

_LOWER_IS_BETTER: Final = frozenset({
    "log_loss", "mse", "rmse", "mae", "mape", "error_rate_percent", "memory_before_mib",
    "memory_peak_mib", "memory_after_mib", "memory_growth_percent", "memory_growth_mib_per_10k_requests",
    "cpu_percent", "cpu_before_percent", "cpu_after_percent", "replicas_needed", "cost_per_million_usd",
    "memory_leak_mib_per_10k_requests",
    "memory_leak_suspected", "time_to_ready_s",
})

SLICE_GAP_SUFFIX: Final = "_slice_gap"
WORST_GROUP_SUFFIX: Final = "_worst_group"

#: Clarify's post-training bias measures (binary tasks; facet d against facet a), named bias_<clarify name>:
#: a figure of each model, so paired against production like any other (core/fairness.py)
BIAS_POST: Final[tuple[str, ...]] = tuple(
    "bias_" + n for n in ("dppl", "di", "dca", "dcr", "rd", "sd", "dar", "drr", "ad", "te"))
#: Clarify's pre-training measures of the hold-out's labels: a property of the data, the same for both models
BIAS_PRE: Final[tuple[str, ...]] = tuple("bias_" + n for n in ("ci", "dpl", "kl", "js", "lp", "tvd", "ks"))
#: figures of the hold-out itself (core/dataquality.py): known before anything is staged
DATA: Final[tuple[str, ...]] = ("rows", "missing_percent", "worst_column_missing_percent", "duplicate_rows",
                                "duplicate_percent", "label_balance")
#: drift of the hold-out's features from a reference set (core/drift.py): known before anything is staged
DRIFT: Final[tuple[str, ...]] = ("drift_psi_max", "drifted_features")
#: the candidate against production on the same rows (core/agreement.py): need a baseline
AGREEMENT: Final[tuple[str, ...]] = ("disagreement_rate", "mean_abs_score_diff", "max_abs_score_diff")
#: figures that are the same for both models: a bound relative to the baseline means nothing
DATA_ONLY: Final = frozenset(DATA + BIAS_PRE + DRIFT)


def figures_for(task: Task) -> tuple[str, ...]:
    """Every figure name a gate may use for this task."""
    quality = QUALITY[task]
    groups = tuple(m + s for s in (SLICE_GAP_SUFFIX, WORST_GROUP_SUFFIX) for m in quality)
    bias = BIAS_POST + BIAS_PRE if task == "binary-classification" else ()
    data = DATA if task != "regression" else tuple(d for d in DATA if d != "label_balance")
    return quality + groups + SYSTEM + bias + data + DRIFT + AGREEMENT


def base_metric(metric: str) -> str:
    """The quality figure a group figure is of: f1 for f1_worst_group and f1_slice_gap."""
    for s in (SLICE_GAP_SUFFIX, WORST_GROUP_SUFFIX):
        if metric.endswith(s):
            return metric[: -len(s)]
    return metric


def higher_is_better(metric: str) -> bool:
    if metric.endswith(WORST_GROUP_SUFFIX):
        return higher_is_better(base_metric(metric))
    return not (
        metric in _LOWER_IS_BETTER or metric.startswith("latency_") or metric.endswith(SLICE_GAP_SUFFIX)
        or metric in AGREEMENT or metric in DRIFT or (metric in DATA and metric not in ("rows", "label_balance"))
    )


def directional(metric: str) -> bool:
    """Whether a change has a better and a worse side: a bias measure is best at its fair value, not at an end."""
    return not metric.startswith("bias_")


def task_for_metric(metric: str) -> list[Task]:
    """The tasks that define a metric, for error messages."""
    return [t for t in TASKS if metric in figures_for(t)]
