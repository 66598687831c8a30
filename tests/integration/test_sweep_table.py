"""`modelrollout evaluate` over a 2 x 2 sweep: the table reaches the JSON and the terminal, a gate on a
named cell is decided on that cell's figure."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import Server, Trained
from tests.integration.test_commands import evaluate, manifest

pytestmark = pytest.mark.integration


def test_a_two_by_two_sweep_reaches_the_table_and_gates_its_cells(
        tmp_path: Path, trained: Trained, start_server: Callable[..., Server]) -> None:
    # "slow" answers one request at a time, 20 ms each: at concurrency 8 a request waits for 7 others
    # (p99 >= 160 ms), at concurrency 1 it does not, whatever the batch size
    cand, base = start_server(trained.candidate, mode="slow"), start_server(trained.baseline)
    path = manifest(tmp_path, trained, [
        {"metric": "latency_p99_ms", "max": 120},  # the default cell: batch 1, concurrency 1
        {"metric": "latency_p99_ms", "max": 120, "concurrency": 8},  # batch 1 (the default's), concurrency 8
        {"metric": "throughput_rps", "min": 1, "batchSize": 8, "concurrency": 8},
        {"metric": "throughput_at_slo_rps", "maxDropPercent": 50}])
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["load"] = {"duration": "1s", "warmup": "200ms", "batchSizes": [1, 8], "concurrency": 1,
                           "concurrencies": [8], "windows": 2, "leakRequests": 0,
                           "latencySLO": "60ms", "sloSearch": {"searches": 2, "steps": 4, "probeDuration": "400ms"}}
    path.write_text(yaml.safe_dump(doc))
    out = evaluate(path, cand, base, "--output", str(tmp_path / "r.json"))
    assert out.returncode == 1, out.stdout + out.stderr[-2000:]
    rep = json.loads((tmp_path / "r.json").read_text())

    sweep = rep["sweep"]
    assert (sweep["batchSizes"], sweep["concurrencies"], sweep["default"]) == (
        [1, 8], [1, 8], {"batchSize": 1, "concurrency": 1})
    cells = {(c["batchSize"], c["concurrency"]): c for c in sweep["cells"]}
    assert list(cells) == [(1, 1), (1, 8), (8, 1), (8, 8)]
    for (batch, _), c in cells.items():
        for side in ("candidate", "baseline"):
            f = c[side]
            assert f["requests"] > 0 and f["errors"] == 0, (batch, side, f)
            for k, ms in f["latencyMs"].items():  # per sample = per request / batch size
                assert f["latencyPerSampleMs"][k] == pytest.approx(ms / batch, rel=1e-12), (batch, side, k)
            assert f["rowsPerS"] == pytest.approx(f["throughputRps"] * batch, rel=1e-12)
            assert f["cpuPercent"] is not None  # the server's own /metrics resolves a 1 s cell
    # the default cell's figures are the gated-by-default ones
    p99 = {f["name"]: f for f in rep["figures"]}["latency_p99_ms"]
    assert cells[(1, 1)]["candidate"]["latencyMs"]["p99"] == p99["candidate"]

    default, at8, tput, at_slo = rep["gates"]
    assert default["verdict"] == "Pass" and (default["batchSize"], default["concurrency"]) == (None, None)
    assert (at8["batchSize"], at8["concurrency"]) == (1, 8)
    assert at8["value"] == cells[(1, 8)]["candidate"]["latencyMs"]["p99"] >= 160, at8
    assert at8["baseline"] == cells[(1, 8)]["baseline"]["latencyMs"]["p99"]  # the baseline's same cell
    assert at8["verdict"] == "Fail" and at8["samples"] == cells[(1, 8)]["candidate"]["requests"]
    assert at8["message"].startswith("latency_p99_ms at batch 1, concurrency 8 is ")
    assert tput["value"] == pytest.approx(cells[(8, 8)]["candidate"]["throughputRps"])
    assert "gate 1 failed: latency_p99_ms at batch 1, concurrency 8 is" in out.stdout

    # throughput at the 60 ms SLO: one request at a time, 20 ms whatever the batch, so batch 8 carries 8x the
    # rows, and an open loop below the server's rate queues nothing: close to the closed loop's rate at 1, and
    # never above the server's own 8 rows / 20 ms (a busy machine slows either measurement, at its own time)
    slo = {side: rep["details"][side]["sloSearch"] for side in ("candidate", "baseline")}
    figs = {f["name"]: f for f in rep["figures"]}["throughput_at_slo_rps"]
    assert slo["candidate"]["batchSize"] == 8 and slo["candidate"]["byBatchSize"]["1"] < slo["candidate"]["rowsPerS"]
    assert figs["candidate"] == pytest.approx(slo["candidate"]["rowsPerS"], rel=1e-12)
    assert figs["candidate"] / cells[(8, 1)]["candidate"]["rowsPerS"] >= 0.5, (figs, slo["candidate"])
    assert figs["candidate"] <= 8 / 0.020 * 1.02, (figs, slo["candidate"])
    assert figs["baseline"] > 2 * figs["candidate"]
    for side in slo.values():
        assert len(side["searches"]) == 2 and all(len(s["probes"]) == 4 for s in side["searches"])
        for search in side["searches"]:
            for probe in search["probes"]:
                assert probe["meetsSLO"] == (probe["errors"] == 0 and probe["requests"] > 0
                                             and probe["p99Ms"] is not None and probe["p99Ms"] <= 60), probe
            assert search["rateRps"] == max([p["rateRps"] for p in search["probes"] if p["meetsSLO"]], default=0.0)
    assert at_slo["verdict"] == "Fail" and at_slo["value"] == figs["candidate"]

    # the terminal table: per-sample p99, rows/s, errors, candidate / baseline
    lines = out.stdout[out.stdout.index("batch x concurrency"):].splitlines()
    shown = {}
    for line in lines[2:6]:
        m = re.match(r"(\d+) x (\d+)( \*)?\s+(\S+) / (\S+)\s+(\S+) / (\S+)\s+(\S+) / (\S+)$", line)
        assert m, line
        shown[(int(m[1]), int(m[2]))] = (m[3] is not None, float(m[4]), float(m[5]), float(m[6]), float(m[8]))
    assert list(shown) == list(cells)
    for key, (star, cand_ms, base_ms, rows_s, errors) in shown.items():
        c = cells[key]
        assert star == (key == (1, 1))
        assert cand_ms == pytest.approx(c["candidate"]["latencyPerSampleMs"]["p99"], rel=1e-3, abs=1e-4)
        assert base_ms == pytest.approx(c["baseline"]["latencyPerSampleMs"]["p99"], rel=1e-3, abs=1e-4)
        assert rows_s == pytest.approx(c["candidate"]["rowsPerS"], rel=1e-3, abs=0.1)
        assert errors == 0
