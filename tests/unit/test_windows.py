"""Intervals of system figures from interleaved load windows (core/windows.py), by seeded simulation.

The simulated machine slows down and speeds up over time (an AR(1) factor on every request's
latency, correlated over about a quarter second), as a shared node does; requests within a second
are therefore not independent. The windowed interval must still cover the true p99 and the true
candidate-minus-baseline p99 about 95 % of the time, where resampling requests would not.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import signal, stats

from modelrollout.core.figures import WINDOWED
from modelrollout.core.gates import Evidence, Verdict, evaluate
from modelrollout.core.spec import Gate
from modelrollout.core.windows import Windows, paired, schedule

RATE, WINDOW_S, K = 200, 4.0, 5  # requests per second, seconds per window, windows per variant
SIGMA, NOISE_SD, TAU = 0.3, 0.15, 0.25  # request spread (log), machine noise (log, stationary sd), its memory (s)
MU = {"A": math.log(10.0), "B": math.log(9.0)}  # candidate (A) 10 ms median, baseline (B) 9 ms


def true_p99(variant: str) -> float:
    """log latency ~ N(mu, SIGMA² + NOISE_SD²) under the stationary machine noise."""
    return math.exp(MU[variant] + stats.norm.ppf(0.99) * math.hypot(SIGMA, NOISE_SD))


def machine_noise(rng: np.random.Generator, seconds: float) -> NDArray[np.float64]:
    """AR(1) log-slowdown sampled at each request's send time."""
    n = int(seconds * RATE)
    phi = math.exp(-1 / (RATE * TAU))
    shocks = rng.normal(0, NOISE_SD * math.sqrt(1 - phi**2), n)
    shocks[0] = rng.normal(0, NOISE_SD)  # start in the stationary state
    return np.asarray(signal.lfilter([1.0], [1.0, -phi], shocks), dtype=np.float64)


def run(rng: np.random.Generator) -> dict[str, tuple[float, NDArray[np.float64], NDArray[np.float64]]]:
    """One interleaved run: per variant, (pooled p99, window p99s, all latencies)."""
    order = schedule(K, ["A", "B"])
    per = int(WINDOW_S * RATE)
    noise = machine_noise(rng, WINDOW_S * len(order))
    lat: dict[str, list[NDArray[np.float64]]] = {"A": [], "B": []}
    for slot, (_, v) in enumerate(order):
        lat[v].append(np.exp(MU[v] + rng.normal(0, SIGMA, per) + noise[slot * per:(slot + 1) * per]))
    out = {}
    for v, ws in lat.items():
        allv = np.concatenate(ws)
        out[v] = (float(np.percentile(allv, 99)), np.array([np.percentile(w, 99) for w in ws]), allv)
    return out


def test_schedule_is_abba_so_a_linear_drift_falls_on_both_alike() -> None:
    s = schedule(3, ["candidate", "baseline"])
    assert [x[1] for x in s] == ["candidate", "baseline", "baseline", "candidate", "candidate", "baseline"]
    assert [x[0] for x in s] == [0, 0, 1, 1, 2, 2]


def test_windowed_p99_intervals_cover_at_their_level_where_resampling_requests_does_not() -> None:
    rng = np.random.default_rng(2)
    sims, hits_own, hits_delta, hits_naive = 1000, 0, 0, 0
    truth_a, truth_d = true_p99("A"), true_p99("A") - true_p99("B")
    for _ in range(sims):
        r = run(rng)
        a = Windows(r["A"][0], r["A"][1], K * WINDOW_S)
        d = paired(a, Windows(r["B"][0], r["B"][1], K * WINDOW_S))
        assert d is not None
        own, delta = a.interval(0.95), d.interval(0.95)
        assert own is not None and delta is not None
        hits_own += own.low <= truth_a <= own.high
        hits_delta += delta.low <= truth_d <= delta.high
        # what per-request resampling claims: the order-statistic (binomial) interval of the p99
        xs = np.sort(r["A"][2])
        lo, hi = stats.binom.ppf([0.025, 0.975], len(xs), 0.99).astype(int)
        hits_naive += xs[lo] <= truth_a <= xs[min(hi, len(xs) - 1)]
    own_cov, delta_cov, naive_cov = hits_own / sims, hits_delta / sims, hits_naive / sims
    print(f"coverage: own {own_cov:.3f}, paired {delta_cov:.3f}, per-request {naive_cov:.3f}")
    assert 0.93 <= own_cov <= 0.97, own_cov
    assert 0.93 <= delta_cov <= 0.97, delta_cov
    assert naive_cov < 0.85, naive_cov  # why the windows: requests of one slow second are not independent


