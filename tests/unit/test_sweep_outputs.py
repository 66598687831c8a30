"""The load sweep beyond the CLI: bounded in status (declared by the CRD), per cell in Prometheus,
in `kubectl modelrollout status`, and on the Grafana dashboard."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from modelrollout.cli.kubectl import cmd_status
from modelrollout.core.gates import Decision, Evidence, Outcome
from modelrollout.core.report import STATUS_CELLS, Report, sweep_from_status, sweep_rows, sweep_status
from modelrollout.core.slo import Probe, Search, SloResult, status_form
from modelrollout.core.sweep import Cell, CellFigures, Sweep
from modelrollout.exporter import SWEEP_FIGURES, FigureExporter
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.status import StatusWriter
from tests.unit.fake_kube import CRD, FakeKube

ROOT = Path(__file__).parents[2]


def cell(b: int, c: int, p99_ms: float, requests: int = 1000, errors: int = 0, seconds: float = 10.0) -> CellFigures:
    return CellFigures(Cell(b, c), requests, errors, seconds, {"p50": p99_ms / 2, "p99": p99_ms})


def sweep(baseline: bool = True) -> Sweep:
    cand = [cell(1, 4, 10.0), cell(1, 16, 30.0), cell(16, 4, 48.0, errors=10), cell(16, 16, 160.0, requests=500)]
    base = [cell(1, 4, 9.0), cell(1, 16, 25.0), cell(16, 4, 40.0), cell(16, 16, 100.0, requests=800)]
    return Sweep({f.cell: f for f in cand}, {f.cell: f for f in base} if baseline else None)


def big() -> Sweep:
    """The spec's largest sweep: 16 batch sizes x 17 concurrencies, figures with many digits."""
    cells = [cell(2**b, c, 1000 / 3 * (b + 1) + c / 7, requests=12345 + c, errors=c, seconds=20.000123)
             for b in range(16) for c in range(1, 18)]
    return Sweep({f.cell: f for f in cells}, {f.cell: f for f in cells})


def status_schema() -> dict[str, Any]:
    root = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root["properties"]["status"]["properties"]["sweep"]  # type: ignore[no-any-return]


def conforms(value: Any, schema: dict[str, Any], path: str = "sweep") -> list[str]:
    """What the API server would prune or refuse: undeclared fields, wrong types, too many items."""
    kind = schema.get("type")
    if kind == "object" and "additionalProperties" in schema:  # a map: any key, bounded, values of one schema
        out = [f"{path} has {len(value)} keys"] if len(value) > schema.get("maxProperties", 1e9) else []
        return out + [p for k, v in value.items() for p in conforms(v, schema["additionalProperties"], f"{path}.{k}")]
    if kind == "object":
        props = schema.get("properties", {})
        out = [f"{path}.{k} is not declared" for k in value if k not in props]
        return out + [p for k, v in value.items() if k in props for p in conforms(v, props[k], f"{path}.{k}")]
    if kind == "array":
        out = [f"{path} has {len(value)} items > {schema['maxItems']}"] if len(value) > schema.get("maxItems", 1e9) \
            else []
        return out + [p for i, v in enumerate(value) for p in conforms(v, schema["items"], f"{path}[{i}]")]
    ok = {"integer": isinstance(value, int), "number": isinstance(value, int | float),
          "string": isinstance(value, str)}.get(str(kind), False)
    return [] if ok and not isinstance(value, bool) else [f"{path}: {value!r} is not {kind}"]


# --- status -------------------------------------------------------------------------------------------

def test_status_has_each_cells_figures_per_variant() -> None:
    st = sweep_status(sweep())
    assert (st["batchSizes"], st["concurrencies"], st["default"]) == ([1, 16], [4, 16],
                                                                      {"batchSize": 1, "concurrency": 4})
    assert [(c["batchSize"], c["concurrency"]) for c in st["cells"]] == [(1, 4), (1, 16), (16, 4), (16, 16)]
    c = st["cells"][2]["candidate"]  # batch 16 at concurrency 4: 1000 answered, 10 failed in 10 s
    assert c == {"requests": 1000, "errors": 10, "seconds": 10.0, "latencyP99Ms": 48.0, "latencyPerSampleP99Ms": 3.0,
                 "throughputRps": 100.0, "rowsPerS": 1600.0, "errorRatePercent": 0.9901}
    assert st["cells"][3]["baseline"]["latencyPerSampleP99Ms"] == 6.25 and st["cellsOmitted"] == 0
    assert "baseline" not in sweep_status(sweep(baseline=False))["cells"][0]


