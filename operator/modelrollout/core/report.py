"""The verdict, side by side: a terminal table, JSON with a stable schema, and Markdown.

JSON schema `modelrollout.dev/report/v1` (the operator, the exporter and CI read it):

    schema        "modelrollout.dev/report/v1"
    task          the task
    decision      {result: "Promote" | "Reject", reason: str}
    figures       [{name, candidate, baseline, delta, interval, deltaInterval}], numbers or null;
                  an interval is {low, high, level, resamples}
    gates         [{index, metric, bound, threshold, value, baseline, delta, interval, confidence,
                    samples, verdict: "Pass" | "Fail" | "Inconclusive", dryRun, message, detectable}];
                  with confidence, `interval` is the one the gate decided on (paired candidate -
                  baseline for a relative bound) at its own level, and `detectable` its half-width:
                  the smallest change this hold-out can tell from none at that confidence
    candidate     {metrics, undefined, slices, confusionMatrix} ; baseline: the same, or null;
                  `undefined` says why each null figure has no value
    dataQuality   {rows, columns, missing, duplicateRows, labels}
    details       free-form sections (probe curves, capacity); not covered by the schema

Fields are only ever added to v1, never renamed or removed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelrollout.core.gates import Decision, Evidence, GateResult, detectable, worse
from modelrollout.core.quality import Interval, QualityReport

SCHEMA = "modelrollout.dev/report/v1"


@dataclass
class Report:
    task: str
    evidence: Evidence
    gates: Sequence[GateResult]
    decision: Decision
    candidate_quality: QualityReport | None = None
    baseline_quality: QualityReport | None = None
    data_quality: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def figure_names(self) -> list[str]:
        names = list(self.evidence.candidate)
        for n in self.evidence.baseline or {}:
            if n not in names:
                names.append(n)
        return names


def _num(v: float | None) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _iv(iv: Interval | None) -> dict[str, float | int] | None:
    return iv.as_dict() if iv is not None else None


def _quality(q: QualityReport | None) -> dict[str, Any] | None:
    if q is None:
        return None
    return {
        "metrics": {k: _num(v) for k, v in q.metrics.items()},
        "undefined": dict(q.undefined),  # figure -> why it is null
        "confusionMatrix": q.confusion,
        "slices": [
            {"column": s.column, "sizes": s.sizes, "gaps": s.gaps,
             "groups": {g: {k: _num(v) for k, v in m.items()} for g, m in s.groups.items()}}
            for s in q.slices
        ],
    }


def gate_dict(r: GateResult) -> dict[str, Any]:
    return {
        "index": r.index, "metric": r.metric, "bound": r.bound, "threshold": r.threshold,
        "value": _num(r.value), "baseline": _num(r.baseline), "delta": _num(r.delta),
        "interval": _iv(r.interval), "confidence": r.confidence, "samples": r.samples,
        "verdict": str(r.verdict), "dryRun": r.dry_run, "message": r.message,
        "detectable": _num(detectable(r.interval)) if r.confidence is not None and r.interval else None,
    }


def to_json(rep: Report) -> dict[str, Any]:
    ev = rep.evidence
    figures = []
    for name in rep.figure_names():
        c = _num(ev.candidate.get(name))
        b = _num((ev.baseline or {}).get(name))
        figures.append({
            "name": name, "candidate": c, "baseline": b,
            "delta": None if c is None or b is None else c - b,
            "interval": _iv(ev.intervals.get(name)), "deltaInterval": _iv(ev.delta_intervals.get(name)),
        })
    return {
        "schema": SCHEMA,
        "task": rep.task,
        "decision": {"result": str(rep.decision.outcome), "reason": rep.decision.reason},
        "figures": figures,
        "gates": [gate_dict(r) for r in rep.gates],
        "candidate": _quality(rep.candidate_quality),
        "baseline": _quality(rep.baseline_quality),
        "dataQuality": dict(rep.data_quality),
        "details": dict(rep.details),
    }


def from_status(task: str, status: Mapping[str, Any]) -> Report:
    """A report rebuilt from a ModelRollout's status, so `kubectl modelrollout status` shows the same table."""
    from modelrollout.core.gates import Decision, Outcome, Verdict

    cand = status.get("candidate") or {}
    ivs = {k: Interval(v["low"], v["high"], v.get("level", 0.95), v.get("resamples", 0))
           for k, v in (cand.get("intervals") or {}).items()}
    gates = [GateResult(
        index=g["index"], metric=g["metric"], bound=g["bound"], threshold=g["threshold"],
        verdict=Verdict(g["verdict"]), message=g.get("message", ""), value=g.get("value"),
        baseline=g.get("baseline"), delta=g.get("delta"), confidence=g.get("confidence"),
        samples=g.get("samples"), dry_run=bool(g.get("dryRun")),
        interval=Interval(g["interval"]["low"], g["interval"]["high"], g["interval"].get("level", 0.95),
                          g["interval"].get("resamples", 0)) if g.get("interval") else None)
        for g in status.get("gates") or []]
    ev = Evidence(cand.get("metrics") or {}, (status.get("baseline") or {}).get("metrics"), ivs)
    d = status.get("decision") or {}
    outcome = Outcome.PROMOTE if d.get("result") == "Promoted" else Outcome.REJECT
    reason = d.get("reason") or status.get("message") or str(status.get("phase") or "Pending")
    return Report(task=task, evidence=ev, gates=gates, decision=Decision(outcome, reason))


