"""Real model servers as local processes, and the models they serve."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Trained:
    candidate: Path
    baseline: Path
    X: np.ndarray
    y: np.ndarray
    models: dict[str, object]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    d = tmp_path_factory.mktemp("models")
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)
    cand = LogisticRegression(max_iter=5000).fit(Xtr, ytr)
    base = DecisionTreeClassifier(max_depth=2, random_state=0).fit(Xtr, ytr)
    sio.dump(cand, d / "candidate.skops")
    sio.dump(base, d / "baseline.skops")
    return Trained(d / "candidate.skops", d / "baseline.skops", Xte, yte, {"candidate": cand, "baseline": base})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(model: Path, mode: str | None = None, name: str = "m", flags: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> Server:
        port = free_port()
        if mode is None:
            cmd = [sys.executable, "-m", "modelrollout.cli", "serve", str(model), "--name", name, "--port", str(port),
                   *flags]
        else:
            cmd = [sys.executable, str(HERE / "servers.py"), str(model), str(port), mode]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, **(env or {})})
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait(url, proc)
        return Server(url, proc)

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


@contextlib.contextmanager
def third_party_server(cmd: list[str], cwd: Path, log_path: Path, ready_url: str) -> Iterator[None]:
    """A third-party model server (its own venv) as a child process, until `ready_url` answers 200; its log's
    tail is the error when it dies or takes over two minutes. Always stopped."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=cwd)
        try:
            end = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(ready_url, timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(log_path.read_text()[-3000:])
                time.sleep(0.2)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
