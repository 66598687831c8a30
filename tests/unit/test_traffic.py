"""HTTPRoute weights: a split sends exactly the step's share to the canary, and putting back is exact."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from modelrollout.core import traffic

names = st.sampled_from(["churn", "static", "api"])
ref = st.fixed_dictionaries({"name": names, "port": st.sampled_from([80, 8080])},
                            optional={"weight": st.integers(0, 1000), "kind": st.just("Service")})
rule = st.fixed_dictionaries({"backendRefs": st.lists(ref, min_size=1, max_size=3)},
                             optional={"matches": st.just([{"path": {"type": "PathPrefix", "value": "/v2"}}])})


@given(st.lists(rule, min_size=1, max_size=4), st.lists(st.integers(1, 100), min_size=1, max_size=4))
def test_every_split_is_exact_and_putting_back_restores_the_route(rules: list[dict[str, Any]],
                                                                  weights: list[int]) -> None:
    before = copy.deepcopy(rules)
    try:
        targets = traffic.production_rules(rules, "web", "churn", "churn-canary")
    except traffic.RouteError:  # no rule sends to churn, or one sends to churn and elsewhere: nothing is split
        sends = [[r["name"] for r in x["backendRefs"]] for x in rules]
        assert all("churn" not in s for s in sends) or any("churn" in s and len(s) > 1 for s in sends)
        return
    assert all([r["name"] for r in rules[i]["backendRefs"]] == ["churn"] for i in targets)
    kept = traffic.original_weights(rules, targets)
    now = rules
    for w in sorted(set(weights)):  # the steps, each applied to the route as the last step left it
        now = traffic.split(now, targets, "churn-canary", w)
        for i, r in enumerate(now):
            got = {b["name"]: b.get("weight") for b in r["backendRefs"]}
            if i in targets:
                assert got == {"churn": 100 - w, "churn-canary": w}
            else:
                assert r == before[i]  # rules that do not send to production are never touched
    assert traffic.restore(now, kept, "churn-canary") == before
    assert rules == before  # the input is never mutated


def test_the_canary_backend_copies_production_s_port_but_not_its_filters_or_namespace() -> None:
    rules = [{"backendRefs": [{"name": "churn", "namespace": "prod", "port": 81,
                               "filters": [{"type": "RequestHeaderModifier"}]}]}]
    targets = traffic.production_rules(rules, "web", "churn", "churn-canary")
    [r] = traffic.split(rules, targets, "churn-canary", 25)
    assert r["backendRefs"][1] == {"name": "churn-canary", "port": 81, "weight": 25}