def test_status_is_bounded_rounded_and_declared_by_the_crd() -> None:
    st = sweep_status(big())
    assert len(st["cells"]) == STATUS_CELLS == 64 and st["cellsOmitted"] == 16 * 17 - 64
    assert (st["cells"][0]["batchSize"], st["cells"][0]["concurrency"]) == (1, 1)  # the default cell is kept
    assert st["cells"][0]["candidate"]["latencyP99Ms"] == 333.5 and st["cells"][0]["candidate"]["seconds"] == 20.0
    assert len(json.dumps(st)) < 40_000
    schema = status_schema()
    assert conforms(st, schema) == []
    assert schema["properties"]["cells"]["maxItems"] == STATUS_CELLS
    assert (schema["properties"]["batchSizes"]["maxItems"], schema["properties"]["concurrencies"]["maxItems"]) == (
        16, 17)
    assert conforms({"cells": [{"batchSize": 1, "concurrency": 1, "candidate": {"p99": 1.0}}]}, schema)


def test_the_operator_records_the_sweep_and_status_keeps_it() -> None:
    kube = FakeKube()
    kube.rollouts["ml", "r"] = {"metadata": {"name": "r", "namespace": "ml"}, "spec": {}}
    writer = StatusWriter(kube, OperatorMetrics(CollectorRegistry()))
    asyncio.run(writer.record({"name": "r", "namespace": "ml"}, {"sweep": sweep_status(sweep())}))
    assert kube.rollouts["ml", "r"]["status"]["sweep"] == sweep_status(sweep())  # not pruned: a declared field


def test_a_sweep_rebuilt_from_status_prints_the_same_table() -> None:
    sw = sweep()
    back = sweep_from_status(sweep_status(sw))
    assert back is not None and back.default == Cell(1, 4) and back.cells == sw.cells
    assert sweep_rows(back) == sweep_rows(sw)
    assert sweep_from_status(None) is None and sweep_from_status({"cells": []}) is None
    alone = sweep_from_status(sweep_status(sweep(baseline=False)))
    assert alone is not None and alone.baseline is None


# --- kubectl modelrollout status ----------------------------------------------------------------------

def test_kubectl_status_prints_the_batch_by_concurrency_table(capsys: pytest.CaptureFixture[str]) -> None:
    kube = FakeKube()
    gate = {"index": 0, "metric": "latency_p99_ms", "bound": "max", "threshold": 400.0, "verdict": "Pass",
            "value": 160.0, "message": "ok", "batchSize": 16, "concurrency": 16}
    kube.rollouts["ml", "r"] = {"metadata": {"name": "r", "namespace": "ml"},
                                "spec": {"task": "binary-classification", "targetRef": {"name": "churn"}},
                                "status": {"phase": "Promoted", "gates": [gate],
                                           "candidate": {"metrics": {"f1": 0.9}}, "baseline": {"metrics": {}},
                                           "sweep": {**sweep_status(sweep()), "cellsOmitted": 3}}}
    assert cmd_status(kube, argparse.Namespace(namespace="ml", kubeconfig=None, name="r")) == 0
    out = capsys.readouterr().out
    assert "p99 per sample, ms" in out and "rows/s" in out and "candidate / baseline" in out
    row = next(line for line in out.splitlines() if line.startswith("16 x 4 "))
    assert "3 / 2.5" in row and "1600 / 1600" in row  # p99 per sample 48/16 vs 40/16; rows/s
    assert any(line.startswith("1 x 4 *") for line in out.splitlines())  # the default cell, starred
    assert "latency_p99_ms at batch 16, concurrency 16" in out  # the gate keeps its cell
    assert "3 more cells" in out


# --- Prometheus -------------------------------------------------------------------------------------

def report(sw: Sweep | None) -> Report:
    return Report("binary-classification", Evidence({"f1": 0.9}, {"f1": 0.8}, sweep=sw), [],
                  Decision(Outcome.PROMOTE, "ok"))


def value(reg: CollectorRegistry, name: str, variant: str, b: int, c: int, rollout: str = "r") -> float | None:
    return reg.get_sample_value(name, {"rollout": rollout, "namespace": "ml", "variant": variant,
                                       "batch_size": str(b), "concurrency": str(c)})


def series(reg: CollectorRegistry, rollout: str = "r") -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items()))) for fam in reg.collect() for s in fam.samples
            if s.name.startswith("modelrollout_sweep_") and s.labels.get("rollout") == rollout}


