"""Our load generator against wrk and hey, on the same reference server at the same concurrency.

    .venv/bin/python bench/load.py [--duration 5] [--concurrency 8] [--runs 3]

Prints the median max throughput and p50/p99 of each tool, and the ratios
ours / wrk and ours / hey. Needs Debian's `wrk`; `hey` is built with Go if missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

from modelrollout.probes.load import LoadConfig, run_load

HEY = Path.home() / ".cache/modelrollout/hey-v0.1.4/hey"


def ensure_hey() -> Path:
    if not HEY.exists():
        subprocess.run(["go", "install", "github.com/rakyll/hey@v0.1.4"], check=True,
                       env={**os.environ, "GOBIN": str(HEY.parent), "GOTOOLCHAIN": "local", "GOFLAGS": ""})
    return HEY


def unit_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "secs": 1e3}[unit]


def run_wrk(url: str, body: bytes, conc: int, duration: float, tmp: Path) -> tuple[float, float, float]:
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{duration:g}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    return rps, unit_ms(*p50.groups()), unit_ms(*p99.groups())  # type: ignore[union-attr]


def run_hey(url: str, body: bytes, conc: int, duration: float, tmp: Path) -> tuple[float, float, float]:
    f = tmp / "body.json"
    f.write_bytes(body)
    cmd = [str(ensure_hey()), "-z", f"{duration:g}s", "-c", str(conc), "-m", "POST", "-T", "application/json",
           "-D", str(f), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50% in ([\d.]+) secs", out).group(1)) * 1e3  # type: ignore[union-attr]
    p99 = float(re.search(r"99% in ([\d.]+) secs", out).group(1)) * 1e3  # type: ignore[union-attr]
    return rps, p50, p99


def run_ours(url: str, body: bytes, conc: int, duration: float, _: Path) -> tuple[float, float, float]:
    r = run_load(LoadConfig(url=url, bodies=[body], batch_size=1, concurrency=conc, duration=duration, warmup=0.0))
    assert not r.errors, r.errors
    return r.throughput_rps, r.latency_ms["p50"], r.latency_ms["p99"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    assert shutil.which("wrk"), "wrk (Debian package) is required"
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        X, y = load_breast_cancer(return_X_y=True)
        sio.dump(LogisticRegression(max_iter=5000).fit(X, y), tmp / "m.skops")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = subprocess.Popen([sys.executable, "-m", "modelrollout.cli", "serve", str(tmp / "m.skops"), "--name", "m",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    urllib.request.urlopen(base + "/v2/health/ready", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            url = base + "/v2/models/m/infer"
            body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64",
                                           "data": np.asarray(X[0]).tolist()}]}).encode()
            run_wrk(url, body, a.concurrency, 1, tmp)  # warm the server
            tools = {"ours": run_ours, "wrk": run_wrk, "hey": run_hey}
            results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in tools}
            for _ in range(a.runs):  # interleaved, so drift in the machine hits every tool alike
                for name, fn in tools.items():
                    results[name].append(fn(url, body, a.concurrency, a.duration, tmp))
        finally:
            srv.terminate()
            srv.wait()
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in results.items()}
    print(f"concurrency={a.concurrency} duration={a.duration:g}s runs={a.runs} (medians)")
    for k, (rps, p50, p99) in med.items():
        print(f"  {k:5s} {rps:9.1f} req/s   p50 {p50:7.3f} ms   p99 {p99:7.3f} ms")
    for peer in ("wrk", "hey"):
        o, p = med["ours"], med[peer]
        print(f"ours/{peer}: throughput {o[0] / p[0]:.3f}  p50 {o[1] / p[1]:.3f}  p99 {o[2] / p[2]:.3f}")


if __name__ == "__main__":
    main()
