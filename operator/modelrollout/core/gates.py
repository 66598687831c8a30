"""Gate evaluation: each gate's value against its bound, with one plain sentence.

The engine takes a mapping of figures, not a fixed list, so figures from later probes
(latency, memory, replicas) are gated the same way as quality figures. A figure with no
value is Inconclusive, never a pass; the decision promotes only when every blocking gate
passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from modelrollout.core.figures import directional, higher_is_better
from modelrollout.core.quality import FloatArray, Interval, percentile_interval
from modelrollout.core.spec import Gate
from modelrollout.core.sweep import Cell, Sweep
from modelrollout.core.windows import WINDOWED, Windows


class Verdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class Evidence:
    """What the gates look at: figures of both variants, intervals, sample sizes."""

    candidate: Mapping[str, float]
    baseline: Mapping[str, float] | None = None
    intervals: Mapping[str, Interval] = field(default_factory=dict)
    delta_intervals: Mapping[str, Interval] = field(default_factory=dict)
    samples: Mapping[str, int] = field(default_factory=dict)
    # bootstrap distributions (the candidate's, and paired candidate - baseline), so each gate takes the
    # interval at its own confidence; without them only `intervals` at the report's level are known
    distributions: Mapping[str, FloatArray] = field(default_factory=dict)
    delta_distributions: Mapping[str, FloatArray] = field(default_factory=dict)
    undefined: Mapping[str, str] = field(default_factory=dict)  # figure -> why it has no value
    # system figures measured in load windows (the candidate's, and paired candidate - baseline)
    windows: Mapping[str, Windows] = field(default_factory=dict)
    delta_windows: Mapping[str, Windows] = field(default_factory=dict)
    sweep: Sweep | None = None  # every load cell of both variants, for gates that name a cell

    def interval(self, metric: str, level: float, paired: bool) -> Interval | None:
        dist = (self.delta_distributions if paired else self.distributions).get(metric)
        if dist is not None:
            return percentile_interval(np.asarray(dist), level)
        win = (self.delta_windows if paired else self.windows).get(metric)
        if win is not None:
            return win.interval(level)
        iv = (self.delta_intervals if paired else self.intervals).get(metric)
        return iv if iv is not None and math.isclose(iv.level, level) else None


@dataclass(frozen=True)
class GateResult:
    """One bound of one gate (a gate with min and max yields two)."""

    index: int  # position of the gate in spec.gates
    metric: str
    bound: str  # min | max | maxDrop | maxDropPercent | maxIncrease | maxIncreasePercent
    threshold: float
    verdict: Verdict
    message: str
    value: float | None = None
    baseline: float | None = None
    delta: float | None = None
    interval: Interval | None = None
    confidence: float | None = None
    samples: int | None = None
    dry_run: bool = False
    cell: Cell | None = None  # the load cell a gate named (its missing half the default cell's)

    @property
    def name(self) -> str:
        """The figure as messages name it: with its cell when the gate named one."""
        return self.metric if self.cell is None else f"{self.metric} at {self.cell}"

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    @property
    def blocking(self) -> bool:
        return not self.dry_run


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if float(v).is_integer() and abs(v) < 1e12:
        return str(int(v))
    return f"{v:.4g}" if abs(v) >= 1 else f"{v:.4f}"


def _value(fig: Mapping[str, float] | None, metric: str) -> float | None:
    if fig is None:
        return None
    v = fig.get(metric)
    if v is None or not math.isfinite(v):
        return None
    return float(v)


def _bounds(gate: Gate) -> list[tuple[str, float]]:
    pairs = [
        ("min", gate.min), ("max", gate.max), ("maxDrop", gate.max_drop),
        ("maxDropPercent", gate.max_drop_percent), ("maxIncrease", gate.max_increase),
        ("maxIncreasePercent", gate.max_increase_percent),
    ]
    return [(name, v) for name, v in pairs if v is not None]


def evaluate_gate(index: int, gate: Gate, ev: Evidence) -> list[GateResult]:
    return [_check(index, gate, bound, threshold, ev) for bound, threshold in _bounds(gate)]


def _cell(gate: Gate, ev: Evidence) -> Cell | None:
    """The sweep cell a gate names, its missing half the default cell's; None when it names none."""
    if not gate.names_cell or ev.sweep is None:
        return None
    d = ev.sweep.default
    return Cell(gate.batch_size or d.batch_size, gate.concurrency or d.concurrency)


def _figures(ev: Evidence, cell: Cell | None, baseline: bool) -> Mapping[str, float] | None:
    if cell is None:
        return ev.baseline if baseline else ev.candidate
    f = ev.sweep.figures(cell, baseline) if ev.sweep else None
    return None if f is None else f.figures()


