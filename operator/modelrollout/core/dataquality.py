"""Gateable figures of the hold-out itself, from its summary: known before anything is staged.

A hold-out with a third of its cells missing, half its rows duplicated or one class only scores a model
on the wrong question, whatever the model; these gates fail such a rollout before a server starts.
`missing_percent` is the share of missing cells over every column read; `worst_column_missing_percent` the
worst column's share (the report and status list each column); `label_balance` the minority class's
share of the labelled rows (classification).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelrollout.core.figures import DATA, DATA_ONLY
from modelrollout.core.gates import Evidence, Verdict, evaluate_gate
from modelrollout.core.spec import Gate


def data_figures(summary: Mapping[str, Any]) -> dict[str, float]:
    rows = int(summary.get("rows", 0))
    columns = int(summary.get("columns", 0))
    missing = {str(k): int(v) for k, v in (summary.get("missing") or {}).items()}
    out: dict[str, float] = {"rows": float(rows)}
    if rows and columns:
        out["missing_percent"] = 100.0 * sum(missing.values()) / (rows * columns)
    if rows and missing:
        out["worst_column_missing_percent"] = 100.0 * max(missing.values()) / rows
    dup = summary.get("duplicateRows")
    if dup is not None:
        out["duplicate_rows"] = float(dup)
        if rows:
            out["duplicate_percent"] = 100.0 * float(dup) / rows
    labels = summary.get("labels") or {}
    if labels and "mean" not in labels:  # classification: class -> count
        total = sum(int(v) for v in labels.values())
        if total:
            out["label_balance"] = (min(int(v) for v in labels.values()) if len(labels) > 1 else 0) / total
    return {k: v for k, v in out.items() if k in DATA}


def missing_columns(summary: Mapping[str, Any], limit: int = 5) -> list[str]:
    """The columns with the most missing cells, worst first, as 'name (n%)' for a message."""
    rows = int(summary.get("rows", 0)) or 1
    missing = sorted(((int(v), str(k)) for k, v in (summary.get("missing") or {}).items() if int(v) > 0),
                     reverse=True)
    return [f"{k} ({100 * v / rows:.3g}%)" for v, k in missing[:limit]]


def data_gate_failures(gates: Sequence[Gate], summary: Mapping[str, Any],
                       drift: Mapping[str, float] | None = None) -> str | None:
    """The blocking gates on figures of the hold-out (and its drift) that fail: known before anything is staged.

    Inconclusive gates (a figure the summary lacks) are left to the full evaluation, which says why.
    """
    figures = {**data_figures(summary), **(drift or {})}
    ev = Evidence(figures, samples={k: int(summary.get("rows", 0)) for k in figures})
    failed = [r for i, g in enumerate(gates) if g.metric in figures and g.metric in DATA_ONLY and not g.dry_run
              for r in evaluate_gate(i, g, ev) if r.verdict is Verdict.FAIL]
    if not failed:
        return None
    parts = [f"gate {r.index} failed: {r.message}" for r in failed]
    if any("missing_percent" in r.metric for r in failed) and missing_columns(summary):
        parts.append("most missing: " + ", ".join(missing_columns(summary)))
    return "the hold-out fails its data gates before anything is staged: " + "; ".join(parts)


def data_status(summary: Mapping[str, Any], limit: int = 10) -> dict[str, Any] | None:
    """The hold-out's data figures for status, bounded: the `limit` columns with most missing cells."""
    if not summary:
        return None
    labels = summary.get("labels") or {}
    return {"figures": data_figures(summary), "mostMissing": missing_columns(summary, limit),
            "labels": dict(list(labels.items())[:20]), "labelsTotal": len(labels)}
