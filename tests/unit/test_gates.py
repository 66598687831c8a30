"""Gate verdicts: Pass, Fail or Inconclusive, with the value, threshold and a plain sentence."""

from __future__ import annotations

import math
from typing import Any

from modelrollout.core.gates import Evidence, Outcome, Verdict, decide, evaluate
from modelrollout.core.quality import Interval
from modelrollout.core.spec import Gate


def g(**kw: Any) -> Gate:
    return Gate.model_validate(kw)


def test_absolute_bounds() -> None:
    ev = Evidence({"f1": 0.87, "latency_p99_ms": 130.0})
    rs = evaluate([g(metric="f1", min=0.85), g(metric="latency_p99_ms", max=120)], ev)
    assert [r.verdict for r in rs] == [Verdict.PASS, Verdict.FAIL]
    assert rs[1].message == "latency_p99_ms 130 is above the maximum 120"
    assert rs[1].value == 130.0 and rs[1].threshold == 120


def test_min_and_max_give_two_checks() -> None:
    rs = evaluate([g(metric="f1", min=0.5, max=0.9)], Evidence({"f1": 0.95}))
    assert [(r.bound, r.verdict) for r in rs] == [("min", Verdict.PASS), ("max", Verdict.FAIL)]


def test_missing_or_nan_figure_is_inconclusive_never_pass() -> None:
    for ev in (Evidence({}), Evidence({"roc_auc": math.nan})):
        r = evaluate([g(metric="roc_auc", min=0.5)], ev)[0]
        assert r.verdict is Verdict.INCONCLUSIVE
        assert "no value" in r.message
    d = decide(evaluate([g(metric="roc_auc", min=0.5)], Evidence({})))
    assert d.outcome is Outcome.REJECT and "inconclusive" in d.reason


def test_relative_drop_absolute_and_percent() -> None:
    ev = Evidence({"f1": 0.86}, {"f1": 0.88})
    rs = evaluate([g(metric="f1", maxDrop=0.01), g(metric="f1", maxDropPercent=5)], ev)
    assert [r.verdict for r in rs] == [Verdict.FAIL, Verdict.PASS]
    assert "drops by 0.0200 against the baseline (0.8800 → 0.8600); at most 0.0100 allowed" in rs[0].message
    delta = rs[0].delta
    assert delta is not None and abs(delta + 0.02) < 1e-12


def test_relative_increase_on_lower_is_better_metric() -> None:
    ev = Evidence({"latency_p99_ms": 110.0}, {"latency_p99_ms": 100.0})
    rs = evaluate([g(metric="latency_p99_ms", maxIncreasePercent=5)], ev)
    assert rs[0].verdict is Verdict.FAIL and "10%" in rs[0].message


def test_relative_without_baseline_value_is_inconclusive() -> None:
    r = evaluate([g(metric="f1", maxDrop=0.01)], Evidence({"f1": 0.9}, {}))[0]
    assert r.verdict is Verdict.INCONCLUSIVE


def test_confidence_gate_uses_the_paired_interval() -> None:
    gate = g(metric="f1", maxDrop=0.01, confidence=0.95)
    cases = {
        Verdict.PASS: Interval(-0.005, 0.02, 0.95, 1000),  # worst drop 0.005 <= 0.01
        Verdict.FAIL: Interval(-0.05, -0.02, 0.95, 1000),  # drops at least 0.02
        Verdict.INCONCLUSIVE: Interval(-0.03, 0.01, 0.95, 1000),
    }
    for verdict, iv in cases.items():
        ev = Evidence({"f1": 0.9}, {"f1": 0.9}, delta_intervals={"f1": iv})
        r = evaluate([gate], ev)[0]
        assert r.verdict is verdict, (verdict, r.message)
        assert r.interval == iv and "95% confidence" in r.message


def test_dry_run_gate_is_reported_but_never_blocks() -> None:
    rs = evaluate([g(metric="f1", min=0.9), g(metric="f1", min=0.99, dryRun=True)], Evidence({"f1": 0.95}))
    assert rs[1].verdict is Verdict.FAIL and rs[1].dry_run
    assert decide(rs).outcome is Outcome.PROMOTE


def test_decision_requires_every_blocking_gate() -> None:
    rs = evaluate([g(metric="f1", min=0.9), g(metric="recall", min=0.9)], Evidence({"f1": 0.95, "recall": 0.5}))
    d = decide(rs)
    assert d.outcome is Outcome.REJECT
    assert d.reason == "gate 1 failed: recall 0.5000 is below the minimum 0.9000"
    assert decide([]).outcome is Outcome.REJECT


def test_gates_accept_any_figure_from_the_mapping() -> None:
    rs = evaluate([g(metric="replicas_fit", min=6)], Evidence({"replicas_fit": 6.0}, samples={"replicas_fit": 3}))
    assert rs[0].verdict is Verdict.PASS and rs[0].samples == 3