def _check(index: int, gate: Gate, bound: str, threshold: float, ev: Evidence) -> GateResult:
    m, cell = gate.metric, _cell(gate, ev)
    value = _value(_figures(ev, cell, False), m)
    base = _value(_figures(ev, cell, True), m)
    # only the default cell runs in load windows: the figures a gate naming no cell reads, with intervals
    windowed = cell is None or (ev.sweep is not None and cell == ev.sweep.default)
    in_cell = ev.sweep.figures(cell) if ev.sweep and cell else None
    r = GateResult(
        index=index, metric=m, bound=bound, threshold=threshold, verdict=Verdict.INCONCLUSIVE,
        message="", value=value, baseline=base, delta=None if value is None or base is None else value - base,
        interval=ev.intervals.get(m) if windowed else None, confidence=gate.confidence,
        samples=in_cell.samples(m) if in_cell else ev.samples.get(m), dry_run=gate.dry_run, cell=cell,
    )
    name = r.name
    if gate.names_cell and ev.sweep is None:
        named = ", ".join(f"{k} {v}" for k, v in (("batch", gate.batch_size), ("concurrency", gate.concurrency)) if v)
        return replace(r, message=f"{m} at {named} has no value: no load sweep was measured")
    if cell is not None and in_cell is None:
        return replace(r, message=f"{name} has no value: that cell is not in the load sweep "
                       f"({ev.sweep.describe() if ev.sweep else ''})")
    if value is None:
        why = ev.undefined.get(m) if cell is None else None
        return replace(r, message=why or f"{name} has no value (no data, or every measurement failed)")
    if gate.confidence is not None and not windowed:
        return replace(r, message=f"{name} has no {gate.confidence:.0%} interval: it is measured once per variant, "
                       f"only the default cell ({ev.sweep.default if ev.sweep else '?'}) in load windows")
    if bound in ("min", "max") and gate.confidence is not None:
        return _absolute(r, gate.confidence, ev)
    # "latency_p99_ms 130 is above ...", or with a cell "latency_p99_ms at batch 8, concurrency 4 is 130, above ..."
    said = f"{name} {_fmt(value)}" if cell is None else f"{name} is {_fmt(value)},"
    if bound == "min":
        ok = value >= threshold
        word = ("meets" if ok else "is below") if cell is None else ("meeting" if ok else "below")
        return _verdict(r, ok, f"{said} {word} the minimum {_fmt(threshold)}")
    if bound == "max":
        ok = value <= threshold
        word = ("is within" if ok else "is above") if cell is None else ("within" if ok else "above")
        return _verdict(r, ok, f"{said} {word} the maximum {_fmt(threshold)}")
    return _relative(r, gate, value, base, ev)


def _absolute(r: GateResult, confidence: float, ev: Evidence) -> GateResult:
    """A bound with confidence: Pass when the candidate's whole interval is inside it, Fail when wholly
    outside, Inconclusive when it straddles the bound."""
    m, name, low_bound = r.metric, r.name, r.bound == "min"
    iv = ev.interval(m, confidence, paired=False)
    if iv is None:
        return replace(r, message=f"{name} has no {confidence:.0%} interval ({_why_none(ev, m)})")
    r = replace(r, interval=iv)
    level, span = f"at {confidence:.0%} confidence", f"[{_fmt(iv.low)}, {_fmt(iv.high)}]"
    # strictly inside: an interval edge on the bound is the null's edge too (discrete figures land there)
    inside, outside = (iv.low > r.threshold, iv.high < r.threshold) if low_bound else \
        (iv.high < r.threshold, iv.low > r.threshold)
    bound = f"the {'minimum' if low_bound else 'maximum'} {_fmt(r.threshold)}"
    if inside:
        return _verdict(r, True, f"{level} {name} is in {span}, which meets {bound}")
    if outside:
        return _verdict(r, False, f"{level} {name} is in {span}, which misses {bound}")
    return replace(r, message=f"{level} {name} is in {span}, which straddles {bound}: not enough evidence either "
                   f"way{_rows_hint(ev, m, iv, abs((iv.low + iv.high) / 2 - r.threshold))}")


def _verdict(r: GateResult, ok: bool, message: str) -> GateResult:
    return replace(r, verdict=Verdict.PASS if ok else Verdict.FAIL, message=message)


