"""The verdict, side by side: a terminal table, JSON with a stable schema, and Markdown.

JSON schema `modelrollout.dev/report/v1` (the operator, the exporter and CI read it):

    schema        "modelrollout.dev/report/v1"
    task          the task
    decision      {result: "Promote" | "Reject", reason: str}
    figures       [{name, candidate, baseline, delta, interval, deltaInterval}], numbers or null;
                  an interval is {low, high, level, resamples}
    gates         [{index, metric, bound, threshold, value, baseline, delta, interval, confidence,
                    samples, verdict: "Pass" | "Fail" | "Inconclusive", dryRun, message, detectable,
                    batchSize, concurrency}]; batchSize and concurrency: the load cell the gate named, else null;
                  with confidence, `interval` is the one the gate decided on (paired candidate -
                  baseline for a relative bound) at its own level, and `detectable` its half-width:
                  the smallest change this hold-out can tell from none at that confidence
    candidate     {metrics, undefined, slices, confusionMatrix} ; baseline: the same, or null;
                  `undefined` says why each null figure has no value
    dataQuality   {rows, columns, missing, duplicateRows, labels}
    holdout       the hold-out's fingerprint, or null: {sha256, bytes, rows, rowsUsed, columns, schemaSha256,
                  schema: [{name, type}] (the first 64 columns)}; sha256 is of the file's bytes
    sweep         the load sweep, or null: {batchSizes, concurrencies, default: {batchSize, concurrency},
                  cells: [{batchSize, concurrency, default, candidate, baseline}]}, each variant's cell
                  {requests, errors, seconds, latencyMs, latencyPerSampleMs (by p50 p90 p95 p99 p999 max),
                  throughputRps, rowsPerS, errorRatePercent, cpuPercent} (baseline null without one)
    details       free-form sections (probe curves, capacity); not covered by the schema

Fields are only ever added to v1, never renamed or removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelrollout.core import groups
from modelrollout.core.drift import DRIFT_HEADER, drift_rows
from modelrollout.core.gates import Decision, Evidence, GateResult, detectable, worse
from modelrollout.core.quality import Interval, QualityReport
from modelrollout.core.slo import describe
from modelrollout.core.sweep import Cell, CellFigures, Sweep

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
    holdout: Mapping[str, Any] = field(default_factory=dict)  # its fingerprint

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
            {"column": s.column, "sizes": s.sizes, "gaps": s.gaps, "worst": s.worst, "minRows": s.min_rows,
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
        "batchSize": r.cell.batch_size if r.cell else None, "concurrency": r.cell.concurrency if r.cell else None,
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
        "holdout": dict(rep.holdout) or None,
        "details": dict(rep.details),
        "sweep": ev.sweep.as_dict() if ev.sweep else None,
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
        cell=Cell(int(g["batchSize"]), int(g["concurrency"])) if g.get("batchSize") is not None
        and g.get("concurrency") is not None else None,
        interval=Interval(g["interval"]["low"], g["interval"]["high"], g["interval"].get("level", 0.95),
                          g["interval"].get("resamples", 0)) if g.get("interval") else None)
        for g in status.get("gates") or []]
    ev = Evidence(cand.get("metrics") or {}, (status.get("baseline") or {}).get("metrics"), ivs,
                  sweep=sweep_from_status(status.get("sweep")))
    d = status.get("decision") or {}
    outcome = Outcome.PROMOTE if d.get("result") == "Promoted" else Outcome.REJECT
    reason = d.get("reason") or status.get("message") or str(status.get("phase") or "Pending")
    slo, cap_ = status.get("sloSearch") or {}, status.get("capacity") or {}
    details = {v: {"sloSearch": slo.get(v), "memorySource": (cap_.get("memorySource") or {}).get(v),
                   "measuredPod": (cap_.get("measuredPod") or {}).get(v)} for v in ("candidate", "baseline")}
    return Report(task=task, evidence=ev, gates=gates, decision=Decision(outcome, reason), details=details,
                  holdout=status.get("holdout") or {})


STATUS_CELLS = 64  # cells of the sweep kept in status; the spec allows 16 x 17 = 272


def _sig(v: float | None, digits: int = 4) -> float | None:
    """A figure rounded to `digits` significant digits (status stays small and readable); None if not finite."""
    return None if v is None or not math.isfinite(v) else float(f"{v:.{digits}g}")


def _cell_status(f: CellFigures) -> dict[str, Any]:
    p99 = f.latency_ms.get("p99")
    figures = {"latencyP99Ms": _sig(p99), "latencyPerSampleP99Ms": _sig(f.per_sample_ms().get("p99")),
               "throughputRps": _sig(f.throughput_rps), "rowsPerS": _sig(f.rows_per_s),
               "errorRatePercent": _sig(f.error_rate_percent), "seconds": _sig(f.seconds)}
    return {"requests": f.requests, "errors": f.errors, **{k: v for k, v in figures.items() if v is not None}}


def sweep_status(sw: Sweep, max_cells: int = STATUS_CELLS) -> dict[str, Any]:
    """The sweep as `status.sweep`: the first `max_cells` cells in sweep order (the default cell first),
    `cellsOmitted` the rest; per cell and variant the per-sample and per-request p99, rows/s, requests/s,
    error rate and the counts they rest on, to 4 significant digits. Absent figures are left out."""
    cells = []
    for cell, f in list(sw.candidate.items())[:max_cells]:
        c: dict[str, Any] = {"batchSize": cell.batch_size, "concurrency": cell.concurrency,
                             "candidate": _cell_status(f)}
        b = sw.figures(cell, baseline=True)
        if b is not None:
            c["baseline"] = _cell_status(b)
        cells.append(c)
    return {"batchSizes": sw.batch_sizes, "concurrencies": sw.concurrencies,
            "default": {"batchSize": sw.default.batch_size, "concurrency": sw.default.concurrency},
            "cells": cells, "cellsOmitted": max(0, len(sw.candidate) - max_cells)}


def sweep_from_status(st: Mapping[str, Any] | None) -> Sweep | None:
    """The Sweep `sweep_status` wrote (its kept cells, figures as rounded there); None without cells."""
    def figures(cell: Cell, v: Mapping[str, Any]) -> CellFigures:
        p99 = v.get("latencyP99Ms")
        return CellFigures(cell, int(v.get("requests") or 0), int(v.get("errors") or 0), float(v.get("seconds") or 0),
                           {} if p99 is None else {"p99": float(p99)})

    cand: dict[Cell, CellFigures] = {}
    base: dict[Cell, CellFigures] = {}
    for c in (st or {}).get("cells") or []:
        cell = Cell(int(c["batchSize"]), int(c["concurrency"]))
        cand[cell] = figures(cell, c.get("candidate") or {})
        if c.get("baseline") is not None:
            base[cell] = figures(cell, c["baseline"])
    return Sweep(cand, base or None) if cand else None


def _f(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if float(v).is_integer() and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


def _delta(metric: str, c: float | None, b: float | None) -> str:
    delta = c - b if c is not None and b is not None and math.isfinite(c - b) else None
    if delta is None:
        return "-"
    return f"{'+' if delta >= 0 else ''}{_f(delta)}" + (" ▼" if worse(metric, delta) and delta != 0 else "")


def rows(rep: Report) -> list[list[str]]:
    """candidate | baseline | delta | interval | gate | verdict, one row per figure or gate check."""
    ev = rep.evidence
    by_metric: dict[str, list[GateResult]] = {}
    for r in rep.gates:  # a gate naming a load cell gets a row of its own: the cell's figure
        by_metric.setdefault(r.name, []).append(r)
    out = []
    for name in rep.figure_names():
        c = ev.candidate.get(name)
        b = (ev.baseline or {}).get(name)
        d = _delta(name, c, b)
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
    for name, checks in by_metric.items():  # gates on a load cell's figure, or on figures nobody produced
        for i, r in enumerate(checks):
            gate = f"{r.bound} {_f(r.threshold)}" + (" (dry run)" if r.dry_run else "")
            cells = [name, _f(r.value), _f(r.baseline), _delta(r.metric, r.value, r.baseline)] if i == 0 else \
                ["", "", "", ""]
            out.append([*cells, _decided_on(r) or ("-" if i == 0 else ""), gate, str(r.verdict)])
    return out


SWEEP_HEADER = ["batch x concurrency", "p99 per sample, ms", "rows/s", "errors, %"]


def sweep_rows(sw: Sweep) -> list[list[str]]:
    """The performance table, one row per cell: candidate / baseline in each column."""
    def pair(cand: CellFigures, base: CellFigures | None, get: Callable[[CellFigures], float | None]) -> str:
        if sw.baseline is None:
            return _f(get(cand))
        return f"{_f(get(cand))} / {_f(get(base)) if base is not None else '-'}"

    def p99(f: CellFigures) -> float | None:
        return f.per_sample_ms().get("p99")

    out = []
    for cell, f in sw.candidate.items():
        b = sw.figures(cell, baseline=True)
        out.append([f"{cell.batch_size} x {cell.concurrency}" + (" *" if cell == sw.default else ""),
                    pair(f, b, p99), pair(f, b, lambda x: x.rows_per_s), pair(f, b, lambda x: x.error_rate_percent)])
    return out


def sweep_legend(sw: Sweep) -> str:
    who = "candidate / baseline" if sw.baseline is not None else "candidate"
    return (f"load sweep ({who}); per sample: a request's latency / its batch size; *: the default cell, run in "
            "interleaved windows, whose figures the gates naming no cell read")


def slo_lines(rep: Report) -> list[str]:
    """The throughput-at-SLO search of each variant: the figure, and the batch size and rate reaching it."""
    found = {v: d["sloSearch"] for v in ("candidate", "baseline")
             if isinstance(d := rep.details.get(v), Mapping) and d.get("sloSearch")}
    if not found:
        return []
    slo = next(iter(found.values()))["sloMs"]
    return [f"throughput at the {slo:g} ms p99 SLO (open loop): " + "; ".join(describe(v, d) for v, d in found.items())]


def source_lines(rep: Report) -> list[str]:
    """Where each variant's memory came from and, with several replicas, which pod the load went to."""
    parts = []
    for v in ("candidate", "baseline"):
        d = rep.details.get(v)
        if not isinstance(d, Mapping) or not d.get("memorySource"):
            continue
        pod = d.get("measuredPod") or {}
        of = f" of pod {pod['name']} ({pod['replicas']} replicas ready; the load went to it alone)" \
            if pod.get("name") else ""
        parts.append(f"{v} from {d['memorySource']}{of}")
    return ["memory and per-replica figures: " + "; ".join(parts)] if parts else []