def test_each_cell_is_a_series_in_base_units_and_a_new_sweep_drops_the_old_cells() -> None:
    ex = FigureExporter()
    reg = ex.registry
    ex.observe(report(sweep()), "r", "ml")
    ex.observe(report(sweep()), "other", "ml")
    assert value(reg, "modelrollout_sweep_latency_per_sample_p99_seconds", "candidate", 16, 4) == pytest.approx(0.003)
    assert value(reg, "modelrollout_sweep_latency_p99_seconds", "baseline", 16, 16) == pytest.approx(0.1)
    assert value(reg, "modelrollout_sweep_rows_per_second", "candidate", 16, 4) == pytest.approx(1600)
    assert value(reg, "modelrollout_sweep_requests_per_second", "candidate", 16, 16) == pytest.approx(50)
    assert value(reg, "modelrollout_sweep_error_ratio", "candidate", 16, 4) == pytest.approx(10 / 1010)
    assert reg.get_sample_value("modelrollout_sweep_default_cell", {"rollout": "r", "namespace": "ml",
                                                                    "batch_size": "1", "concurrency": "4"}) == 1.0
    assert len(series(reg)) == 4 * 2 * len(SWEEP_FIGURES) + 1

    smaller = Sweep({Cell(8, 2): cell(8, 2, 20.0)})  # another sweep, no baseline: the old cells go
    ex.observe(report(smaller), "r", "ml")
    assert len(series(reg)) == len(SWEEP_FIGURES) + 1
    assert value(reg, "modelrollout_sweep_rows_per_second", "candidate", 8, 2) == pytest.approx(800)
    assert value(reg, "modelrollout_sweep_rows_per_second", "candidate", 16, 4) is None
    assert value(reg, "modelrollout_sweep_rows_per_second", "baseline", 8, 2) is None
    assert reg.get_sample_value("modelrollout_sweep_default_cell", {"rollout": "r", "namespace": "ml",
                                                                    "batch_size": "1", "concurrency": "4"}) is None
    ex.observe(report(None), "r", "ml")  # no sweep at all
    assert series(reg) == set()

    ex.observe(report(smaller), "r", "ml")
    ex.forget("r", "ml")
    assert series(reg) == set() and len(series(reg, "other")) == 4 * 2 * len(SWEEP_FIGURES) + 1


def test_the_sweep_series_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is required: ./dev test installs it"
    ex = FigureExporter()
    ex.observe(report(sweep()), "r", "ml")
    text = generate_latest(ex.registry).decode()
    assert 'modelrollout_sweep_rows_per_second{batch_size="16",concurrency="4",namespace="ml",rollout="r",' \
           'variant="candidate"} 1600.0' in text
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- Grafana ----------------------------------------------------------------------------------------

def test_the_dashboard_plots_latency_against_throughput_per_variant() -> None:
    d = json.loads((ROOT / "charts" / "modelrollout" / "files" / "dashboard.json").read_text())
    xy = [p for p in d["panels"] if p["type"] == "xychart"]
    assert [("candidate" in p["title"], "baseline" in p["title"]) for p in xy] == [(True, False), (False, True)]
    for p, variant in zip(xy, ("candidate", "baseline"), strict=True):
        exprs = [t["expr"] for t in p["targets"]]
        assert all(f'variant="{variant}"' in e and t["instant"] for e, t in zip(exprs, p["targets"], strict=True))
        assert {e.split("{")[0] for e in exprs} == {"modelrollout_sweep_rows_per_second",
                                                   "modelrollout_sweep_latency_per_sample_p99_seconds"}
        assert p["options"]["dims"]["x"] == "rows/s" and p["fieldConfig"]["defaults"]["unit"] == "s"
        assert p["fieldConfig"]["overrides"][0]["properties"] == [{"id": "unit", "value": "rowsps"}]
    named = {m for p in d["panels"] for t in p.get("targets", []) for m in [t["expr"].split("{")[0]]
             if m.startswith("modelrollout_sweep_")}
    assert named == set(SWEEP_FIGURES)  # every one the exporter writes, and nothing it does not


def test_the_dashboard_draws_the_slo_curve_by_batch_size_from_series_the_exporter_writes() -> None:
    from modelrollout.exporter import FigureExporter

    d = json.loads((ROOT / "charts" / "modelrollout" / "files" / "dashboard.json").read_text())
    bars = [p for p in d["panels"] if p["type"] == "barchart" and "SLO" in p["title"]]
    assert len(bars) == 1 and bars[0]["options"]["xField"] == "batch_size"
    assert [t["expr"].split("{")[0] for t in bars[0]["targets"]] == ["modelrollout_slo_rows_per_second"]
    assert bars[0]["transformations"][0]["id"] == "groupingToMatrix"
    assert bars[0]["transformations"][0]["options"]["columnField"] == "variant"
    written = {m.name for m in FigureExporter().registry.collect()}
    named = {t["expr"].split("{")[0] for p in d["panels"] for t in p.get("targets", [])
             if "slo" in t["expr"].split("{")[0]}
    assert named == {"modelrollout_slo_rows_per_second", "modelrollout_slo_batch_size",
                     "modelrollout_slo_offered_requests_per_second", "modelrollout_latency_slo_seconds"}
    assert named <= written


