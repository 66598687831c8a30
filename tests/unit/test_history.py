"""status.history: one bounded entry per ended attempt, and the comparison table of a target."""

from __future__ import annotations

from typing import Any

from modelrollout.core import history


def status(f1: float = 0.95, gates: tuple[str, ...] = ("f1",), generation: int = 1, attempt: str = "",
           run: str | None = "a" * 32) -> dict[str, Any]:
    return {
        "candidate": {"metrics": {"f1": f1, "roc_auc": 0.99, "latency_p99_ms": 4.0, "log_loss": 0.2},
                      "intervals": {"f1": {"low": f1 - 0.02, "high": f1 + 0.01}},
                      "deltaIntervals": {"f1": {"low": 0.01, "high": 0.05}}},
        "baseline": {"metrics": {"f1": 0.92, "roc_auc": 0.95}},
        "gates": [{"metric": g} for g in gates],
        "evaluation": {"outcome": "Promote", "generation": generation, "attempt": attempt,
                       "candidateImage": "reg/churn:9", "baselineImage": "reg/churn:8"},
        "holdout": {"sha256": "d" * 64, "rowsUsed": 228},
        "tracking": {"runId": run} if run else {},
    }


def test_an_entry_keeps_the_gated_figures_first_with_intervals_and_leaves_out_what_was_never_reached() -> None:
    e = history.entry("binary-classification", status(gates=("log_loss", "f1")), at="t", generation=1, attempt="",
                      result="Promoted", reason="Promoted")
    assert [f["name"] for f in e["figures"]] == ["log_loss", "f1", "roc_auc", "latency_p99_ms"]
    f1 = e["figures"][1]
    assert f1 == {"name": "f1", "candidate": 0.95, "low": 0.95 - 0.02, "high": 0.95 + 0.01, "baseline": 0.92,
                  "deltaLow": 0.01, "deltaHigh": 0.05}
    assert e["figures"][3] == {"name": "latency_p99_ms", "candidate": 4.0}  # no baseline figure: no difference
    assert (e["candidateImage"], e["holdoutSha256"], e["mlflowRunId"]) == ("reg/churn:9", "d" * 64, "a" * 32)
    failed = history.entry("regression", {}, at="t", generation=2, attempt="7", result="Failed",
                           reason="HoldoutRefused")
    assert failed == {"at": "t", "generation": 2, "attempt": "7", "result": "Failed", "reason": "HoldoutRefused"}


def test_figures_are_capped_whatever_the_gates_name() -> None:
    st = status(gates=tuple(f"g{i}" for i in range(20)))
    st["candidate"]["metrics"].update({f"g{i}": float(i) for i in range(20)})
    names = [f["name"] for f in history.figures("binary-classification", st)]
    assert names == [f"g{i}" for i in range(history.MAX_FIGURES)]


def test_push_is_newest_first_bounded_and_replaces_the_same_attempt() -> None:
    h: list[dict[str, Any]] = []
    for gen in range(1, 6):
        h = history.push(h, {"generation": gen, "attempt": "", "result": "Promoted"}, limit=3)
    assert [e["generation"] for e in h] == [5, 4, 3]
    h = history.push(h, {"generation": 5, "attempt": "", "result": "RolledBack"}, limit=3)  # an undo
    assert [(e["generation"], e["result"]) for e in h] == [(5, "RolledBack"), (4, "Promoted"), (3, "Promoted")]
    h = history.push(h, {"generation": 5, "attempt": "1733", "result": "Failed"}, limit=3)  # a retry: a new one
    assert [(e["generation"], e["attempt"]) for e in h] == [(5, "1733"), (5, ""), (4, "")]
    assert history.push(h, {"generation": 6, "attempt": ""}, limit=0) == []


def test_a_late_run_id_goes_to_its_own_attempt_only() -> None:
    h = [{"generation": 1, "attempt": "", "result": "RolledBack"}]
    assert history.with_run(h, status()) == [{"generation": 1, "attempt": "", "result": "RolledBack",
                                             "mlflowRunId": "a" * 32}]
    assert history.with_run(h, status(attempt="99")) is None  # tracked a newer attempt, not ended yet
    assert history.with_run(h, status(run=None)) is None
    assert history.with_run([{**h[0], "mlflowRunId": "b"}], status()) is None


def test_the_table_sets_attempts_side_by_side_figure_by_figure() -> None:
    old = history.entry("binary-classification", status(f1=0.91), at="2026-12-01T00:00:00Z", generation=1,
                        attempt="", result="RolledBack", reason="GatesFailed")
    new = history.entry("binary-classification", status(f1=0.95), at="2026-12-02T00:00:00Z", generation=1,
                        attempt="", result="Promoted", reason="Promoted")
    new["holdoutSha256"] = "e" * 64
    lines = history.render("Deployment ml/churn", [("churn-v8", old), ("churn-v9", new)])
    text = "\n".join(lines)
    assert lines[0] == "Deployment ml/churn: 2 attempts, newest first"
    assert lines[2].startswith("churn-v9") and lines[3].startswith("churn-v8")  # newest first
    assert "note: 2 different hold-outs" in text
    assert "churn-v9  1    -        0.95 [0.93, 0.96]  0.92      +0.03 [+0.01, +0.05]" in text, text
    assert "churn-v8  1    -        0.91 [0.89, 0.92]  0.92      -0.01 [+0.01, +0.05]" in text, text
    assert history.render("Deployment ml/x", []) == ["no ended rollouts of Deployment ml/x in history"]
