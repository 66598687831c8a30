"""The manifest parser reports every problem at once, each with its field path and value."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelrollout.core.spec import SpecError, parse_gates_file, parse_manifest, parse_spec
from modelrollout.core.units import parse_duration, parse_size

EXAMPLE = Path(__file__).parents[2] / "examples" / "rollout.yaml"


def manifest() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_manifest(doc)
    return [str(p) for p in e.value.problems]


def test_example_parses_with_units_converted() -> None:
    meta, spec = parse_manifest(manifest())
    assert meta["name"] == "churn-v8"
    assert spec.staging.ready_timeout == 300.0
    assert spec.load.batch_sizes == [1, 8, 32]
    assert spec.promotion.canary.steps[0].pause == 300.0
    assert [g.metric for g in spec.gates][:2] == ["f1", "f1"]


@pytest.mark.parametrize(("path", "value", "expected"), [
    (["spec", "task"], "ranking", "spec.task: 'ranking' is not one of"),
    (["spec", "gates", 0, "metric"], "r2",
     "spec.gates[0].metric: 'r2' is not defined for task 'binary-classification'"),
    (["spec", "gates", 0, "metric"], "wellness", "spec.gates[0].metric: 'wellness' is not defined"),
    (["spec", "gates", 0, "max"], 0.5, "spec.gates[0]: min (0.85) is greater than max (0.5)"),
    (["spec", "load", "duration"], "-5m", "spec.load.duration: '-5m' must be a positive duration"),
    (["spec", "load", "duration"], "0s", "spec.load.duration: '0s' must be a positive duration"),
    (["spec", "staging", "readyTimeout"], "5 fortnights",
     "spec.staging.readyTimeout: '5 fortnights' is not a duration"),
    (["spec", "serving", "maxResponseSize"], "12Zi", "spec.serving.maxResponseSize: '12Zi' is not a size"),
    (["spec", "load", "concurrency"], "many", "spec.load.concurrency:"),
    (["spec", "gates"], [], "spec.gates:"),
    (["spec", "colour"], "blue", "spec.colour: unknown field (value: 'blue')"),
    (["spec", "holdout", "url"], {"url": "https://x/h.csv"},
     "spec.holdout: exactly one of configMapRef, url, pvc, s3 or file"),
    (["spec", "targetRef", "name"], "Churn_Model",
     "spec.targetRef.name: 'Churn_Model' is not a valid Kubernetes name"),
    (["spec", "promotion", "canary", "steps", 1, "weight"], 5,
     "spec.promotion.canary.steps: weights must strictly increase"),
])
def test_each_problem_names_field_and_value(path: list[Any], value: Any, expected: str) -> None:
    doc = manifest()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found


def test_no_holdout_source_is_an_error() -> None:
    doc = manifest()
    del doc["spec"]["holdout"]["configMapRef"]
    assert any("got none" in p for p in problems(doc))


def test_every_problem_is_reported_at_once() -> None:
    doc = manifest()
    doc["spec"]["task"] = "regression"  # f1 gates are now wrong too
    doc["spec"]["load"]["duration"] = "-1s"
    doc["spec"]["bogus"] = True
    found = problems(doc)
    assert len(found) >= 4
    assert any(p.startswith("spec.gates[0].metric: 'f1' is not defined for task 'regression'") for p in found)
    assert any(p.startswith("spec.bogus") for p in found)
    assert any(p.startswith("spec.load.duration") for p in found)


def test_relative_gate_needs_a_baseline() -> None:
    doc = manifest()["spec"]
    with pytest.raises(SpecError) as e:
        parse_spec(doc, has_baseline=False)
    assert "spec.gates[1]: 'f1' has a relative bound but no baseline was given" in str(e.value)


def test_confidence_needs_a_figure_with_an_interval() -> None:
    doc = manifest()
    doc["spec"]["gates"][0]["confidence"] = 0.95  # a quality min: decided on the interval, accepted
    parse_manifest(doc)
    doc["spec"]["gates"] += [  # windowed system figures and slice gaps have intervals too
        {"metric": "latency_p99_ms", "maxIncreasePercent": 1000, "confidence": 0.95},
        {"metric": "memory_peak_mib", "max": 900, "confidence": 0.9},
        {"metric": "f1_slice_gap", "max": 0.2, "confidence": 0.9}]
    parse_manifest(doc)
    doc["spec"]["gates"].append({"metric": "latency_max_ms", "max": 50, "confidence": 0.95})
    assert any("'latency_max_ms' has none" in p and "remove confidence" in p for p in problems(doc)), problems(doc)


def test_gates_file_takes_task_from_command_line() -> None:
    gf = parse_gates_file({"gates": [{"metric": "rmse", "max": 3}]}, task="regression", has_baseline=False)
    assert gf.gates[0].max == 3
    with pytest.raises(SpecError, match=r"gates\[0\]\.metric: 'rmse' is not defined"):
        parse_gates_file({"gates": [{"metric": "rmse", "max": 3}]}, task="binary-classification",
                         has_baseline=False)


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("90s", 90), ("1h30m", 5400), ("250ms", 0.25), (7, 7)])
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("512Mi", 512 * 2**20), ("1G", 1e9), ("2Ki", 2048), ("100", 100)])
def test_sizes(text: str, size: float) -> None:
    assert parse_size(text) == size
