"""Fleet figures from measurements (evaluation.system_figures, no I/O): memory decides the replicas, the
throughput at the SLO what each carries, so a model twice the size halves the fleet at the SLO."""

from __future__ import annotations

import numpy as np
import pytest

from modelrollout.core.capacity import MIB, Node
from modelrollout.core.slo import Probe, Search, SloResult
from modelrollout.core.spec import parse_spec
from modelrollout.evaluation import Measured, Variant, system_figures
from modelrollout.probes.load import LoadResult
from modelrollout.probes.resources import ResourceSummary
from modelrollout.serving.client import Endpoint
from modelrollout.serving.protocol import Prediction

SPEC = parse_spec({
    "targetRef": {"name": "m"}, "task": "binary-classification", "serving": {"modelName": "m"},
    "holdout": {"file": "h.csv", "labelColumn": "y"},
    "load": {"batchSizes": [1, 8], "latencySLO": "50ms"}, "capacity": {"targetRps": 4000, "headroomPercent": 0},
    "gates": [{"metric": "fleet_throughput_at_slo_rps", "min": 1}],
})


def measured(peak_mib: float, slo_rows: tuple[float, ...]) -> Measured:
    """A variant that peaked at `peak_mib` and whose searches met the SLO at these rows/s (batch 8)."""
    searches = [Search(8, 50.0, 1000.0, 1, [Probe(r / 8, int(r / 8), 0, 20.0, 10.0)]) for r in slo_rows]
    cell = LoadResult(1, "closed", 8, 10.0, 5000, {}, 500.0, 500.0, {"p50": 5.0, "p99": 30.0})
    return Measured(Prediction(np.zeros(3)), None, [cell, LoadResult(8, "closed", 8, 10.0, 2000, {}, 200.0, 1600.0,
                                                                      {"p99": 45.0})],
                    ResourceSummary(peak_mib * 0.9, peak_mib, peak_mib, 0.0, 50.0, 10),
                    None, slo=SloResult(50.0, searches[:1], searches[1:], 1.0), idle_cpu=(0.5, 0.7))


def figures(m: Measured) -> dict[str, float]:
    node = Node("n", 16 * 1024 * MIB, 64000)
    return dict(system_figures(m, Variant("candidate", Endpoint("http://x", "m")), SPEC, [node])[0].values)


def test_twice_the_memory_fits_half_the_replicas_and_half_the_fleet_at_the_slo() -> None:
    small, big = figures(measured(512, (1200.0, 1300.0, 1250.0))), figures(measured(1024, (1200.0, 1300.0, 1250.0)))
    assert (small["replicas_fit"], big["replicas_fit"]) == (32, 16)
    assert small["throughput_at_slo_rps"] == big["throughput_at_slo_rps"] == pytest.approx(1250.0)
    assert small["fleet_throughput_at_slo_rps"] == pytest.approx(32 * 1250.0)
    assert big["fleet_throughput_at_slo_rps"] == pytest.approx(small["fleet_throughput_at_slo_rps"] / 2)
    # in predictions/s: the default cell is batch 1 at 500 requests/s
    assert small["fleet_throughput_rps"] == pytest.approx(32 * 500.0)
    # 4000 predictions/s at 1250 each within the SLO: 4 replicas, whatever the memory
    assert small["replicas_needed"] == big["replicas_needed"] == 4
    assert (small["cpu_before_percent"], small["cpu_after_percent"]) == (0.5, 0.7)


def test_the_slo_figure_has_an_interval_from_its_searches() -> None:
    sysf = system_figures(measured(512, (1200.0, 1300.0, 1250.0)), Variant("candidate", Endpoint("http://x", "m")),
                          SPEC, [])[0]
    assert sysf.windows is not None
    iv = sysf.windows["throughput_at_slo_rps"].interval(0.95)
    assert iv is not None and iv.low < 1250.0 < iv.high and iv.resamples == 3


def test_where_the_slo_figure_was_found_is_a_series_per_variant_and_batch_size_and_passes_promtool() -> None:
    import shutil
    import subprocess

    from prometheus_client import generate_latest

    from modelrollout.core.gates import Decision, Evidence, Outcome
    from modelrollout.core.report import Report
    from modelrollout.exporter import FigureExporter

    m = measured(512, (1200.0, 1300.0, 1250.0))
    assert m.slo is not None
    found = m.slo.as_dict()
    rep = Report(task="binary-classification", evidence=Evidence({"f1": 0.9}), gates=[],
                 decision=Decision(Outcome.PROMOTE, "ok"), details={"candidate": {"sloSearch": found}})
    ex = FigureExporter()
    ex.observe(rep, "r", "ml")
    text = generate_latest(ex.registry).decode()
    assert 'modelrollout_latency_slo_seconds{namespace="ml",rollout="r"} 0.05' in text
    assert 'modelrollout_slo_batch_size{namespace="ml",rollout="r",variant="candidate"} 8.0' in text
    assert f'modelrollout_slo_offered_requests_per_second{{namespace="ml",rollout="r",variant="candidate"}} ' \
        f'{found["rateRps"]}' in text
    assert 'modelrollout_slo_rows_per_second{batch_size="8",namespace="ml",rollout="r",variant="candidate"} 1200.0' \
        in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is required: ./dev test installs it"
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    ex.observe(Report(task="binary-classification", evidence=Evidence({"f1": 0.9}), gates=[],
                      decision=Decision(Outcome.PROMOTE, "ok")), "r", "ml")  # no SLO any more: the series go
    assert "modelrollout_slo_batch_size{" not in generate_latest(ex.registry).decode()
