"""Canary analysis: when each live gate is measured, what one measurement says, what a step says.

Pure: the provider (Prometheus) hands over its decoded answer; bounds are judged by the same
`core/gates.py` as the evaluation gates. Rules, in the order they apply to a step:
- a measurement is Pass, Fail, Inconclusive (no data under `onNoData: Inconclusive`, NaN, a
  matrix, a relative gate with several series) or Error (the provider failed to answer);
- a gate fails its step at its `failureLimit + 1`-th Fail, and is inconclusive at its
  `inconclusiveLimit + 1`-th Inconclusive or Error; both roll back (inconclusive never passes);
- a gate whose measurements all errored fails (never a pass on no evidence, unlike Argo #4479);
- a gate passes only with all `count` measurements taken and at least one Pass;
- a dry-run gate is measured and recorded, and never decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from modelrollout.core.gates import Evidence, GateResult, Verdict, evaluate_gate
from modelrollout.core.spec import Gate, PromQLGate
from modelrollout.core.text import cap

ERROR = "Error"  # a measurement verdict beside gates.Verdict: the provider did not answer
MAX_MESSAGE = 200
MAX_LABELS = 120
PLACEHOLDER = "{{variant}}"


class StepOutcome(StrEnum):
    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class Sample:
    """One query's answer reduced to what gates judge: its series, or why there is none."""

    values: tuple[tuple[float, Mapping[str, str]], ...] = ()
    problem: str | None = None  # why the answer cannot be judged (Inconclusive)
    error: str | None = None  # why there is no answer (Error)
    refused: str | None = None  # why the query may never run (Fail: no retry can pass it)

    @property
    def empty(self) -> bool:
        return self.problem is None and self.error is None and self.refused is None and not self.values


def label(index: int, gate: PromQLGate) -> str:
    return gate.name or f"promotion.gates[{index}]"


def queries(gate: PromQLGate) -> dict[str, str]:
    """The queries one measurement runs: the canary's, and production's for a relative gate."""
    if not gate.relative:
        return {"canary": gate.query}
    return {v: gate.query.replace(PLACEHOLDER, v) for v in ("canary", "production")}


def sample(answer: Any) -> Sample:
    """A decoded Prometheus /api/v1/query answer as a Sample; never raises."""
    try:
        if not isinstance(answer, dict):
            raise TypeError
        if answer.get("status") != "success":
            kind, error = answer.get("errorType", "unknown"), answer.get("error", "")
            return Sample(error=cap(f"Prometheus refused the query ({kind}: {error})", MAX_MESSAGE))
        kind, result = answer["data"]["resultType"], answer["data"]["result"]
        if kind == "scalar":
            return Sample(((float(result[1]), {}),))
        if kind in ("matrix", "string"):
            return Sample(problem=f"the query must return an instant vector or a scalar, got {kind}")
        if kind != "vector" or not isinstance(result, list):
            raise TypeError
        return Sample(tuple((float(s["value"][1]), dict(s.get("metric") or {})) for s in result))
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        return Sample(error=f"Prometheus answered malformed data ({type(e).__name__})")


def judge(index: int, gate: PromQLGate, samples: Mapping[str, Sample], at: datetime,
          since: float) -> dict[str, Any]:
    """One measurement of one gate, `since` seconds into its step, as status records it
    (JSON has no infinity: a non-finite figure is written as Prometheus writes it, "+Inf")."""
    m = _judge(index, gate, samples, at, since)
    for k in ("value", "productionValue", "threshold"):
        v = m.get(k)
        if isinstance(v, float) and not math.isfinite(v):
            m[k] = "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
    return m


