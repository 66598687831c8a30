"""Canary traffic by Gateway API on the real API server (the HTTPRoute CRD from its Go module).

Two rollouts side by side, each with its own target, Service and HTTPRoute: one steps 20 % -> 60 %
and promotes, one is aborted at 30 %. The routes are read back from the API server at every poll:
each step's weights are exactly the manifest's, production keeps its replicas (the route, not pod
counts, sets the share), no Service of the user's selects a canary pod, and afterwards each route
is exactly what its owner wrote. No gateway controller runs here, so no request is routed: what
is proven is what the operator writes, which is all a Gateway implementation acts on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import TARGET, Models, Scenario

pytestmark = pytest.mark.e2e

QUALITY = [{"metric": "f1", "min": 0.9}]


def _route_objects(ns: str, target: str) -> list[dict[str, Any]]:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": target, "namespace": ns},
           "spec": {"selector": {"app": target}, "ports": [{"port": 80, "targetPort": 8080}]}}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": f"{target}-web", "namespace": ns},
             "spec": {"parentRefs": [{"name": "public"}],
                      "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                                 "backendRefs": [{"name": target, "port": 80}]},
                                {"backendRefs": [{"name": "docs", "port": 80, "weight": 3}]}]}}
    return [svc, route]


def _backends(sc: Scenario, route: str) -> tuple[tuple[tuple[str, Any], ...], ...]:
    spec = sc.get("httproute", route)["spec"]
    return tuple(tuple((b["name"], b.get("weight")) for b in r["backendRefs"]) for r in spec["rules"])


def _endpoint_pods(sc: Scenario, service: str) -> set[str]:
    slices = sc.get("endpointslices", "-l", f"kubernetes.io/service-name={service}")["items"]
    return {e["targetRef"]["name"] for s in slices for e in s.get("endpoints") or [] if e.get("targetRef")}


def test_route_weights_follow_each_step_and_go_back(scenario: Scenario, models: Models) -> None:
    k, ns = scenario.cluster.kubectl, scenario.ns
    sc = {name: Scenario(scenario.cluster, scenario.op, ns, target=name) for name in ("gw-ok", "gw-abort")}
    for name in sc:
        k("apply", "-f", "-", input=TARGET.format(name=name, ns=ns))
        k("apply", "-f", "-", input=yaml.safe_dump_all(_route_objects(ns, name)))
    originals = {name: sc[name].get("httproute", f"{name}-web")["spec"] for name in sc}
    for name in sc:
        k("-n", ns, "rollout", "status", f"deployment/{name}", "--timeout=60s")
    cand, base = scenario.op.serve(models.good), scenario.op.serve(models.production)
    steps = {"gw-ok": [{"weight": 20, "pause": "4s"}, {"weight": 60, "pause": "4s"}],
             "gw-abort": [{"weight": 30, "pause": "1h"}]}
    for name, s in sc.items():
        s.rollout(name, cand, base, QUALITY, promotion={
            "canary": {"steps": steps[name], "trafficRouting": {"gatewayAPI": {"httpRoute": f"{name}-web"}}}})

    seen: dict[str, set[Any]] = {name: set() for name in sc}
    replicas: set[int] = set()
    mixed: list[str] = []
    canary_pods: set[str] = set()
    at_30: float | None = None
    st: dict[str, dict[str, Any]] = {}
    end = time.monotonic() + 240
    while time.monotonic() < end:
        for name, s in sc.items():
            seen[name].add(_backends(s, f"{name}-web")[0])
            replicas.add(int(s.get("deployment", name)["spec"]["replicas"]))
            st[name] = s.status(name)
        ab = st["gw-abort"]
        if ab.get("phase") == "Canary" and (ab.get("traffic") or {}).get("weight") == 30:
            # the canary serves its share: production's Service must not list its pods, the canary's must
            at_30 = at_30 or time.monotonic()
            canary_pods |= _endpoint_pods(scenario, "gw-abort-canary")
            mixed += [p for p in _endpoint_pods(scenario, "gw-abort") if p.startswith("gw-abort-canary")]
            # abort once the route carries the 30 % (the operator moves it at the tick after the canary is
            # Available, which can come after its pods are already endpoints)
            split = (("gw-abort", 70), ("gw-abort-canary", 30)) in seen["gw-abort"]
            if (canary_pods and split) or time.monotonic() - at_30 > 20:
                sc["gw-abort"].annotate("gw-abort", "modelrollout.dev/abort")
        if all(x.get("phase") in ("Promoted", "RolledBack", "Failed") for x in st.values()):
            break
        time.sleep(0.3)
    assert st["gw-ok"]["phase"] == "Promoted", st["gw-ok"].get("message")
    assert (st["gw-abort"]["phase"], st["gw-abort"]["reason"]) == ("RolledBack", "Aborted"), st["gw-abort"]
    # every state the production rule was seen in: as written, then each step's exact split
    assert seen["gw-ok"] <= {(("gw-ok", 1),), (("gw-ok", 80), ("gw-ok-canary", 20)),  # the API defaults weight 1
                             (("gw-ok", 40), ("gw-ok-canary", 60))}, seen["gw-ok"]
    assert (("gw-ok", 40), ("gw-ok-canary", 60)) in seen["gw-ok"]
    assert (("gw-abort", 70), ("gw-abort-canary", 30)) in seen["gw-abort"]
    assert replicas == {2} and not mixed, (replicas, mixed)
    assert canary_pods and all(p.startswith("gw-abort-canary-") for p in canary_pods), canary_pods
    for name in sc:  # each route exactly as its owner wrote it, the canary Services gone
        assert sc[name].get("httproute", f"{name}-web")["spec"] == originals[name], name
        assert k("-n", ns, "get", "service", f"{name}-canary", check=False).returncode != 0
    assert st["gw-ok"]["traffic"]["original"] == [{"rule": 0, "service": "gw-ok", "weight": 1}]
    image = json.loads(k("-n", ns, "get", "deployment", "gw-ok", "-o", "json").stdout)
    assert image["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/churn:8"
    assert sc["gw-abort"].template()["spec"]["containers"][0]["image"] == "registry.example/churn:7"
    plugin = Path(sys.executable).parent / "kubectl-modelrollout"
    out = subprocess.run([str(plugin), "-n", ns, "status", "gw-abort"], capture_output=True, text=True,
                         env=scenario.cluster.env(), timeout=60)
    assert "traffic: HTTPRoute gw-abort-web sends 0% to Service gw-abort-canary (put back" in out.stdout, out


def test_a_missing_route_fails_before_anything_is_created(scenario: Scenario, models: Models) -> None:
    cand = scenario.op.serve(models.good)
    scenario.rollout("gw-none", cand, cand, QUALITY, promotion={
        "canary": {"steps": [{"weight": 50}], "trafficRouting": {"gatewayAPI": {"httpRoute": "nope"}}}})
    st = scenario.wait_phase("gw-none", {"Failed", "RolledBack", "Promoted"}, timeout=60)
    assert (st["phase"], st["reason"]) == ("Failed", "TrafficRouteInvalid"), st
    assert f"HTTPRoute {scenario.ns}/nope does not exist" in st["message"]
    assert scenario.staging_objects("gw-none") == []
