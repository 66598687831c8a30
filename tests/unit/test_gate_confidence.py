"""Gates decide with their own stated confidence, absolute bounds too; undefined figures never pass.

The statistical claims are seeded simulations: hold-outs drawn from a known truth, scored and gated
by the same code the operator runs (score_quality -> build_report).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelrollout.core.engine import Predicted, build_report, score_quality
from modelrollout.core.figures import Task
from modelrollout.core.gates import Evidence, Verdict, evaluate
from modelrollout.core.quality import Interval
from modelrollout.core.report import to_json, to_text
from modelrollout.core.spec import Gate, QualitySettings

TASK: Task = "binary-classification"


def g(**kw: Any) -> Gate:
    return Gate.model_validate(kw)


def test_an_absolute_bound_with_confidence_decides_on_the_whole_interval() -> None:
    gate = g(metric="f1", min=0.85, confidence=0.95)
    for iv, verdict, words in [
        (Interval(0.86, 0.90, 0.95, 1000), Verdict.PASS, "is in [0.8600, 0.9000], which meets the minimum 0.8500"),
        (Interval(0.80, 0.84, 0.95, 1000), Verdict.FAIL, "which misses the minimum 0.8500"),
        (Interval(0.819, 0.92, 0.95, 1000), Verdict.INCONCLUSIVE, "which straddles the minimum 0.8500"),
    ]:
        r = evaluate([gate], Evidence({"f1": 0.8757}, intervals={"f1": iv}, samples={"f1": 300}))[0]
        assert (r.verdict, r.interval) == (verdict, iv) and words in r.message, r.message
    # the point estimate alone (0.8757) would have passed the straddling case: the interval does not
    assert "300 rows resolve ±0.0505 here, about 2013 would decide it" in r.message


def test_the_gates_own_confidence_is_the_intervals_level() -> None:
    rng = np.random.default_rng(0)
    dist = rng.normal(0.0, 0.01, 4000)  # the paired bootstrap distribution of the f1 change
    ev = Evidence({"f1": 0.9}, {"f1": 0.9}, delta_distributions={"f1": dist})
    lo95 = evaluate([g(metric="f1", maxDrop=0.02, confidence=0.95)], ev)[0]
    lo99 = evaluate([g(metric="f1", maxDrop=0.02, confidence=0.99)], ev)[0]
    assert lo95.interval is not None and lo99.interval is not None
    assert lo95.interval.level == 0.95 and lo99.interval.level == 0.99
    assert lo99.interval.low < lo95.interval.low  # wider at 99 %
    assert lo95.verdict is Verdict.PASS and "at 95% confidence" in lo95.message  # -0.0196 > -0.02
    assert lo99.verdict is Verdict.INCONCLUSIVE and "at 99% confidence" in lo99.message  # -0.026 < -0.02


def test_an_undefined_figure_is_inconclusive_and_says_why() -> None:
    y = np.array([0, 1, 1, 0, 1, 0] * 10)
    never_positive = Predicted(np.zeros_like(y))
    q = score_quality(TASK, y, never_positive, Predicted(y), QualitySettings(resamples=50))
    rep = build_report(TASK, [g(metric="precision", min=0.5), g(metric="recall", maxDrop=0.5)], q)
    assert rep.gates[0].verdict is Verdict.INCONCLUSIVE
    assert rep.gates[0].message == "the candidate's precision undefined: no positive predictions"
    assert rep.gates[1].verdict is Verdict.FAIL  # recall 0.0 is defined: it drops by 1.0
    assert not rep.decision.promote


def _simulate(rng: np.random.Generator, n: int, p_cand: float, p_base: float) -> tuple[np.ndarray, ...]:
    """A hold-out of n rows, with each variant right with its probability (independently)."""
    y = rng.integers(0, 2, n)
    cand = np.where(rng.random(n) < p_cand, y, 1 - y)
    base = np.where(rng.random(n) < p_base, y, 1 - y)
    return y, cand, base


def _pass_rate(gates: list[Gate], p_cand: float, p_base: float, runs: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    passed = np.zeros(len(gates))
    for i in range(runs):
        y, cand, base = _simulate(rng, 300, p_cand, p_base)
        q = score_quality(TASK, y, Predicted(cand), Predicted(base), QualitySettings(resamples=300, seed=i))
        rep = build_report(TASK, gates, q)
        passed += [r.verdict is Verdict.PASS for r in rep.gates]
    return list(passed / runs)


def test_false_promote_rate_of_absolute_confidence_gates_is_at_most_alpha() -> None:
    """A candidate exactly at the bound (true accuracy 0.80 against min 0.80): the point estimate passes it
    half the time, a 95 % gate at most 2.5 % (+ simulation error), and the gate's own confidence moves the
    rate as it should (80 % more often, 99 % less often)."""
    runs = 400
    point, c80, c95, c99 = _pass_rate([g(metric="accuracy", min=0.8), g(metric="accuracy", min=0.8, confidence=0.8),
                                       g(metric="accuracy", min=0.8, confidence=0.95),
                                       g(metric="accuracy", min=0.8, confidence=0.99)], 0.8, 0.8, runs, seed=1)
    err = 3 * np.sqrt(0.025 * 0.975 / runs)
    assert 0.4 <= point <= 0.6, point
    assert c95 <= 0.025 + err, c95
    assert c99 < c95 < c80 <= 0.10 + 3 * np.sqrt(0.1 * 0.9 / runs), (c80, c95, c99)


def test_false_promote_rate_of_a_relative_confidence_gate_is_at_most_alpha() -> None:
    """A candidate truly worse by the margin (accuracy 0.82 against 0.85, maxDrop 0.03)."""
    runs = 400
    point, c95 = _pass_rate([g(metric="accuracy", maxDrop=0.03), g(metric="accuracy", maxDrop=0.03, confidence=0.95)],
                            0.82, 0.85, runs, seed=2)
    assert 0.35 <= point <= 0.65, point
    assert c95 <= 0.025 + 3 * np.sqrt(0.025 * 0.975 / runs), c95


def test_the_table_shows_the_interval_each_gate_decided_on_and_what_the_hold_out_can_detect() -> None:
    rng = np.random.default_rng(3)
    y, cand, base = _simulate(rng, 300, 0.86, 0.85)
    q = score_quality(TASK, y, Predicted(cand), Predicted(base), QualitySettings(resamples=500))
    rep = build_report(TASK, [g(metric="accuracy", maxDrop=0.01, confidence=0.9),
                              g(metric="accuracy", min=0.5, confidence=0.99)], q)
    relative, absolute = rep.gates
    assert relative.interval is not None and absolute.interval is not None
    text = to_text(rep)
    assert f"Δ[{relative.interval.low:.4f}, {relative.interval.high:.4f}] 90%" in text
    assert f"[{absolute.interval.low:.4f}, {absolute.interval.high:.4f}] 99%" in text
    assert "Δ[...]: paired, candidate − baseline" in text
    js = to_json(rep)["gates"]
    half = (relative.interval.high - relative.interval.low) / 2
    assert js[0]["detectable"] == pytest.approx(half) and 0.01 < half < 0.06  # ~±0.03 at 300 rows
    assert js[0]["interval"]["level"] == 0.9 and js[1]["interval"]["level"] == 0.99


def test_the_json_report_has_null_and_the_reason_for_an_undefined_figure() -> None:
    y = np.array([0, 1] * 20)
    q = score_quality(TASK, y, Predicted(np.zeros_like(y)), None, QualitySettings(resamples=20))
    js = to_json(build_report(TASK, [g(metric="precision", min=0.5)], q))
    assert js["candidate"]["metrics"]["precision"] is None
    assert js["candidate"]["undefined"] == {"precision": "precision undefined: no positive predictions"}
    assert js["gates"][0]["verdict"] == "Inconclusive"