# --- where the throughput at the SLO was found ----------------------------------------------------------

def slo_result() -> SloResult:
    def search(batch: int, met: float) -> Search:
        s = Search(batch, 50.0, 2 * met, 3)
        for rate, p99 in ((2 * met, 80.0), (met, 20.0), (1.5 * met, 70.0)):
            s.record(Probe(rate, int(rate) + 1, 0, p99, p99 / 2))
        return s
    return SloResult(50.0, [search(1, 400.0), search(8, 90.0)], [search(8, 110.0)], seconds=1.2)


def test_status_keeps_where_the_slo_figure_was_found_and_kubectl_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    full = slo_result().as_dict()
    st = status_form(full)
    assert st == {"sloMs": 50.0, "rowsPerS": 800.0, "batchSize": 8, "rateRps": 100.0, "inFlight": 1.0,
                  "byBatchSize": {"1": 400.0, "8": 720.0}, "searches": 2}  # batch 8: 720 rows/s beats 400
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["status"]["properties"]["sloSearch"]
    assert conforms({"candidate": st, "baseline": st}, schema, "sloSearch") == []
    assert "probes" not in json.dumps(st) and len(json.dumps(st)) < 400  # bounded: no probe list
    assert conforms({"candidate": full}, schema, "sloSearch")  # the report's form would be pruned

    kube = FakeKube()
    kube.rollouts["ml", "r"] = {"metadata": {"name": "r", "namespace": "ml"},
                                "spec": {"task": "binary-classification", "targetRef": {"name": "churn"}}}
    writer = StatusWriter(kube, OperatorMetrics(CollectorRegistry()))
    gate = {"index": 0, "metric": "throughput_at_slo_rps", "bound": "min", "threshold": 100.0, "verdict": "Pass",
            "value": 800.0, "message": "ok"}
    asyncio.run(writer.record({"name": "r", "namespace": "ml"}, {
        "gates": [gate], "candidate": {"metrics": {"throughput_at_slo_rps": 800.0}}, "baseline": {"metrics": {}},
        "sloSearch": {"candidate": st}}))
    assert kube.rollouts["ml", "r"]["status"]["sloSearch"] == {"candidate": st}  # declared: not pruned
    assert cmd_status(kube, argparse.Namespace(namespace="ml", kubeconfig=None, name="r")) == 0
    out = capsys.readouterr().out
    assert ("throughput at the 50 ms p99 SLO (open loop): candidate 800 rows/s at batch 8 (100 requests/s, "
            "~1 in flight; mean of 2 searches)") in out


def test_every_dashboard_panel_states_its_unit_and_tables_are_one_joined_frame() -> None:
    d = json.loads((ROOT / "charts" / "modelrollout" / "files" / "dashboard.json").read_text())
    panels = [p for p in d["panels"] if p["type"] != "row"]
    for p in panels:
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        assert defaults.get("unit") or p["fieldConfig"].get("overrides"), p["title"]
    units = {p["title"]: p["fieldConfig"]["defaults"].get("unit") for p in panels}
    assert (units["Latency percentiles"], units["Candidate vs baseline: memory_peak_bytes"],
            units["Candidate vs baseline: f1"]) == ("s", "bytes", "percentunit")
    gates = next(p for p in panels if p["title"] == "Gate verdicts")
    assert [t["refId"] for t in gates["targets"]] == ["passed", "value", "threshold"]
    assert all(t["instant"] and t["format"] == "table" for t in gates["targets"])
    assert [t["id"] for t in gates["transformations"]] == ["merge", "organize"]


def test_a_gate_series_says_the_unit_its_value_is_in() -> None:
    from modelrollout.core.gates import evaluate
    from modelrollout.core.spec import Gate

    gates = [Gate.model_validate({"metric": "latency_p99_ms", "max": 50}), Gate.model_validate({"metric": "f1",
                                                                                                "min": 0.8})]
    ev = Evidence({"latency_p99_ms": 12.5, "f1": 0.9})
    rep = Report(task="binary-classification", evidence=ev, gates=evaluate(gates, ev),
                 decision=Decision(Outcome.PROMOTE, "ok"))
    ex = FigureExporter()
    ex.observe(rep, "r", "ml")
    text = generate_latest(ex.registry).decode()
    assert ('modelrollout_gate_value{bound="max",dry_run="false",gate="0",metric="latency_p99_ms",namespace="ml",'
            'rollout="r",unit="seconds"} 0.0125') in text
    assert ('modelrollout_gate_threshold{bound="max",dry_run="false",gate="0",metric="latency_p99_ms",'
            'namespace="ml",rollout="r",unit="seconds"} 0.05') in text
    assert 'metric="f1",namespace="ml",rollout="r",unit=""} 0.9' in text