def notes(rep: Report) -> list[str]:
    return [*slo_lines(rep), *source_lines(rep), *holdout_lines(rep)]


def holdout_lines(rep: Report) -> list[str]:
    """The fingerprint both variants were scored on, whole: a digest is for comparing, not reading."""
    h = rep.holdout
    if not h or not h.get("sha256"):
        return []
    used = f" ({h['rowsUsed']} used)" if h.get("rowsUsed") not in (None, h.get("rows")) else ""
    return [f"hold-out: {h.get('rows')} rows{used} x {h.get('columns')} columns, {h.get('bytes')} bytes, "
            f"sha256 {h['sha256']}, schema sha256 {h.get('schemaSha256')}"]


def _decided_on(r: GateResult) -> str | None:
    """The interval a confidence gate decided on, labelled: Δ for the paired candidate − baseline one."""
    if r.confidence is None or r.interval is None:
        return None
    paired = "Δ" if r.bound not in ("min", "max") else ""
    return f"{paired}[{_f(r.interval.low)}, {_f(r.interval.high)}] {r.confidence:.0%}"


HEADER = ["figure", "candidate", "baseline", "delta", "interval", "gate", "verdict"]
LEGEND = ("interval: the candidate's own, or the one a confidence gate decided on at its level "
          "(Δ[...]: paired, candidate − baseline); ▼: worse than the baseline")


