"""The facet table: every group of each slice column with its size, figures of both models, and which
group is the worst; and the bounded form of it for status."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

from modelrollout.core.figures import QUALITY, Task, base_metric
from modelrollout.core.quality import QualityReport
from modelrollout.core.slices import SliceReport

#: groups per slice column kept in status (the worst first), and figures per group
STATUS_GROUPS = 20


def shown_metrics(task: str, gated: Sequence[str], limit: int = 3) -> list[str]:
    """The figures a facet table shows: those the gates name per group, else the task's first ones."""
    named = [base_metric(m) for m in gated if base_metric(m) != m]
    out = list(dict.fromkeys(named))
    return out or list(QUALITY[cast(Task, task)][:limit])


def _f(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.4g}"


def group_rows(cand: SliceReport, base: SliceReport | None, metrics: Sequence[str]) -> list[list[str]]:
    """group | rows | each figure as candidate / baseline; a group too small to gate is marked, the worst too."""
    worst = {g for m, g in cand.worst.items() if m in metrics}
    out = []
    for g, figs in cand.groups.items():
        theirs = (base.groups.get(g) if base else None) or {}
        mark = " (worst)" if g in worst else "" if cand.gated(g) else f" (under {cand.min_rows} rows: not gated)"
        out.append([f"{g}{mark}", str(cand.sizes.get(g, 0)),
                    *(f"{_f(figs.get(m))} / {_f(theirs.get(m))}" if base else _f(figs.get(m)) for m in metrics)])
    return out


def tables(task: str, cand: QualityReport | None, base: QualityReport | None,
           gated: Sequence[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per slice column."""
    if cand is None or not cand.slices:
        return []
    metrics = shown_metrics(task, gated)
    theirs = {s.column: s for s in (base.slices if base else [])}
    both = " (candidate / baseline)" if base else ""
    return [(f"by {s.column}{both}", ["group", "rows", *metrics], group_rows(s, theirs.get(s.column), metrics))
            for s in cand.slices]


def status_form(cand: QualityReport | None, base: QualityReport | None, task: str,
                gated: Sequence[str]) -> list[dict[str, Any]]:
    """Bounded per-group figures for status: STATUS_GROUPS groups per column, the shown figures only."""
    if cand is None:
        return []
    metrics = shown_metrics(task, gated)
    theirs = {s.column: s for s in (base.slices if base else [])}
    out = []
    for s in cand.slices[:16]:
        b = theirs.get(s.column)
        first = metrics[0]
        order = sorted(s.groups, key=lambda g: (not s.gated(g), s.groups[g].get(first, math.nan)))
        groups = [{"group": g[:63], "rows": s.sizes.get(g, 0), "gated": s.gated(g),
                   "candidate": {m: _num(s.groups[g].get(m)) for m in metrics},
                   "baseline": None if b is None else {m: _num((b.groups.get(g) or {}).get(m)) for m in metrics}}
                  for g in order[:STATUS_GROUPS]]
        out.append({"column": s.column, "minRows": s.min_rows, "groups": groups, "groupsTotal": len(s.groups),
                    "worst": {m: s.worst[m][:63] for m in metrics if m in s.worst}})
    return out


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(f"{v:.6g}")
