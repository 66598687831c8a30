"""Shared fixtures: the real control plane (built by hack/controlplane) for e2e tests.

Set MODELROLLOUT_KUBECONFIG to use an existing cluster instead, or KUBEBUILDER_ASSETS to a
folder of prebuilt binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kubectl, kwok, helm) so nothing is built.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "hack" / "controlplane"


@dataclass(frozen=True)
class Cluster:
    kubeconfig: str
    bindir: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig, "PATH": f"{self.bindir}:{os.environ['PATH']}"}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([f"{self.bindir}/kubectl", *args], input=input, capture_output=True, text=True,
                              env=self.env(), check=check, timeout=120)

    def restart_apiserver(self, down_seconds: float = 0) -> None:
        """Stop the API server, keep it down a while, start it again."""
        _controlplane("restart-apiserver", str(down_seconds))

    def metrics_api(self, on: bool) -> None:
        """Serve metrics.k8s.io with a real metrics-server, or stop."""
        _controlplane("metrics-api", "on" if on else "off")

    def log_tail(self, name: str, chars: int = 2000) -> str:
        """The end of one control-plane process's log (kwok, metrics-server, ...), for a failure message."""
        log = Path(self.kubeconfig).parent / f"{name}.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else f"(no {log})"

    def real_node(self) -> str:
        """Build the project's image (cached), start the real node, import the image; its name."""
        image = _controlplane("image", timeout=1800).strip().splitlines()[-1]
        _controlplane("node", "on", timeout=600)
        return image


def _controlplane(*args: str, timeout: float = 180) -> str:
    """A hack/controlplane command that acts on the running cluster (the project's own control plane only)."""
    r = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"hack/controlplane {' '.join(args)} (only for its own control plane): {r.stderr[-3000:]}"
    return r.stdout


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Every e2e test on one xdist worker, in file order: they share one control plane, one operator and
    one real node (a second control plane would double the machine's load); unit and integration tests,
    which need none of them, run on the other worker meanwhile (`-n 2`, pyproject.toml). A scheduler of
    our own: xdist's `loadgroup` marks do not group under pytest 9.2, whose node ids it cannot rewrite."""
    from xdist.scheduler import LoadScopeScheduling

    class E2eTogether(LoadScopeScheduling):  # type: ignore[misc]  # xdist ships no types
        def _split_scope(self, nodeid: str) -> str:
            return "e2e" if nodeid.startswith("tests/e2e/") else nodeid

    return E2eTogether(config, log)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    existing = os.environ.get("MODELROLLOUT_KUBECONFIG")
    bindir = subprocess.run([str(SCRIPT), "bindir"], capture_output=True, text=True, check=True).stdout.strip()
    if existing:
        yield Cluster(existing, bindir)
        return
    up = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=3000)
    if up.returncode != 0:
        raise RuntimeError(f"hack/controlplane up failed:\n{up.stderr[-4000:]}")
    kubeconfig = up.stdout.strip().splitlines()[-1]
    try:
        yield Cluster(kubeconfig, bindir)
    finally:
        subprocess.run([str(SCRIPT), "down"], capture_output=True, timeout=120)


MLFLOW_VENV = Path(os.environ.get("MODELROLLOUT_MLFLOW_VENV", Path.home() / ".cache/modelrollout/mlflow-venv"))


@dataclass(frozen=True)
class MlflowServer:
    url: str
    folder: Path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _server(argv: list[str], ready: str, log_path: Path, what: str) -> Iterator[None]:
    """A server process in its own session, up once `ready` answers (2 min at most), killed after."""
    import time
    import urllib.error
    import urllib.request

    log = log_path.open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(ready, timeout=2) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as e:
                if e.code == 403:  # it answers: up, and refusing an unsigned request
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{what} did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        yield
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server (`mlflow server`, SQLite backend, artifacts proxied to a local folder) on
    127.0.0.1, from its own venv (./dev test installs it); one per test process, about 15 s to start."""
    d = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with _server([str(MLFLOW_VENV / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1", "--backend-store-uri", f"sqlite:///{d}/mlflow.db",
                  "--artifacts-destination", str(d / "artifacts")], f"{url}/health", d / "server.log",
                 "mlflow server"):
        yield MlflowServer(url, d)


S3PROXY_DIR = Path.home() / ".cache/modelrollout/s3proxy"  # ./dev test puts s3proxy-<version>.jar there


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:port
    port: int
    access_key: str
    secret_key: str

    def client(self) -> Any:
        """A botocore S3 client with the server's keys, for tests to create buckets and objects."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.Session().create_client(
            "s3", region_name="us-east-1", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, config=Config(s3={"addressing_style": "path"}))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server: S3Proxy (the full S3 API with SigV4 auth over jclouds' filesystem store)
    on 127.0.0.1, from Maven Central's jar (./dev test fetches it); about 2 s to start."""
    import secrets

    d = tmp_path_factory.mktemp("s3")
    port = _free_port()
    server = S3Server(f"http://127.0.0.1:{port}", port, "AKIA" + secrets.token_hex(8).upper(), secrets.token_hex(20))
    (d / "data").mkdir()
    (d / "s3proxy.conf").write_text(f"""s3proxy.endpoint=http://127.0.0.1:{port}
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity={server.access_key}
s3proxy.credential={server.secret_key}
jclouds.provider=filesystem
jclouds.filesystem.basedir={d / "data"}
""")
    jar = os.environ.get("MODELROLLOUT_S3PROXY_JAR") or max(map(str, S3PROXY_DIR.glob("s3proxy-*.jar")), default="")
    with _server(["java", "-Xmx256m", "-jar", jar, "--properties", str(d / "s3proxy.conf")],
                 f"{server.endpoint}/", d / "server.log", "s3proxy"):
        yield server