def _judge(index: int, gate: PromQLGate, samples: Mapping[str, Sample], at: datetime,
           since: float) -> dict[str, Any]:
    name = label(index, gate)
    m: dict[str, Any] = {"gate": name, "index": index, "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "since": round(since, 1), "dryRun": gate.dry_run, "value": None}
    if gate.relative:
        m["productionValue"] = None
    for s in samples.values():
        if s.refused is not None:
            return {**m, "verdict": str(Verdict.FAIL), "message": cap(f"{name}: {s.refused}", MAX_MESSAGE)}
    for s in samples.values():
        if s.error is not None:
            return {**m, "verdict": ERROR, "message": cap(f"{name}: {s.error}", MAX_MESSAGE)}
    for s in samples.values():
        if s.problem is not None:
            return {**m, "verdict": str(Verdict.INCONCLUSIVE), "message": cap(f"{name}: {s.problem}", MAX_MESSAGE)}
    if any(s.empty or any(math.isnan(v) for v, _ in s.values) for s in samples.values()):
        verdict = Verdict.FAIL if gate.on_no_data == "Fail" else Verdict.INCONCLUSIVE
        return {**m, "verdict": str(verdict), "message": f"{name}: no data (an empty result or NaN)"}
    if gate.relative:
        return _relative(m, index, gate, samples)
    return _absolute(m, index, gate, samples["canary"])


def _gate(gate: PromQLGate) -> Gate:
    """The live gate as an evaluation gate, so core/gates.py judges both alike."""
    return Gate.model_construct(metric="value", min=gate.min, max=gate.max, max_drop=None, max_drop_percent=None,
                                max_increase=gate.max_increase, max_increase_percent=gate.max_increase_percent,
                                confidence=None, dry_run=gate.dry_run)


def _absolute(m: dict[str, Any], index: int, gate: PromQLGate, s: Sample) -> dict[str, Any]:
    """Every series is checked; the worst one is recorded (and its labels when several series)."""
    g = _gate(gate)
    judged = []
    for v, labels in s.values:
        if math.isinf(v):  # core/gates treats a non-finite figure as missing; a live ratio of x/0 is a number
            bound, t = ("max", gate.max) if v > 0 else ("min", gate.min)
            broken = t is not None
            r = GateResult(index, g.metric, bound, t if t is not None else 0.0,
                           Verdict.FAIL if broken else Verdict.PASS,
                           f"value {v} is {'above the maximum' if v > 0 else 'below the minimum'} {t:g}" if broken
                           else f"value {v} is within its bound", value=v)
            judged.append((math.inf if broken else -1.0, v, labels, r))
            continue
        results = evaluate_gate(index, g, Evidence({g.metric: v}))
        failed = [r for r in results if r.verdict is Verdict.FAIL]
        excess = max((abs(v - r.threshold) for r in failed), default=-1.0)
        judged.append((excess, v, labels, failed[0] if failed else results[0]))
    excess, v, labels, r = max(judged, key=lambda j: j[0])
    out = {**m, "value": v, "threshold": r.threshold, "bound": r.bound, "verdict": str(r.verdict)}
    msg = r.message
    if len(s.values) > 1:
        bad = sum(1 for j in judged if j[0] >= 0)
        where = ", ".join(f'{k}="{val}"' for k, val in sorted(labels.items()))
        msg = f"{bad} of {len(s.values)} series out of bounds; worst {{{cap(where, MAX_LABELS)}}}: {msg}" \
            if bad else f"all {len(s.values)} series within bounds; {msg}"
    return {**out, "message": cap(f"{m['gate']}: {msg}", MAX_MESSAGE)}


def _relative(m: dict[str, Any], index: int, gate: PromQLGate, samples: Mapping[str, Sample]) -> dict[str, Any]:
    """The canary's figure against production's, by the gate's maxIncrease(Percent) and min/max."""
    if any(len(s.values) != 1 for s in samples.values()):
        counts = {k: len(s.values) for k, s in samples.items()}
        return {**m, "verdict": str(Verdict.INCONCLUSIVE),
                "message": f"{m['gate']}: a relative gate's query must give one series per variant "
                           f"(aggregate it with sum or avg), got {counts}"}
    value, prod = samples["canary"].values[0][0], samples["production"].values[0][0]
    if prod == 0 and gate.max_increase_percent is not None:  # a percent of 0 is undefined: any rise is too much
        ok = value <= 0
        said = "is not above it" if ok else f"is {value:.4g}: an unbounded percent increase"
        return {**m, "value": value, "productionValue": prod, "threshold": gate.max_increase_percent,
                "bound": "maxIncreasePercent", "verdict": str(Verdict.PASS if ok else Verdict.FAIL),
                "message": f"{m['gate']}: production is 0 and the canary {said}"}
    g = _gate(gate)
    results = evaluate_gate(index, g, Evidence({g.metric: value}, {g.metric: prod}))
    r = next((r for r in results if r.verdict is not Verdict.PASS), results[0])
    msg = r.message.replace("the baseline", "production").replace("baseline", "production")
    return {**m, "value": value, "productionValue": prod, "threshold": r.threshold, "bound": r.bound,
            "verdict": str(r.verdict), "message": cap(f"{m['gate']}: {msg}", MAX_MESSAGE)}


def due(gates: Sequence[PromQLGate], pause: float, since: float, taken: Sequence[Mapping[str, Any]]) -> list[int]:
    """The gates with a measurement due `since` seconds into the step (at most one each).

    Measurement k of a gate is due `(k + 1) * interval` into the step (interval defaults to
    pause / count, so by default the last one comes as the pause ends), and never sooner than one
    interval after the gate's previous measurement, so a late start keeps the spacing.
    """
    out = []
    for i, g in enumerate(gates):
        mine = [t for t in taken if t.get("index") == i]
        if len(mine) >= g.count:
            continue
        every = interval(g, pause)
        if since >= (len(mine) + 1) * every and (not mine or since >= float(mine[-1].get("since", 0)) + every):
            out.append(i)
    return out


def interval(g: PromQLGate, pause: float) -> float:
    return g.interval if g.interval is not None else pause / g.count


def duration(gates: Sequence[PromQLGate], pause: float) -> float:
    """How long a step lasts when nothing goes wrong: its pause, or its gates' measurements if longer."""
    return max([pause, *(g.count * interval(g, pause) for g in gates)])


def outcome(gates: Sequence[PromQLGate], taken: Sequence[Mapping[str, Any]]) -> tuple[StepOutcome, str]:
    """The step's outcome from its measurements so far, with a sentence naming the deciding gate."""
    failed, inconclusive, running = [], [], False
    for i, g in enumerate(gates):
        if g.dry_run:
            continue
        mine = [t for t in taken if t.get("index") == i]
        verdicts = [t.get("verdict") for t in mine]
        fails = verdicts.count(str(Verdict.FAIL))
        unsure = sum(1 for v in verdicts if v in (str(Verdict.INCONCLUSIVE), ERROR))
        last = next((t for t in reversed(mine) if t.get("verdict") != str(Verdict.PASS)), None)
        why = str(last.get("message", "")) if last else ""
        if fails > g.failure_limit:
            failed.append(f"{fails} failed measurement(s), at most {g.failure_limit} allowed: {why}")
        elif len(mine) >= g.count and verdicts and all(v == ERROR for v in verdicts):
            failed.append(f"every measurement errored: {why}")
        elif unsure > g.inconclusive_limit:
            inconclusive.append(f"{unsure} inconclusive measurement(s), at most {g.inconclusive_limit} "
                                f"allowed: {why}")
        elif len(mine) < g.count:
            running = True
        elif str(Verdict.PASS) not in verdicts:
            inconclusive.append(f"no measurement passed: {why}")
    if failed:
        return StepOutcome.FAILED, "; ".join(failed)
    if inconclusive:
        return StepOutcome.INCONCLUSIVE, "; ".join(inconclusive)
    if running:
        return StepOutcome.RUNNING, "measuring"
    blocking = sum(1 for g in gates if not g.dry_run)
    return StepOutcome.PASSED, f"all {blocking} live gate(s) passed" if blocking else "no live gates"