def _gate(metric: str, **bounds: float) -> Gate:
    fields: dict[str, Any] = {"min": None, "max": None, "max_drop": None, "max_drop_percent": None,
                              "max_increase": None, "max_increase_percent": None, "dry_run": False}
    return Gate.model_construct(None, metric=metric, **{**fields, **bounds})


@pytest.mark.parametrize(("cand", "base", "expected"), [
    ([9.0, 9.2, 9.1, 9.3, 9.0], [16.5, 16.9, 16.8, 17.0, 16.6], Verdict.PASS),  # far better than allowed
    ([30.0, 31.0, 29.5, 30.5, 30.2], [10.0, 10.2, 10.1, 9.9, 10.0], Verdict.FAIL),  # wholly worse
    ([10.0, 14.0, 9.0, 15.0, 8.0], [10.0, 10.0, 10.0, 10.0, 10.0], Verdict.INCONCLUSIVE),  # straddles
])
def test_a_relative_latency_gate_decides_on_the_paired_window_interval(
        cand: list[float], base: list[float], expected: Verdict) -> None:
    c = Windows(float(np.mean(cand)), np.array(cand), 20.0)
    b = Windows(float(np.mean(base)), np.array(base), 20.0)
    d = paired(c, b)
    assert d is not None
    ev = Evidence({"latency_p99_ms": c.pooled}, {"latency_p99_ms": b.pooled},
                  windows={"latency_p99_ms": c}, delta_windows={"latency_p99_ms": d})
    [r] = evaluate([_gate("latency_p99_ms", max_increase_percent=20, confidence=0.95)], ev)
    assert r.verdict is expected, r.message
    assert r.interval is not None and math.isclose(r.interval.level, 0.95)
    if expected is Verdict.INCONCLUSIVE:
        assert "s of load per variant resolve" in r.message and "load.duration" in r.message


def test_an_absolute_gate_with_confidence_uses_the_candidates_windows_and_its_own_level() -> None:
    c = Windows(100.0, np.array([96.0, 104.0, 99.0, 101.0, 100.0]), 20.0)
    ev = Evidence({"throughput_rps": 100.0}, windows={"throughput_rps": c})
    at = {lvl: evaluate([_gate("throughput_rps", min=96.5, confidence=lvl)], ev)[0] for lvl in (0.8, 0.99)}
    assert at[0.8].verdict is Verdict.PASS, at[0.8].message  # narrower interval, wholly above 96.5
    assert at[0.99].verdict is Verdict.INCONCLUSIVE, at[0.99].message  # wider, straddles it


def test_without_windows_a_confidence_gate_on_a_windowed_figure_says_why_it_cannot_decide() -> None:
    ev = Evidence({"memory_peak_mib": 300.0})
    [r] = evaluate([_gate("memory_peak_mib", max=400, confidence=0.95)], ev)
    assert r.verdict is Verdict.INCONCLUSIVE
    assert "load.windows is 0, or the memory source is too coarse" in r.message


def test_every_windowed_figure_is_a_system_figure_and_maxima_are_not_windowed() -> None:
    from modelrollout.core.figures import SYSTEM

    assert set(WINDOWED) <= set(SYSTEM)
    assert "latency_max_ms" not in WINDOWED