def _columns(header: list[str], body: list[list[str]]) -> list[str]:
    table = [header, *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def tables(rep: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """The facet tables (a slice column each) and the drift table: (title, header, rows)."""
    out = groups.tables(rep.task, rep.candidate_quality, rep.baseline_quality, [g.metric for g in rep.gates])
    d = rep.details.get("drift")
    if d:
        shown = f", the {len(d['features'])} most drifted of {d['featuresTotal']}" if d["featuresTotal"] > len(
            d["features"]) else ""
        out.append((f"drift from the reference set (PSI threshold {d['psiThreshold']:g}{shown})", DRIFT_HEADER,
                    drift_rows(d)))
    return out


def to_text(rep: Report) -> str:
    lines = [*_columns(HEADER, rows(rep)), LEGEND, ""]
    sw = rep.evidence.sweep
    if sw is not None:
        lines += [*_columns(SWEEP_HEADER, sweep_rows(sw)), sweep_legend(sw), ""]
    for title, header, body in tables(rep):
        lines += [title, *_columns(header, body), ""]
    extra = notes(rep)
    lines += [*extra, ""] if extra else []
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
    sw = rep.evidence.sweep
    if sw is not None:
        out += ["", "| " + " | ".join(SWEEP_HEADER) + " |", "|" + "---|" * len(SWEEP_HEADER)]
        out += ["| " + " | ".join(r) + " |" for r in sweep_rows(sw)]
        out += ["", sweep_legend(sw)]
    for title, header, body in tables(rep):
        out += ["", f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    extra = notes(rep)
    out += ["", *extra] if extra else []
    failing = [g for g in rep.gates if not g.passed]
    if failing:
        out += ["", "**Gates not passed**", ""]
        out += [f"- `{g.name}` {g.bound} {g.threshold:g}: {g.message}" for g in failing]
    dq = rep.data_quality
    if dq:
        out += ["", f"Hold-out: {dq.get('rows')} rows, {dq.get('duplicateRows', 0)} duplicate rows."]
    return "\n".join(out) + "\n"
