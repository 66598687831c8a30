"""Canary traffic by Gateway API: the weights of an HTTPRoute's backends, split and put back.

A rule is split when its only backend is production's Service (named, or named like the target):
production gets `100 - weight` and a backend for the canary Service `weight`, so the candidate
takes exactly the step's share of that rule's requests whatever the replica counts. Putting back
removes the canary backend and gives production the weight it had (or none, if it had none), and
touches nothing else of the route, so a change its owner made meanwhile survives.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

Rules = list[dict[str, Any]]


class RouteError(ValueError):
    """The route cannot be split as asked; the message names the rule and what is wrong."""


def _is_service(ref: Mapping[str, Any]) -> bool:
    return ref.get("group", "") in ("", None) and ref.get("kind", "Service") == "Service"


def production_rules(rules: Sequence[Mapping[str, Any]], route: str, service: str,
                     canary: str) -> dict[int, str]:
    """{rule index: production Service} of the rules that send to `service`; RouteError if none does,
    or one also sends elsewhere (its split would not be the step's share)."""
    out: dict[int, str] = {}
    for i, rule in enumerate(rules):
        refs = [r for r in rule.get("backendRefs") or [] if not (_is_service(r) and r.get("name") == canary)]
        if not any(_is_service(r) and r.get("name") == service for r in refs):
            continue
        if len(refs) != 1:
            shown = ", ".join(sorted({str(r.get("name")) for r in refs}))[:200]
            raise RouteError(f"HTTPRoute {route!r} rule {i} sends to {shown} besides {service!r}: the canary "
                             "splits rules whose only backend is production")
        out[i] = service
    if not out:
        raise RouteError(f"HTTPRoute {route!r} has no rule that sends to Service {service!r}")
    return out


def split(rules: Sequence[Mapping[str, Any]], targets: Mapping[int, str], canary: str,
          weight: int) -> Rules:
    """The rules with each target rule sending `weight` percent to the canary Service."""
    out = copy.deepcopy([dict(r) for r in rules])
    for i, production in targets.items():
        refs = [r for r in out[i].get("backendRefs") or [] if not (_is_service(r) and r.get("name") == canary)]
        prod = next(r for r in refs if _is_service(r) and r.get("name") == production)
        prod["weight"] = 100 - weight
        twin = {k: v for k, v in prod.items() if k not in ("filters", "namespace")}  # canary: the route's namespace
        twin.update({"name": canary, "weight": weight})
        out[i]["backendRefs"] = [*refs, twin]
    return out


def original_weights(rules: Sequence[Mapping[str, Any]], targets: Mapping[int, str]) -> list[dict[str, Any]]:
    """What `restore` needs: each split rule's production weight before the first split (None: unset)."""
    return [{"rule": i, "service": name,
             "weight": next((r.get("weight") for r in rules[i].get("backendRefs") or []
                             if _is_service(r) and r.get("name") == name), None)}
            for i, name in sorted(targets.items())]


def restore(rules: Sequence[Mapping[str, Any]], weights: Sequence[Mapping[str, Any]], canary: str) -> Rules:
    """The rules without the canary backend, production at its original weight."""
    out = copy.deepcopy([dict(r) for r in rules])
    before = {int(w["rule"]): w for w in weights}
    for i, rule in enumerate(out):
        refs = [r for r in rule.get("backendRefs") or [] if not (_is_service(r) and r.get("name") == canary)]
        if i in before:
            for r in refs:
                if _is_service(r) and r.get("name") == before[i]["service"]:
                    if before[i]["weight"] is None:
                        r.pop("weight", None)
                    else:
                        r["weight"] = before[i]["weight"]
        if "backendRefs" in rule:
            rule["backendRefs"] = refs
    return out

