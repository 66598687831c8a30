"""Canary analysis, pure: when gates are measured, what a measurement says, what a step says."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from modelrollout.core import canary as c
from modelrollout.core.canary import Sample, StepOutcome
from modelrollout.core.spec import PromQLGate, SpecError, parse_spec

AT = datetime(2026, 1, 1, tzinfo=UTC)


def gate(**kw: Any) -> PromQLGate:
    return PromQLGate(**{"name": "g", "query": 'x{namespace="a"}', "max": 1.0, **kw})


def m(verdict: str, index: int = 0, since: float = 0.0) -> dict[str, Any]:
    return {"index": index, "verdict": verdict, "since": since, "message": f"g: {verdict.lower()}"}


def test_a_scalar_a_vector_and_the_bad_series_second() -> None:
    one = c.judge(0, gate(), {"canary": Sample(((0.5, {}),))}, AT, 1)
    assert (one["verdict"], one["value"], one["threshold"]) == ("Pass", 0.5, 1.0)
    two = c.judge(0, gate(), {"canary": Sample(((0.5, {"pod": "a"}), (3.0, {"pod": "b"})))}, AT, 1)
    assert (two["verdict"], two["value"]) == ("Fail", 3.0)
    assert two["message"] == 'g: 1 of 2 series out of bounds; worst {pod="b"}: value 3 is above the maximum 1'
    inf = c.judge(0, gate(), {"canary": Sample(((float("inf"), {}),))}, AT, 1)
    assert (inf["verdict"], inf["value"]) == ("Fail", "+Inf")  # JSON has no infinity


def test_no_data_nan_matrix_and_errors() -> None:
    empty = {"canary": Sample()}
    assert c.judge(0, gate(), empty, AT, 1)["verdict"] == "Inconclusive"
    assert c.judge(0, gate(on_no_data="Fail"), empty, AT, 1)["verdict"] == "Fail"
    nan = {"canary": Sample(((float("nan"), {}),))}
    assert c.judge(0, gate(on_no_data="Fail"), nan, AT, 1)["verdict"] == "Fail"
    matrix = c.sample({"status": "success", "data": {"resultType": "matrix", "result": []}})
    assert c.judge(0, gate(on_no_data="Fail"), {"canary": matrix}, AT, 1)["verdict"] == "Inconclusive"
    assert c.sample({"status": "error", "errorType": "timeout", "error": "x"}).error
    assert c.sample("nonsense").error == "Prometheus answered malformed data (TypeError)"
    assert c.judge(0, gate(), {"canary": Sample(refused="not scoped")}, AT, 1)["verdict"] == "Fail"


def test_measurements_are_spread_over_the_pause_and_keep_their_spacing() -> None:
    g = [gate(count=3)]  # pause 60 s: due at 20, 40, 60
    assert c.due(g, 60, 19, []) == []
    assert c.due(g, 60, 20, []) == [0]
    assert c.due(g, 60, 39, [m("Pass", since=20)]) == []
    assert c.due(g, 60, 40, [m("Pass", since=20)]) == [0]
    # a late start (canary slow to be Available) does not bunch them up
    assert c.due(g, 60, 50, [m("Pass", since=45)]) == []
    assert c.due(g, 60, 99, [m("Pass"), m("Pass"), m("Pass")]) == []
    assert c.due([gate(count=2, interval=5)], 60, 5, []) == [0]
    assert c.duration([gate(count=4, interval=30)], 60) == 120


def test_limits_no_pass_on_no_evidence_and_dry_run() -> None:
    g = [gate(count=3, failure_limit=1, inconclusive_limit=1)]
    assert c.outcome(g, [m("Fail")])[0] is StepOutcome.RUNNING
    assert c.outcome(g, [m("Fail"), m("Fail")])[0] is StepOutcome.FAILED
    assert c.outcome(g, [m("Inconclusive"), m("Error")])[0] is StepOutcome.INCONCLUSIVE
    assert c.outcome(g, [m("Fail"), m("Inconclusive"), m("Pass")])[0] is StepOutcome.PASSED
    # every measurement errored: a failure, never a pass (Argo #4479)
    errs = [gate(count=2, inconclusive_limit=2)]
    out, why = c.outcome(errs, [m("Error"), m("Error")])
    assert out is StepOutcome.FAILED and "every measurement errored" in why
    # tolerated inconclusive results still need one pass
    assert c.outcome(errs, [m("Inconclusive"), m("Error")])[0] is StepOutcome.INCONCLUSIVE
    dry = [gate(dry_run=True), gate()]
    assert c.outcome(dry, [m("Fail", 0), m("Pass", 1)])[0] is StepOutcome.PASSED
    assert c.outcome([], [])[0] is StepOutcome.PASSED


def test_relative_gates_need_the_placeholder_and_only_they_use_it() -> None:
    rel = gate(query='sum(e{namespace="a",variant="{{variant}}"})', max=None, max_increase_percent=10)
    assert c.queries(rel) == {"canary": 'sum(e{namespace="a",variant="canary"})',
                              "production": 'sum(e{namespace="a",variant="production"})'}
    ok = c.judge(0, rel, {"canary": Sample(((1.05, {}),)), "production": Sample(((1.0, {}),))}, AT, 1)
    bad = c.judge(0, rel, {"canary": Sample(((1.2, {}),)), "production": Sample(((1.0, {}),))}, AT, 1)
    assert (ok["verdict"], bad["verdict"], bad["productionValue"]) == ("Pass", "Fail", 1.0)
    base = {"targetRef": {"name": "t"}, "task": "binary-classification", "serving": {"modelName": "m"},
            "holdout": {"configMapRef": {"name": "h", "key": "k"}, "labelColumn": "y"},
            "gates": [{"metric": "f1", "min": 0.5}]}
    for bad_gate, words in [({"query": "q{{variant}}", "max": 1}, "need {{variant}}"),
                            ({"query": "q", "maxIncrease": 1}, "need {{variant}}"),
                            ({"query": "q", "max": 1, "count": 2, "failureLimit": 2}, "failureLimit (2)"),
                            ({"query": "q", "max": 1, "count": 21}, "count")]:
        with pytest.raises(SpecError) as e:
            parse_spec({**base, "promotion": {"gates": [bad_gate]}})
        assert words in str(e.value) and "promotion.gates" in str(e.value), str(e.value)
    many = {"steps": [{"weight": w} for w in range(1, 21)]}
    with pytest.raises(SpecError, match="status records at most"):
        parse_spec({**base, "promotion": {"canary": many, "gates": [{"query": "q", "max": 1, "count": 20}] * 2}})


def test_measurements_become_series_and_leave_with_the_rollout() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from modelrollout.opmetrics import OperatorMetrics

    reg = CollectorRegistry()
    om = OperatorMetrics(reg)
    rel = {"gate": "p99", "value": 0.3, "productionValue": 0.2, "threshold": 10.0, "bound": "maxIncreasePercent",
           "verdict": "Fail"}
    om.canary("r", "ns", 2, [rel, {**rel, "verdict": "Pass"}, {**rel, "value": "+Inf", "verdict": "Fail"}])
    om.canary("other", "ns", 1, [rel])
    samples = series(generate_latest(reg).decode())
    where = {"rollout": "r", "namespace": "ns", "gate": "p99", "step": "2"}
    assert samples[series_key("modelrollout_canary_gate_value", **where, variant="canary")] == float("inf")
    assert samples[series_key("modelrollout_canary_gate_value", **where, variant="production")] == 0.2
    assert samples[series_key("modelrollout_canary_gate_threshold", **where, bound="maxIncreasePercent")] == 10.0
    assert samples[series_key("modelrollout_canary_gate_measurements", **where, verdict="Fail")] == 2.0
    om.forget("r", "ns")
    left = {dict(k[1]).get("rollout") for k in series(generate_latest(reg).decode()) if "canary" in k[0]}
    assert left == {"other"}


def series_key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def series(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Exposition text as {(name, labels): value}, whatever order the client writes labels in."""
    from prometheus_client.parser import text_string_to_metric_families

    return {series_key(s.name, **s.labels): s.value for f in text_string_to_metric_families(text) for s in f.samples}
