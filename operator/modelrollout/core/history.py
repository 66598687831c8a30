"""status.history: the last evaluations of a rollout, kept across retries and spec changes.

A retry or a spec change wipes the figures of the attempt before it; the history keeps one
bounded entry per attempt (who, which hold-out, what was decided, the headline figures with
their intervals, the MLflow run), so `kubectl modelrollout history TARGET` can set v7, v8 and v9
side by side on the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from modelrollout.core.figures import Task

DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 50
MAX_FIGURES: Final = 12  # per entry: the gated figures first, then the task's headline ones
IMAGE_CHARS: Final = 300
HEADLINE: Final[dict[str, tuple[str, ...]]] = {
    "binary-classification": ("f1", "roc_auc", "accuracy"),
    "multiclass-classification": ("accuracy", "f1_macro"),
    "regression": ("rmse", "mae", "r2"),
}
SYSTEM_HEADLINE: Final = ("latency_p99_ms", "throughput_at_slo_rps", "memory_peak_mib", "replicas_fit")


def figure_names(task: Task, gated: Sequence[str], have: Mapping[str, float]) -> list[str]:
    """Which figures an entry keeps: the gates' metrics, then the headline ones, those measured, capped."""
    out: list[str] = []
    for name in [*gated, *HEADLINE[task], *SYSTEM_HEADLINE]:
        if name in have and name not in out:
            out.append(name)
    return out[:MAX_FIGURES]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def figures(task: Task, status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The entry's figures from the evaluation's status record: candidate with its interval,
    baseline, and the paired difference with its interval."""
    cand = (status.get("candidate") or {})
    metrics = cand.get("metrics") or {}
    base = (status.get("baseline") or {}).get("metrics") or {}
    gated = [str(g.get("metric")) for g in status.get("gates") or [] if g.get("metric")]
    out = []
    for name in figure_names(task, gated, metrics):
        row: dict[str, Any] = {"name": name, "candidate": _num(metrics.get(name))}
        iv = (cand.get("intervals") or {}).get(name) or {}
        row.update({"low": _num(iv.get("low")), "high": _num(iv.get("high"))})
        if _num(base.get(name)) is not None:
            row["baseline"] = _num(base[name])
            d = (cand.get("deltaIntervals") or {}).get(name) or {}
            row.update({"deltaLow": _num(d.get("low")), "deltaHigh": _num(d.get("high"))})
        out.append({k: v for k, v in row.items() if v is not None})
    return out


def entry(task: Task | None, status: Mapping[str, Any], *, at: str, generation: int, attempt: str, result: str,
          reason: str) -> dict[str, Any]:
    """One attempt, as it ended; fields it never reached (no evaluation, no run) are left out."""
    ev = status.get("evaluation") or {}
    hold = status.get("holdout") or {}
    run = status.get("tracking") or {}
    e: dict[str, Any] = {
        "at": at, "generation": generation, "attempt": attempt, "result": result, "reason": reason,
        "outcome": ev.get("outcome"),
        "candidateImage": str(ev.get("candidateImage") or "")[:IMAGE_CHARS] or None,
        "baselineImage": str(ev.get("baselineImage") or "")[:IMAGE_CHARS] or None,
        "holdoutSha256": hold.get("sha256"), "holdoutRows": hold.get("rowsUsed"),
        "mlflowRunId": run.get("runId"),
        "figures": figures(task, status) if task is not None and status.get("candidate") else None,
    }
    return {k: v for k, v in e.items() if v not in (None, [], "")} | {"attempt": attempt}


def same_attempt(a: Mapping[str, Any], generation: int, attempt: str) -> bool:
    return a.get("generation") == generation and str(a.get("attempt", "")) == attempt


def push(history: Sequence[Mapping[str, Any]] | None, new: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    """Newest first, at most `limit`; an entry of the same attempt (an undo after a promotion) is replaced."""
    old = [dict(h) for h in history or [] if not same_attempt(h, int(new["generation"]), str(new["attempt"]))]
    return [dict(new), *old][:max(0, limit)]


def with_run(history: Sequence[Mapping[str, Any]] | None, status: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The history with the MLflow run id of the newest entry filled in when tracking finished after the
    decision (it never holds a decision up); None when nothing changes."""
    run = (status.get("tracking") or {}).get("runId")
    if not history or not run or history[0].get("mlflowRunId"):
        return None
    ev = status.get("evaluation") or {}
    if not same_attempt(history[0], int(ev.get("generation") or 0), str(ev.get("attempt") or "")):
        return None  # the run is of a newer attempt, whose entry is not written yet
    return [{**history[0], "mlflowRunId": run}, *[dict(h) for h in history[1:]]]


def _g(v: Any, sign: str = "") -> str:
    return "-" if _num(v) is None else f"{float(v):{sign}.4g}"


def _iv(low: Any, high: Any, sign: str = "") -> str:
    return "" if _num(low) is None or _num(high) is None else f" [{_g(low, sign)}, {_g(high, sign)}]"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render(target: str, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """The comparison table of one target's attempts (rollout name, entry), newest first: one row per
    attempt, then each figure attempt by attempt with its interval, the baseline and the paired difference."""
    if not entries:
        return [f"no ended rollouts of {target} in history"]
    ordered = sorted(entries, key=lambda e: str(e[1].get("at", "")), reverse=True)
    lines = [f"{target}: {len(ordered)} attempts, newest first"]
    lines += _columns([["ROLLOUT", "GEN", "ATTEMPT", "ENDED", "RESULT", "REASON", "CANDIDATE", "HOLD-OUT", "ROWS",
                        "MLFLOW RUN"]] + [
        [n, str(e.get("generation", "")), str(e.get("attempt") or "-"), str(e.get("at", "")), str(e.get("result", "")),
         str(e.get("reason", "")), str(e.get("candidateImage", "-")), str(e.get("holdoutSha256", "-"))[:12],
         str(e.get("holdoutRows", "-")), str(e.get("mlflowRunId", "-"))] for n, e in ordered])
    digests = {e.get("holdoutSha256") for _, e in ordered if e.get("holdoutSha256")}
    if len(digests) > 1:
        lines.append(f"note: {len(digests)} different hold-outs (HOLD-OUT): only rows with the same digest were "
                     "scored on the same data")
    names: list[str] = []
    for _, e in ordered:
        names += [f["name"] for f in e.get("figures") or [] if f["name"] not in names]
    for name in names:
        lines += ["", f"{name}: candidate [95% interval], baseline, candidate - baseline [paired 95% interval]"]
        rows = [["ROLLOUT", "GEN", "ATTEMPT", "CANDIDATE", "BASELINE", "DIFFERENCE"]]
        for n, e in ordered:
            f = next((f for f in e.get("figures") or [] if f["name"] == name), None)
            if f is None:
                continue
            both = _num(f.get("baseline")) is not None and _num(f.get("candidate")) is not None
            diff = (_g(float(f["candidate"]) - float(f["baseline"]), "+") + _iv(f.get("deltaLow"), f.get("deltaHigh"),
                                                                                "+") if both else "-")
            rows.append([n, str(e.get("generation", "")), str(e.get("attempt") or "-"),
                         _g(f.get("candidate")) + _iv(f.get("low"), f.get("high")), _g(f.get("baseline")), diff])
        lines += _columns(rows)
    return lines
