"""The README's walkthrough, every command of it in order, on the test control plane's real node.

The README says what is substituted and why: the image built here instead of the published one,
the real node's toleration, and `prometheus.monitoring` pointing at a real Prometheus on the host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Cluster
from tests.e2e.conftest import Models, Operator
from tests.e2e.realnode import NODE_IP, ON_NODE, RealNode, real_node_fixture  # noqa: F401

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
        if path != "examples/quickstart/models/":  # train.py, the step before, writes it
            assert (ROOT / path.split("=")[-1]).exists(), path


@pytest.fixture
def clean(cluster: Cluster, operator: Operator) -> Iterator[None]:
    """No release or namespace left from other tests; the session operator paused (one operator at a time)."""
    def reset(wait: bool) -> None:
        # the rollout first, while its operator (the release) is there to remove its finalizer
        cluster.kubectl("-n", "ml", "delete", "modelrollouts", "--all", "--timeout=60s", check=False)
        subprocess.run([f"{cluster.bindir}/helm", "uninstall", "mr", "-n", "modelrollout-system", "--wait"],
                       env=cluster.env(), capture_output=True, timeout=120)
        cluster.kubectl("delete", "namespace", "ml", "monitoring", "--ignore-not-found", f"--wait={str(wait).lower()}",
                        "--timeout=100s", check=False)

    reset(wait=True)
    cluster.kubectl("apply", "--server-side", "-f", f"{cluster.bindir}/monitoring-crds")
    admin_env = operator.env
    operator.stop()
    try:
        yield
    finally:
        reset(wait=False)
        operator.start(admin_env)


def substitute(cmd: str, node: RealNode) -> str:
    """The README's command as the test runs it: the image built here, on the real node."""
    if cmd.startswith("helm install"):
        repo, tag = node.image.rsplit(":", 1)
        return (f"{cmd} --set image.repository={repo} --set image.tag={tag} --set image.pullPolicy=Never "
                f"--set-json nodeSelector='{json.dumps(ON_NODE['nodeSelector'])}' "
                f"--set-json tolerations='{json.dumps(ON_NODE['tolerations'])}' --wait --timeout 4m")
    if cmd == "kubectl apply -f examples/quickstart/production.yaml":
        docs = list(yaml.safe_load_all((ROOT / "examples/quickstart/production.yaml").read_text()))
        for d in docs:
            if d["kind"] == "Deployment":
                d["spec"]["template"]["spec"].update(ON_NODE)
                for c in d["spec"]["template"]["spec"]["containers"]:
                    assert c["image"] == "ghcr.io/modelrollout/modelrollout:0.1.0"  # the chart's default
                    c["image"], c["imagePullPolicy"] = node.image, "Never"
        return f"kubectl apply -f - <<'YAML'\n{yaml.safe_dump_all(docs)}YAML"
    return cmd


def prometheus_service(node: RealNode) -> list[dict[str, Any]]:
    """`prometheus.monitoring:9090`, as the README names it: a Service whose endpoint is the real
    Prometheus on the host (the node's address)."""
    port = int(node.prometheus.url.rsplit(":", 1)[1])
    meta = {"name": "prometheus", "namespace": "monitoring"}
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": meta,
             "spec": {"ports": [{"name": "web", "port": 9090, "targetPort": port}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
             "metadata": {"name": "prometheus-host", "namespace": "monitoring",
                          "labels": {"kubernetes.io/service-name": "prometheus"}},
             "endpoints": [{"addresses": [NODE_IP]}], "ports": [{"name": "web", "port": port, "protocol": "TCP"}]}]


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


def test_readme_walkthrough_promotes_the_quickstart_model(cluster: Cluster, clean: None, real_node: RealNode,
                                                          models: Models) -> None:
    assert (ROOT / "examples/quickstart/holdout.csv").read_text() == models.holdout_csv  # what the models expect
    real_node.apply(prometheus_service(real_node))
    env = {**cluster.env(), "PROMETHEUS": real_node.prometheus.url,
           "PATH": f"{Path(sys.executable).parent}:{cluster.env()['PATH']}"}  # kubectl finds the plugin
    out: dict[str, str] = {}
    for cmd in walkthrough():
        if cmd.endswith(" -w"):
            out[cmd] = watch(cmd, env, until="Promoted")
        else:
            r = subprocess.run(["bash", "-c", substitute(cmd, real_node)], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=300)
            assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
            out[cmd] = r.stdout
    log = cluster.kubectl("-n", "modelrollout-system", "logs", "deployment/mr", "--tail=-1", check=False).stdout
    assert "STATUS: deployed" in out[next(c for c in out if c.startswith("helm"))]
    watched = next(o for c, o in out.items() if c.endswith(" -w"))
    assert re.search(r"^classifier-v2\s+Promoted", watched, re.M), watched + log[-3000:]
    assert "Forbidden" not in log  # the chart's RBAC was enough
    status = next(o for c, o in out.items() if "modelrollout -n ml status" in c)
    assert re.search(r"^f1\s+0\.9\d+\s+0\.9\d+\s+\+0\.\d+\s+\[", status, re.M), status
    assert "Promoted" in status
    model = next(o for c, o in out.items() if "jsonpath" in c)
    assert model == "/models/candidate.skops"
    series = json.loads(next(o for c, o in out.items() if c.startswith("curl")))["data"]["result"]
    assert {s["metric"]["variant"] for s in series} == {"candidate", "baseline"}
    st = json.loads(cluster.kubectl("-n", "ml", "get", "modelrollout", "classifier-v2", "-o", "json").stdout)["status"]
    value = next(float(s["value"][1]) for s in series if s["metric"]["variant"] == "candidate")
    assert value == pytest.approx(st["candidate"]["metrics"]["f1"], abs=1e-12)
    assert st["capacity"]["memorySource"]["candidate"] == "metrics.k8s.io"  # real pods, measured by the kubelet
    dashboards = next(o for c, o in out.items() if "grafana_dashboard" in c)
    assert "mr-dashboard" in dashboards
