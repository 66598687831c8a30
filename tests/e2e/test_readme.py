"""The README's walkthrough, every command of it in order, on the test control plane.

The README says what is substituted and why: kwok runs no containers, so the operator pod's own
command runs as a local process with the chart's environment and ServiceAccount token, the
staging Services map to local model servers, and Prometheus is a real local one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cluster
from tests.e2e.conftest import Models, Operator, Prometheus
from tests.e2e.test_chart import sa_kubeconfig
from tests.integration.conftest import free_port

pytestmark = pytest.mark.e2e
BLOCK = re.compile(r"<!-- walkthrough:[^>]*-->\n```sh\n(.*?)```", re.S)


def walkthrough() -> list[str]:
    m = BLOCK.search((ROOT / "README.md").read_text())
    assert m, "the README has no walkthrough block"
    lines = m.group(1).replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_walkthrough_is_the_quickstart() -> None:
    cmds = walkthrough()
    assert cmds[0].startswith("helm install mr charts/modelrollout")
    assert "kubectl apply -f examples/quickstart/rollout.yaml" in cmds
    for path in re.findall(r"examples/\S+", " ".join(cmds)):
        assert (ROOT / path.split("=")[-1]).exists(), path


@pytest.fixture
def clean(cluster: Cluster, operator: Operator) -> Iterator[None]:
    """No release or namespace left from other tests; the session operator paused (one operator at a time)."""
    def reset() -> None:
        subprocess.run([f"{cluster.bindir}/helm", "uninstall", "mr", "-n", "modelrollout-system", "--wait"],
                       env=cluster.env(), capture_output=True, timeout=120)
        cluster.kubectl("delete", "namespace", "ml", "--ignore-not-found", "--timeout=120s", check=False)

    reset()
    cluster.kubectl("apply", "--server-side", "-f", f"{cluster.bindir}/monitoring-crds")
    admin_env = operator.env
    operator.stop()
    try:
        yield
    finally:
        operator.start(admin_env)  # first: it removes the finalizer of the rollout being deleted with `ml`
        reset()


def start_operator_pod(cluster: Cluster, tmp: Path, prometheus: Prometheus, addresses: Path,
                       metrics_port: int) -> subprocess.Popen[bytes]:
    """The chart's operator container, as a local process: its args, its env, its ServiceAccount."""
    dep = json.loads(cluster.kubectl("-n", "modelrollout-system", "get", "deployment", "mr", "-o", "json").stdout)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}  # the API omits empty values
    assert env["MODELROLLOUT_PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"  # the --set took effect
    env |= {"MODELROLLOUT_PROMETHEUS_URL": prometheus.url, "MODELROLLOUT_METRICS_PORT": str(metrics_port),
            "MODELROLLOUT_SERVICE_ADDRESSES_FILE": str(addresses), "HOME": str(tmp), "MPLCONFIGDIR": str(tmp),
            "KUBECONFIG": str(sa_kubeconfig(cluster, tmp)), "PATH": cluster.env()["PATH"]}
    args = [re.sub(r"0\.0\.0\.0:\d+", f"127.0.0.1:{free_port()}", a) for a in container["args"]]
    return subprocess.Popen([sys.executable, "-m", "kopf", *args], env=env,  # the image's ENTRYPOINT is kopf
                            stdout=open(tmp / "operator.log", "wb"), stderr=subprocess.STDOUT)


def watch(cmd: str, env: dict[str, str], until: str, timeout: float = 300) -> str:
    """Run a `-w` command until a line shows `until` (or a terminal failure)."""
    p = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    out, end = [], time.monotonic() + timeout
    try:
        for line in p.stdout:
            out.append(line)
            if until in line or "RolledBack" in line or "Failed" in line or time.monotonic() > end:
                break
    finally:
        p.kill()
        p.wait()
    return "".join(out)


def test_readme_walkthrough_promotes_the_quickstart_model(cluster: Cluster, clean: None, operator: Operator,
                                                          models: Models, prometheus: Prometheus,
                                                          tmp_path: Path) -> None:
    assert (ROOT / "examples/quickstart/holdout.csv").read_text() == models.holdout_csv  # what the models expect
    good, production = operator.serve(models.good), operator.serve(models.production)
    addresses = tmp_path / "addresses.json"
    addresses.write_text(json.dumps({"ml/classifier-v2-candidate": good, "ml/classifier-v2-baseline": production}))
    metrics_port = free_port()
    prometheus.configure([f"127.0.0.1:{metrics_port}"],
                         namespaced=("ml", [good.removeprefix("http://"), production.removeprefix("http://")]))
    env = {**cluster.env(), "PROMETHEUS": prometheus.url,
           "PATH": f"{Path(sys.executable).parent}:{cluster.env()['PATH']}"}  # kubectl finds the plugin
    out: dict[str, str] = {}
    pod: subprocess.Popen[bytes] | None = None
    try:
        for cmd in walkthrough():
            if cmd.endswith(" -w"):
                out[cmd] = watch(cmd, env, until="Promoted")
            else:
                r = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                                   timeout=300)
                assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
                out[cmd] = r.stdout
            if cmd.startswith("helm install"):
                pod = start_operator_pod(cluster, tmp_path, prometheus, addresses, metrics_port)
    finally:
        if pod is not None:
            pod.terminate()
            pod.wait(30)
    log = (tmp_path / "operator.log").read_text()
    assert "STATUS: deployed" in out[next(c for c in out if c.startswith("helm"))]
    watched = next(o for c, o in out.items() if c.endswith(" -w"))
    assert re.search(r"^classifier-v2\s+Promoted", watched, re.M), watched + log[-3000:]
    assert "Forbidden" not in log  # the chart's RBAC was enough
    status = next(o for c, o in out.items() if "modelrollout -n ml status" in c)
    assert re.search(r"^f1\s+0\.9\d+\s+0\.9\d+\s+\+0\.\d+\s+\[", status, re.M), status
    assert "Promoted" in status
    image = next(o for c, o in out.items() if "jsonpath" in c)
    assert image == "registry.example/classifier-server:2"
    series = json.loads(next(o for c, o in out.items() if c.startswith("curl")))["data"]["result"]
    assert {s["metric"]["variant"] for s in series} == {"candidate", "baseline"}
    st = json.loads(cluster.kubectl("-n", "ml", "get", "modelrollout", "classifier-v2", "-o", "json").stdout)["status"]
    value = next(float(s["value"][1]) for s in series if s["metric"]["variant"] == "candidate")
    assert value == pytest.approx(st["candidate"]["metrics"]["f1"], abs=1e-12)
    dashboards = next(o for c, o in out.items() if "grafana_dashboard" in c)
    assert "mr-dashboard" in dashboards