def _relative(r: GateResult, gate: Gate, value: float, base: float | None, ev: Evidence) -> GateResult:
    m, name, bound, threshold = r.metric, r.name, r.bound, r.threshold
    if base is None:
        why = ev.undefined.get(m) if r.cell is None else None
        return replace(r, message=why or f"{name} has no baseline value to compare with")
    drop = bound.startswith("maxDrop")
    percent = bound.endswith("Percent")
    change = (base - value) if drop else (value - base)  # the change in the direction this bound limits
    scale = abs(base) / 100 if percent else 1.0
    if scale == 0:
        return replace(r, message=f"{name} baseline is 0, so a percent change is undefined")
    allowed = threshold * scale
    unit = "%" if percent else ""
    word = "drop" if drop else "increase"
    limit = f"at most {_fmt(threshold)}{unit} allowed"
    if gate.confidence is None:
        return _verdict(r, change <= allowed, f"{name} {word}s by {_fmt(change / scale)}{unit} against the "
                        f"baseline ({_fmt(base)} → {_fmt(value)}); {limit}")
    iv = ev.interval(m, gate.confidence, paired=True)
    if iv is None:
        return replace(r, message=f"{name} has no paired {gate.confidence:.0%} interval against the baseline "
                       f"({_why_none(ev, m)})")
    r = replace(r, interval=iv)
    # worst and best plausible change in the limited direction, from the paired interval
    worst = -iv.low if drop else iv.high
    best = -iv.high if drop else iv.low
    level = f"at {gate.confidence:.0%} confidence"
    span = f"(candidate − baseline in [{_fmt(iv.low)}, {_fmt(iv.high)}])"
    if worst < allowed:
        return _verdict(r, True, f"{level} {name} {word}s by at most {_fmt(worst / scale)}{unit} {span}; {limit}")
    if best > allowed:
        return _verdict(r, False, f"{level} {name} {word}s by at least {_fmt(best / scale)}{unit} {span}; {limit}")
    return replace(r, message=f"{level} {name} may {word} by more than {_fmt(threshold)}{unit} {span}: "
                   f"not enough evidence either way{_rows_hint(ev, m, iv, abs((worst + best) / 2 - allowed))}")


def detectable(iv: Interval) -> float:
    """The smallest change this interval can tell from none: its half-width (the bootstrap spread)."""
    return (iv.high - iv.low) / 2


def _why_none(ev: Evidence, metric: str) -> str:
    if metric in ev.windows or metric in ev.delta_windows:
        return "fewer than two load windows measured it"
    if metric in WINDOWED:
        return "it was not measured in load windows: load.windows is 0, or the memory source is too coarse"
    return "quality.resamples is 0, or the figure is undefined in every resample"


def _rows_hint(ev: Evidence, metric: str, iv: Interval, distance: float) -> str:
    """About how much evidence would decide: the half-width shrinks as 1/sqrt(rows) (or seconds of load),
    and a decision needs it below `distance`, how far the interval's centre is from the bound."""
    half = detectable(iv)
    win = ev.windows.get(metric) or ev.delta_windows.get(metric)
    n = win.seconds if win is not None else ev.samples.get(metric)
    if not n or half <= 0 or distance <= 0 or distance >= half:
        return ""
    more = n * (half / distance) ** 2
    if win is not None and metric == "throughput_at_slo_rps":
        k = len(win.values)
        return (f"; {k} searches per variant resolve ±{_fmt(half)} here, about {math.ceil(k * (half / distance) ** 2)}"
                " (load.sloSearch.searches) would decide it")
    if win is not None:
        return (f"; {_fmt(n)}s of load per variant resolve ±{_fmt(half)} here, about {math.ceil(more)}s "
                "(load.duration) would decide it")
    return f"; {n} rows resolve ±{_fmt(half)} here, about {math.ceil(more)} would decide it"


def evaluate(gates: Sequence[Gate], ev: Evidence) -> list[GateResult]:
    return [r for i, g in enumerate(gates) for r in evaluate_gate(i, g, ev)]


class Outcome(StrEnum):
    PROMOTE = "Promote"
    REJECT = "Reject"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    failed: tuple[GateResult, ...] = ()
    inconclusive: tuple[GateResult, ...] = ()

    @property
    def promote(self) -> bool:
        return self.outcome is Outcome.PROMOTE


def decide(results: Iterable[GateResult]) -> Decision:
    """Promote only when every blocking gate passed; a dry-run gate is reported, never blocks."""
    rs = list(results)
    blocking = [r for r in rs if r.blocking]
    failed = tuple(r for r in blocking if r.verdict is Verdict.FAIL)
    inconclusive = tuple(r for r in blocking if r.verdict is Verdict.INCONCLUSIVE)
    if not blocking:
        return Decision(Outcome.REJECT, "no blocking gate was evaluated")
    if failed or inconclusive:
        parts = [f"gate {r.index} failed: {r.message}" for r in failed]
        parts += [f"gate {r.index} inconclusive: {r.message}" for r in inconclusive]
        return Decision(Outcome.REJECT, "; ".join(parts), failed, inconclusive)
    return Decision(Outcome.PROMOTE, f"all {len(blocking)} blocking gate checks passed")


def worse(metric: str, delta: float) -> bool:
    """Whether a candidate-minus-baseline change is for the worse, for display."""
    if not directional(metric):
        return False
    return delta < 0 if higher_is_better(metric) else delta > 0