def _f(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if float(v).is_integer() and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


def rows(rep: Report) -> list[list[str]]:
    """candidate | baseline | delta | interval | gate | verdict, one row per figure or gate check."""
    ev = rep.evidence
    by_metric: dict[str, list[GateResult]] = {}
    for r in rep.gates:
        by_metric.setdefault(r.metric, []).append(r)
    out = []
    for name in rep.figure_names():
        c = ev.candidate.get(name)
        b = (ev.baseline or {}).get(name)
        delta = c - b if c is not None and b is not None and math.isfinite(c - b) else None
        d = "-" if delta is None else f"{'+' if delta >= 0 else ''}{_f(delta)}" + (" ▼" if worse(name, delta) and
                                                                                    delta != 0 else "")
        iv = ev.intervals.get(name)
        own = "-" if iv is None else f"[{_f(iv.low)}, {_f(iv.high)}]"
        checks = by_metric.pop(name, [])
        if not checks:
            out.append([name, _f(c), _f(b), d, own, "", ""])
        for i, r in enumerate(checks):
            gate = f"{r.bound} {_f(r.threshold)}" + (" (dry run)" if r.dry_run else "")
            interval = _decided_on(r) or (own if i == 0 else "")
            if i == 0:
                out.append([name, _f(c), _f(b), d, interval, gate, str(r.verdict)])
            else:
                out.append(["", "", "", "", interval, gate, str(r.verdict)])
    for name, checks in by_metric.items():  # gates on figures nobody produced
        for r in checks:
            out.append([name, "-", "-", "-", "-", f"{r.bound} {_f(r.threshold)}", str(r.verdict)])
    return out


def _decided_on(r: GateResult) -> str | None:
    """The interval a confidence gate decided on, labelled: Δ for the paired candidate − baseline one."""
    if r.confidence is None or r.interval is None:
        return None
    paired = "Δ" if r.bound not in ("min", "max") else ""
    return f"{paired}[{_f(r.interval.low)}, {_f(r.interval.high)}] {r.confidence:.0%}"


HEADER = ["figure", "candidate", "baseline", "delta", "interval", "gate", "verdict"]
LEGEND = ("interval: the candidate's own, or the one a confidence gate decided on at its level "
          "(Δ[...]: paired, candidate − baseline); ▼: worse than the baseline")


def to_text(rep: Report) -> str:
    table = [HEADER, *rows(rep)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [LEGEND, ""]
    lines.append(f"decision: {rep.decision.outcome} ({rep.decision.reason})")
    return "\n".join(lines)


def to_markdown(rep: Report) -> str:
    icon = {"Pass": "✅ Pass", "Fail": "❌ Fail", "Inconclusive": "⚠️ Inconclusive"}
    out = [f"### modelrollout: **{rep.decision.outcome}**", "", rep.decision.reason, "",
           "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows(rep):
        r = [*r[:6], icon.get(r[6], r[6])]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    out += ["", LEGEND]
    failing = [g for g in rep.gates if not g.passed]
    if failing:
        out += ["", "**Gates not passed**", ""]
        out += [f"- `{g.metric}` {g.bound} {g.threshold:g}: {g.message}" for g in failing]
    dq = rep.data_quality
    if dq:
        out += ["", f"Hold-out: {dq.get('rows')} rows, {dq.get('duplicateRows', 0)} duplicate rows."]
    return "\n".join(out) + "\n"
