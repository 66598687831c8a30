"""The throughput-at-SLO search (core/slo.py) against a brute-force sweep at the same resolution.

    PYTHONPATH=operator:. .venv/bin/python bench/slo_search.py [--slo-ms 60] [--steps 6] [--probe 1] [--runs 3]

Both run our open-loop generator (latency from the intended send time) against the same server: the
search bisects from the closed loop's ceiling; the peer is a brute-force sweep of every rate on the grid
the search resolves (ceiling / 2^(steps-1) apart), upward, past a miss, until `--misses` rates in a row
miss the SLO. Its answer uses every probe: the highest rate where a monotone (isotonic, scikit-learn)
fit of met (1) / missed (0) against rate is still at least 1/2, the boundary a sweep finds on a noisy
server. A ramp that stops at its first miss (perf_analyzer's latency-threshold mode) answers low for one
unlucky probe, and the highest rate that met the SLO answers high for one lucky probe among thirty: both
measure the peer's luck rather than the search. Two servers: the
fault server's `slow` mode (one request at a time, 20 ms each: a known capacity of about 50 requests/s)
and the reference server (CPU-bound). Prints medians of each and the ratios search / sweep for the figure
(want within 10 %) and the time taken (want at most 1/3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from modelrollout.core.figures import WINDOW_WARMUP
from modelrollout.core.slo import Probe, Search, ceilings, max_in_flight
from modelrollout.probes.load import Generator, LoadConfig, LoadResult

ROOT = Path(__file__).resolve().parents[1]


def start(model: Path, port: int, mode: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/integration/servers.py"), str(model), str(port), mode],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready")


def probe(gen: Generator, url: str, body: bytes, rate: float, seconds: float, slo_ms: float) -> Probe:
    cfg = LoadConfig(url=url, bodies=[body], batch_size=1, duration=seconds, warmup=WINDOW_WARMUP, mode="open",
                     rate=rate, max_in_flight=max_in_flight(rate, slo_ms))
    r = gen.run(cfg)
    return Probe(rate, r.requests, sum(r.errors.values()), r.latency_ms.get("p99"), r.latency_ms.get("mean"))


def closed(gen: Generator, url: str, body: bytes, seconds: float) -> LoadResult:
    return gen.run(LoadConfig(url=url, bodies=[body], batch_size=1, concurrency=8, duration=seconds, warmup=0.5))


def bisect(gen: Generator, url: str, body: bytes, ceiling: float, a: argparse.Namespace) -> tuple[float, float]:
    t0, s = time.monotonic(), Search(1, a.slo_ms, ceiling, a.steps)
    while (rate := s.next_rate()) is not None:
        s.record(probe(gen, url, body, rate, a.probe, a.slo_ms))
    return s.met, time.monotonic() - t0


def sweep(gen: Generator, url: str, body: bytes, ceiling: float, a: argparse.Namespace) -> tuple[float, float]:
    t0, step, i, missed = time.monotonic(), ceiling / 2 ** (a.steps - 1), 1, 0
    rates, met = [], []
    while i * step <= 4 * ceiling and missed < a.misses:
        ok = probe(gen, url, body, i * step, a.probe, a.slo_ms).meets(a.slo_ms)
        rates.append(i * step)
        met.append(1.0 if ok else 0.0)
        missed = 0 if ok else missed + 1
        i += 1
    fit = IsotonicRegression(increasing=False).fit_transform(rates, met)
    return max((r for r, f in zip(rates, fit, strict=True) if f >= 0.5), default=0.0), time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slo-ms", type=float, default=60.0)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--probe", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--misses", type=int, default=3, help="the sweep ends after this many misses in a row")
    ap.add_argument("--servers", default="slow,ok", help="which servers: slow (known capacity), ok (reference)")
    a = ap.parse_args()
    X, y = load_breast_cancer(return_X_y=True)
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, X.shape[1]], "datatype": "FP64",
                                   "data": X[:1].ravel().tolist()}]}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "m.skops"
        sio.dump(LogisticRegression(max_iter=5000).fit(X, y), model)
        for mode, port in (m for m in (("slow", 18771), ("ok", 18772)) if m[0] in a.servers.split(",")):
            proc = start(model, port, mode)
            url = f"http://127.0.0.1:{port}/v2/models/m/infer"
            try:
                with Generator() as gen:
                    ceiling = ceilings([(1, closed(gen, url, body, 3.0).throughput_rps)])[1]
                    got = {"search": [], "sweep": []}  # type: dict[str, list[tuple[float, float]]]
                    for _ in range(a.runs):  # alternate, so drift falls on both
                        got["search"].append(bisect(gen, url, body, ceiling, a))
                        got["sweep"].append(sweep(gen, url, body, ceiling, a))
            finally:
                proc.terminate()
                proc.wait()
            print(mode, {k: [(round(r, 1), round(t, 1)) for r, t in v] for k, v in got.items()})
            med = {k: (statistics.median(r for r, _ in v), statistics.median(t for _, t in v)) for k, v in got.items()}
            print(f"{mode:5s} server, p99 SLO {a.slo_ms:g} ms, ceiling {ceiling:.1f} req/s, {a.runs} runs: "
                  f"search {med['search'][0]:.1f} req/s in {med['search'][1]:.1f}s, "
                  f"sweep {med['sweep'][0]:.1f} req/s in {med['sweep'][1]:.1f}s; "
                  f"figure ratio {med['search'][0] / max(1e-9, med['sweep'][0]):.3f}, "
                  f"time ratio {med['search'][1] / med['sweep'][1]:.3f}")


if __name__ == "__main__":
    main()
