"""Replicas that fit, fleet throughput, replicas needed and cost: pure arithmetic, checked by hand."""

from __future__ import annotations

import pytest

from modelrollout.core.capacity import MIB, Node, ReplicaNeed, plan

GIB = 1024 * MIB


def nodes() -> list[Node]:
    return [
        Node("a", 8 * GIB, 4000, requested_memory_bytes=2 * GIB, labels={"pool": "ml"}),
        Node("b", 8 * GIB, 4000, labels={"pool": "ml"}),
        Node("c", 16 * GIB, 8000, labels={"pool": "web"}),
        Node("d", 64 * GIB, 8000, labels={"pool": "ml"}, schedulable=False),
    ]


def test_peak_plus_headroom_beats_a_smaller_request() -> None:
    need = ReplicaNeed(memory_request_bytes=512 * MIB, peak_memory_bytes=1000 * MIB, headroom_percent=20)
    assert need.memory_bytes == 1200 * MIB
    assert ReplicaNeed(memory_request_bytes=2 * GIB, peak_memory_bytes=1 * GIB).memory_bytes == 2 * GIB


def test_replicas_fit_per_node_honouring_selector_and_schedulability() -> None:
    need = ReplicaNeed(peak_memory_bytes=1000 * MIB, headroom_percent=20, node_selector={"pool": "ml"})
    cap = plan(nodes(), need)
    # a: 6 GiB free / 1200 MiB = 5; b: 8 GiB / 1200 MiB = 6; c has another pool; d is cordoned
    assert cap.per_node == {"a": 5, "b": 6}
    assert cap.replicas_fit == 11


def test_twice_the_memory_fits_half_the_replicas() -> None:
    small = plan(nodes()[1:2], ReplicaNeed(peak_memory_bytes=512 * MIB, headroom_percent=0))
    big = plan(nodes()[1:2], ReplicaNeed(peak_memory_bytes=1024 * MIB, headroom_percent=0))
    assert small.replicas_fit == 16 and big.replicas_fit == 8


def test_cpu_requests_and_pod_limits_also_bound() -> None:
    need = ReplicaNeed(memory_request_bytes=100 * MIB, cpu_request_millis=1500)
    assert plan([Node("x", 8 * GIB, 4000, requested_cpu_millis=500)], need).replicas_fit == 2
    assert plan([Node("x", 8 * GIB, 4000, max_pods=10, pods=9)], ReplicaNeed(100 * MIB)).replicas_fit == 1


def test_fleet_throughput_needed_replicas_and_cost() -> None:
    cap = plan(nodes()[1:2], ReplicaNeed(peak_memory_bytes=1024 * MIB, headroom_percent=0), rows_per_s=250,
               target_rps=1000.0 + 1, node_price_per_hour=0.9)
    assert cap.fleet_throughput_rps == 8 * 250
    assert cap.fleet_throughput_at_slo_rps is None
    assert cap.replicas_needed == 5
    # one node-hour serves 8 replicas * 250 predictions/s * 3600 s = 7.2M predictions for $0.90
    assert cap.cost_per_million_usd == pytest.approx(0.125)
    assert cap.figures()["replicas_fit"] == 8


def test_at_the_slo_the_fleet_is_sized_by_the_slo_rate() -> None:
    need = ReplicaNeed(peak_memory_bytes=1024 * MIB, headroom_percent=0)
    cap = plan(nodes()[1:2], need, rows_per_s=400, at_slo_rows_per_s=100, target_rps=1000, node_price_per_hour=0.9)
    assert (cap.fleet_throughput_rps, cap.fleet_throughput_at_slo_rps) == (8 * 400, 8 * 100)
    assert cap.replicas_needed == 10  # 1000 predictions/s at 100 each within the SLO, not 3 at 400
    assert cap.cost_per_million_usd == pytest.approx(0.9 / (8 * 100 * 3600) * 1e6)


def test_a_need_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="fits without bound"):
        plan(nodes(), ReplicaNeed())
