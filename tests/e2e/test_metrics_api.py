"""Memory from metrics.k8s.io when the cluster serves it: a real metrics-server, aggregated by the
real API server, scraping kwok's kubelet endpoints (where a pod's usage is its
`kwok.x-k8s.io/usage-memory` annotation, since kwok runs no containers)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from modelrollout.probes.resources import MIB, PrometheusSource
from tests.conftest import Cluster
from tests.e2e.conftest import Models, Scenario

pytestmark = pytest.mark.e2e


@pytest.fixture
def metrics_api(cluster: Cluster) -> Iterator[None]:
    cluster.metrics_api(True)
    try:
        yield
    finally:
        cluster.metrics_api(False)  # the other tests run on a cluster without it


def server_rss_mib(url: str) -> float:
    return asyncio.run(PrometheusSource(url + "/metrics").sample()).rss_bytes / MIB


def test_memory_comes_from_metrics_api_when_the_cluster_serves_it(metrics_api: None, scenario: Scenario,
                                                                 models: Models) -> None:
    k = scenario.cluster.kubectl
    k("-n", scenario.ns, "patch", "deployment", "churn", "--type=merge", "-p", json.dumps(
        {"spec": {"template": {"metadata": {"annotations": {"kwok.x-k8s.io/usage-memory": "700Mi"}}}}}))
    k("-n", scenario.ns, "rollout", "status", "deployment/churn", "--timeout=60s")
    # precondition, so a failure below is the operator's: metrics-server reports production's pods
    raw, end = "", time.monotonic() + 90
    while time.monotonic() < end:
        raw = k("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{scenario.ns}/pods", check=False).stdout
        if raw and len(json.loads(raw).get("items", [])) == 2:
            break
        time.sleep(2)
    assert raw and len(json.loads(raw)["items"]) == 2, (
        f"metrics.k8s.io never listed production's 2 pods: {raw}\n{scenario.cluster.log_tail('metrics-server')}")
    before = scenario.template()
    cand, base = scenario.op.serve(models.good), scenario.op.serve(models.production)
    assert server_rss_mib(cand) < 512 and server_rss_mib(base) < 512  # the server's own figure would pass
    scenario.rollout("usage", cand, base, [{"metric": "f1", "min": 0.0}, {"metric": "memory_peak_mib", "max": 512}])
    st = scenario.wait_phase("usage", {"Promoted", "RolledBack", "Failed"}, timeout=240)
    assert st["phase"] == "RolledBack", st.get("message")
    assert "gate 1 failed: memory_peak_mib" in st["message"], st["message"]
    assert st["capacity"]["memorySource"] == {"candidate": "metrics.k8s.io", "baseline": "metrics.k8s.io"}
    for v in ("candidate", "baseline"):
        figs = st[v]["metrics"]
        assert figs["memory_before_mib"] == figs["memory_peak_mib"] == figs["memory_after_mib"] == 700.0, figs
        # the per-replica need is the measured peak plus 20% headroom (above the 256Mi request)
        assert st["capacity"]["perReplicaMemoryMiB"][v] == pytest.approx(840.0)
        # the leak probe needs fresh samples, so it still reads the server's own /metrics
        assert "memory_growth_mib_per_10k_requests" in figs and "memory_leak_suspected" in figs
        # scheduled -> Ready of the staging pod, from the API's own condition times
        assert 0 <= figs["time_to_ready_s"] < 240, figs
    assert scenario.template() == before
    assert scenario.staging_objects("usage") == []
    scenario.assert_invariant("usage", before)
