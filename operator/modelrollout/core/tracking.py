"""What one evaluation is as an MLflow run: metrics, params and tags, named so runs of a target line up.

Metric keys: `candidate.<figure>`, `baseline.<figure>`, `delta.<figure>` (candidate − baseline), with
`.low` / `.high` for an interval (the candidate's own; the paired one under `delta.`);
`gate.<index>.<metric>.<bound>.passed` 0/1; `decision.promote` 0/1; and the sweep table as
`sweep.<variant>.b<batch>.c<concurrency>.<figure>`. Values are the report's, unrounded, so a run
read back equals status to the last bit. Params are strings capped at PARAM_CHARS, tags at TAG_CHARS.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from modelrollout.core.report import Report
from modelrollout.core.sweep import CellFigures

PARAM_CHARS = 500  # MLflow's limit before 2.x; newer servers take 6000
TAG_CHARS = 5000
_SWEEP: dict[str, Any] = {
    "rows_per_s": lambda f: f.rows_per_s, "throughput_rps": lambda f: f.throughput_rps,
    "latency_p99_ms": lambda f: f.latency_ms.get("p99"), "latency_p50_ms": lambda f: f.latency_ms.get("p50"),
    "latency_per_sample_p99_ms": lambda f: f.per_sample_ms().get("p99"),
    "error_rate_percent": lambda f: f.error_rate_percent,
}


def run_metrics(rep: Report) -> dict[str, float]:
    """Every figure, interval bound, delta, gate verdict and sweep cell of a report; finite values only."""
    ev, out = rep.evidence, {}
    for name in rep.figure_names():
        c, b = ev.candidate.get(name), (ev.baseline or {}).get(name)
        out[f"candidate.{name}"] = c
        out[f"baseline.{name}"] = b
        out[f"delta.{name}"] = None if c is None or b is None else c - b
        for prefix, ivs in (("candidate", ev.intervals), ("delta", ev.delta_intervals)):
            if (iv := ivs.get(name)) is not None:
                out[f"{prefix}.{name}.low"], out[f"{prefix}.{name}.high"] = iv.low, iv.high
    for g in rep.gates:
        out[f"gate.{g.index}.{g.metric}.{g.bound}.passed"] = 1.0 if g.passed else 0.0
    out["decision.promote"] = 1.0 if rep.decision.promote else 0.0
    if ev.sweep is not None:
        for variant, side in (("candidate", ev.sweep.candidate), ("baseline", ev.sweep.baseline or {})):
            for cell, f in side.items():
                out.update(_cell(f"sweep.{variant}.b{cell.batch_size}.c{cell.concurrency}", f))
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def _cell(prefix: str, f: CellFigures) -> dict[str, float | None]:
    return {f"{prefix}.{name}": get(f) for name, get in _SWEEP.items()}


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """A spec section as `prefix.key.sub` params; lists of objects (gates, steps) as one JSON value."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for k, v in value.items():
            if v is not None:
                out.update(flatten(f"{prefix}.{k}", v))
        return out
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    return {prefix: text}


def capped(values: Mapping[str, str], limit: int) -> dict[str, str]:
    return {k: v if len(v) <= limit else v[: limit - 1] + "…" for k, v in values.items()}


def run_tags(rep: Report) -> dict[str, str]:
    return capped({"decision": str(rep.decision.outcome), "reason": rep.decision.reason}, TAG_CHARS)


HOLDOUT_PARAMS = ("sha256", "bytes", "rows", "rowsUsed", "columns", "schemaSha256")


def run_params(rep: Report, spec: Mapping[str, Any] | None, context: Mapping[str, str]) -> dict[str, str]:
    """`context` (who and what: rollout, images, attempt) + every spec knob + the hold-out's fingerprint."""
    out = dict(context)
    out.update(flatten("spec", dict(spec or {})))
    out.update({f"holdout.{k}": str(rep.holdout[k]) for k in HOLDOUT_PARAMS if rep.holdout.get(k) is not None})
    return out
