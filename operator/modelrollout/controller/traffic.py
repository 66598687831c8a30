"""Canary traffic through a Gateway API HTTPRoute: read the route, split its weights, put them back.

The route is not ours: only the backend weights of the rules that send to production change, the
production weights before the first split are kept in `status.traffic` (written before the route
is), and every write carries the route's resourceVersion, so a concurrent change by its owner
makes ours fail and retry rather than overwrite theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelrollout.core import traffic
from modelrollout.core.spec import GatewayAPI, ModelRolloutSpec
from modelrollout.kube import objects
from modelrollout.kube.api import Kube, run

FIELD = "spec.promotion.canary.trafficRouting.gatewayAPI"


def routing(spec: ModelRolloutSpec | None) -> GatewayAPI | None:
    tr = spec.promotion.canary.traffic_routing if spec is not None else None
    return tr.gateway_api if tr is not None else None


@dataclass(frozen=True)
class Plan:
    route: dict[str, Any]
    targets: dict[int, str]  # rule index -> production Service
    canary: str  # the canary Service's name

    @property
    def rules(self) -> list[dict[str, Any]]:
        return list((self.route.get("spec") or {}).get("rules") or [])

    def ports(self, default: int) -> list[int]:
        """The ports the route sends production's traffic to (the canary Service serves the same)."""
        found = {int(r["port"]) for i in self.targets for r in self.rules[i].get("backendRefs") or []
                 if r.get("name") == self.targets[i] and r.get("port")}
        return sorted(found) or [default]


async def plan(kube: Kube, ns: str, spec: ModelRolloutSpec) -> Plan | str:
    """The route and the rules to split, or why this route cannot carry the canary (a message for status)."""
    gw = routing(spec)
    assert gw is not None
    route = await run(kube.get_route, ns, gw.http_route)
    if route is None:
        return (f"{FIELD}.httpRoute: HTTPRoute {ns}/{gw.http_route} does not exist (or the cluster serves no "
                "gateway.networking.k8s.io/v1)")
    canary = objects.canary_name(spec.target_ref.name)
    rules = list((route.get("spec") or {}).get("rules") or [])
    try:
        service = gw.service or spec.target_ref.name
        return Plan(route, traffic.production_rules(rules, gw.http_route, service, canary), canary)
    except traffic.RouteError as e:
        return f"{FIELD}: {e}"


async def set_weight(kube: Kube, ns: str, p: Plan, weight: int) -> None:
    new = traffic.split(p.rules, p.targets, p.canary, weight)
    if new != p.rules:
        await run(kube.patch_route, ns, p.route["metadata"]["name"], new, p.route["metadata"]["resourceVersion"])


def record_traffic(p: Plan, weight: int) -> dict[str, Any]:
    """What status keeps: the route, its weight now, and production's weights to put back."""
    return {"httpRoute": p.route["metadata"]["name"], "canaryService": p.canary, "weight": weight,
            "original": traffic.original_weights(p.rules, p.targets)}


async def put_back(kube: Kube, ns: str, kept: Mapping[str, Any]) -> None:
    """Production's weights as they were and no canary backend; nothing if the route is gone."""
    route = await run(kube.get_route, ns, str(kept["httpRoute"]))
    if route is None:
        return
    rules = list((route.get("spec") or {}).get("rules") or [])
    new = traffic.restore(rules, kept.get("original") or [], str(kept["canaryService"]))
    if new != rules:
        await run(kube.patch_route, ns, route["metadata"]["name"], new, route["metadata"]["resourceVersion"])
