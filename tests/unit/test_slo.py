"""The throughput-at-SLO search (core/slo.py) against simulated servers whose SLO boundary is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelrollout.core.slo import CEILING, Probe, Search, SloResult, ceilings, choose, max_in_flight
from modelrollout.core.spec import Load, SpecError, parse_spec


def run(search: Search, boundary: float, noise: np.random.Generator | None = None) -> Search:
    """A server that meets the SLO at any rate up to `boundary` requests/s (jittered when noisy)."""
    while (rate := search.next_rate()) is not None:
        edge = boundary * (1 + 0.02 * noise.standard_normal()) if noise is not None else boundary
        p99 = 10.0 if rate <= edge else 500.0
        search.record(Probe(rate, max(1, int(rate)), 0, p99, p99 / 2))
    return search


@given(st.floats(0.01, 50), st.floats(1, 1e4), st.integers(2, 12))
def test_the_search_ends_below_the_boundary_within_its_resolution(frac: float, ceiling: float, steps: int) -> None:
    boundary = frac * ceiling
    s = run(Search(1, 50.0, ceiling, steps), boundary)
    assert len(s.probes) == steps
    assert s.met <= boundary  # a lower bound: only rates that met the SLO count
    if boundary < ceiling:  # bisection in [0, ceiling]: each probe after the first halves the bracket
        assert boundary - s.met <= ceiling / 2 ** (steps - 1) * (1 + 1e-9)
        assert s.missed is not None and s.missed > boundary
    else:  # the closed loop did not saturate: the ceiling doubles while it meets the SLO
        assert s.met >= min(boundary / 2, ceiling * 2 ** (steps - 1))


def test_nothing_meets_the_slo_is_zero_not_a_guess() -> None:
    s = run(Search(8, 5.0, 100.0, 4), boundary=0.0)
    assert s.met == 0.0 and s.rows_per_s == 0.0 and s.in_flight() is None
    assert [p.rate_rps for p in s.probes] == [100.0, 50.0, 25.0, 12.5]


def test_errors_and_silence_miss_the_slo() -> None:
    assert not Probe(10, 100, 1, 1.0).meets(50)  # one error is a miss
    assert not Probe(10, 0, 0, None).meets(50)  # nothing answered is a miss, never a pass
    assert Probe(10, 100, 0, 50.0).meets(50) and not Probe(10, 100, 0, 50.1).meets(50)


def test_rows_per_second_little_and_the_choice_of_batch() -> None:
    a = run(Search(1, 50.0, 1000.0, 6), 700)
    b = run(Search(16, 50.0, 100.0, 6), 70)
    assert b.rows_per_s == 16 * b.met and choose([a, b]) is b
    assert b.in_flight() == pytest.approx(b.met * 5 / 1000)  # the probe's mean 5 ms x its rate
    assert choose([run(Search(4, 50.0, 100.0, 3), 60), run(Search(1, 50.0, 400.0, 3), 240)]).batch_size == 1


def test_ceilings_come_from_the_best_closed_loop_cell() -> None:
    got = ceilings([(1, 100.0), (1, 300.0), (8, 50.0), (8, math.nan), (32, 0.0)])
    assert got == {1: CEILING * 300, 8: CEILING * 50, 32: 1.0}


def test_in_flight_bound_is_past_the_slo() -> None:
    # at 100 req/s and a 50 ms SLO a request in flight behind 4 x 5 others waited 4 SLOs
    assert max_in_flight(100, 50) == 20 + 16 and max_in_flight(1e9, 50) == 4096


def test_repeated_searches_give_an_interval_that_covers_the_boundary() -> None:
    """Seeded: a boundary jittered by 2 % per probe; the figure's 95 % interval over 5 searches covers the
    search's own target (the boundary less half a step, on average) in about 95 % of runs."""
    rng = np.random.default_rng(0)
    covered, runs, steps, ceiling, boundary = 0, 400, 8, 125.0, 100.0
    for _ in range(runs):
        searches = [run(Search(1, 50.0, ceiling, steps), boundary, rng) for _ in range(5)]
        r = SloResult(50.0, searches[:1], searches[1:], seconds=8.0)
        iv = r.windows().interval(0.95)
        assert iv is not None and r.rows_per_s == pytest.approx(np.mean([s.met for s in searches]))
        covered += iv.low <= boundary - ceiling / 2 ** steps <= iv.high
    assert 0.92 <= covered / runs <= 0.98  # 93.5 %, 95.3 %, 94.8 % over seeds 0-2


def test_a_bad_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match="positive ceiling"):
        Search(1, 50.0, 0.0, 4)


# --- the manifest -----------------------------------------------------------------------------------

def _spec(load: dict[str, object], gates: list[dict[str, object]], **staging: object) -> dict[str, object]:
    return {"targetRef": {"name": "m"}, "task": "binary-classification", "serving": {"modelName": "m"},
            "holdout": {"file": "h.csv", "labelColumn": "y"}, "load": load, "staging": staging, "gates": gates}


def _problems(s: dict[str, object]) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(s)
    return [str(p) for p in e.value.problems]


def test_latency_slo_and_its_search_parse_with_bounds() -> None:
    ld = parse_spec(_spec({"latencySLO": "50ms", "batchSizes": [1, 8],
                           "sloSearch": {"searches": 4, "steps": 5, "probeDuration": "500ms"}},
                          [{"metric": "throughput_at_slo_rps", "maxDropPercent": 10, "confidence": 0.9}])).load
    assert ld.latency_slo == 0.05 and ld.slo_search.searches == 4 and ld.slo_search.probe_duration == 0.5
    # 5 probes at each of 2 batch sizes, then 3 repeats of 5 at one, each probe with a 0.25 s warm-up
    assert ld.slo_seconds() == pytest.approx((2 + 3) * 5 * 0.75)
    assert Load().slo_seconds() == 0.0


def test_a_gate_on_the_slo_figures_needs_a_latency_slo() -> None:
    got = _problems(_spec({}, [{"metric": "throughput_at_slo_rps", "min": 10},
                               {"metric": "fleet_throughput_at_slo_rps", "min": 10}]))
    assert len(got) == 2 and all("set load.latencySLO" in p for p in got)
    assert got[0].startswith("spec.gates[0].metric")


def test_bad_slo_settings_name_the_field() -> None:
    got = _problems(_spec({"latencySLO": "fast", "sloSearch": {"steps": 40}}, [{"metric": "f1", "min": 0.5}]))
    assert any(p.startswith("spec.load.latencySLO") and "'fast'" in p for p in got)
    assert any(p.startswith("spec.load.sloSearch.steps") for p in got)
    got = _problems(_spec({"latencySLO": "50ms", "mode": "open", "rate": 10}, [{"metric": "f1", "min": 0.5}]))
    assert any("latencySLO" in p and "closed" in p for p in got)


def test_the_evaluation_deadline_must_cover_the_search() -> None:
    load = {"latencySLO": "50ms", "duration": "10s", "warmup": "1s", "windows": 1,
            "sloSearch": {"searches": 10, "steps": 12, "probeDuration": "1m"}}
    got = _problems(_spec(load, [{"metric": "f1", "min": 0.5}], evaluationTimeout="30m"))
    assert any("staging.evaluationTimeout (30m)" in p and "throughput-at-SLO search" in p for p in got)
