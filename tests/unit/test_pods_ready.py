"""Time to ready of staging pods, from the API's own condition times."""

from __future__ import annotations

from typing import Any

from modelrollout.core.pods import time_to_ready


def pod(scheduled: str, ready: str | None, status: str = "True") -> dict[str, Any]:
    conds: list[dict[str, Any]] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}]
    if ready is not None:
        conds.append({"type": "Ready", "status": status, "lastTransitionTime": ready})
    return {"status": {"conditions": conds}}


def test_the_slowest_ready_pod_counts() -> None:
    pods = [pod("2026-12-02T10:00:00Z", "2026-12-02T10:00:07Z"), pod("2026-12-02T10:00:01Z", "2026-12-02T10:01:31Z")]
    assert time_to_ready(pods) == 90.0


def test_pods_not_ready_yet_have_no_time() -> None:
    assert time_to_ready([pod("2026-12-02T10:00:00Z", None)]) is None
    assert time_to_ready([pod("2026-12-02T10:00:00Z", "2026-12-02T10:00:05Z", status="False")]) is None
    assert time_to_ready([]) is None
