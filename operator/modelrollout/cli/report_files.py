"""A report folder: JSON, Markdown and an HTML page with plots of both models."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from modelrollout.core import groups
from modelrollout.core.report import (
    HEADER,
    LEGEND,
    SWEEP_HEADER,
    Report,
    notes,
    rows,
    sweep_legend,
    sweep_rows,
    tables,
    to_json,
    to_markdown,
)

COLORS = {"candidate": "#1f77b4", "baseline": "#7f7f7f"}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def curves_plot(y_true: np.ndarray, scores: dict[str, np.ndarray]) -> str:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for label, s in scores.items():
        fpr, tpr, _ = roc_curve(y_true, s)
        prec, rec, _ = precision_recall_curve(y_true, s)
        a.plot(fpr, tpr, label=label, color=COLORS.get(label))
        b.plot(rec, prec, label=label, color=COLORS.get(label))
    a.plot([0, 1], [0, 1], ":", color="#ccc")
    a.set(title="ROC curve", xlabel="false positive rate", ylabel="true positive rate")
    b.set(title="Precision-recall curve", xlabel="recall", ylabel="precision")
    a.legend()
    b.legend()
    return _png(fig)


def sweep_plot(sweeps: dict[str, list[dict[str, Any]]]) -> str:
    """p99 and rows/s against batch size, one line per variant and concurrency."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    styles = ["o-", "s--", "^:", "d-."]
    for label, sw in sweeps.items():
        concurrencies = list(dict.fromkeys(r["concurrency"] for r in sw))
        for i, c in enumerate(concurrencies):
            done = sorted((r for r in sw if r["requests"] and r["concurrency"] == c), key=lambda r: r["batch_size"])
            bs, style, name = [r["batch_size"] for r in done], styles[i % len(styles)], f"{label} c={c}"
            a.plot(bs, [r["latency_ms"]["p99"] for r in done], style, label=f"{name} p99", color=COLORS.get(label))
            b.plot(bs, [r["rows_per_s"] for r in done], style, label=name, color=COLORS.get(label))
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.legend()
    a.set(title="Latency against batch size", xlabel="batch size", ylabel="ms")
    b.set(title="Throughput against batch size", xlabel="batch size", ylabel="predictions / s")
    return _png(fig)


def memory_plot(timelines: dict[str, list[tuple[float, float]]]) -> str:
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for label, tl in timelines.items():
        if tl:
            ax.plot([t for t, _ in tl], [m for _, m in tl], label=label, color=COLORS.get(label))
    ax.set(title="Resident memory during load", xlabel="seconds", ylabel="MiB")
    ax.legend()
    return _png(fig)


def confusion_plot(matrices: dict[str, list[list[int]]]) -> str:
    """Each variant's confusion matrix (rows: the true class, columns: the predicted one), counts in the cells."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.5 * len(matrices), 4), squeeze=False)
    for ax, (label, cm) in zip(axes[0], matrices.items(), strict=True):
        m = np.asarray(cm)
        ax.imshow(m, cmap="Blues")
        for (i, j), n in np.ndenumerate(m):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > m.max() / 2 else "black")
        ax.set(title=f"{label}: confusion matrix", xlabel="predicted class (index)", ylabel="true class (index)",
               xticks=range(m.shape[1]), yticks=range(m.shape[0]))
    return _png(fig)


def binary_scores(labels: Any, measured: Mapping[str, Any], positive: Any = None) -> tuple[
        np.ndarray | None, dict[str, np.ndarray]]:
    """(y as 0/1, each variant's positive-class probability) for ROC and PR, from the servers' answers;
    the positive class is `positive`, else the second of the classes the server named (or index 1)."""
    y: np.ndarray | None = None
    scores: dict[str, np.ndarray] = {}
    truth = np.asarray([str(v) for v in labels])
    for label, m in measured.items():
        proba = m.prediction.proba
        if proba is None or proba.ndim != 2 or proba.shape[1] != 2:
            continue
        classes = [str(c) for c in (m.classes or [])]
        pos = str(positive) if positive is not None else (classes[1] if len(classes) == 2 else None)
        col = classes.index(pos) if pos in classes else 1
        y = (truth == pos).astype(int) if pos is not None else np.asarray(labels).astype(int)
        scores[label] = proba[:, col]
    return (y, scores) if scores else (None, {})


def report_plots(rep: Report, y_true: np.ndarray | None = None,
                 scores: dict[str, np.ndarray] | None = None) -> dict[str, str]:
    """The plots every entry point draws from a report (and, for ROC and PR, the binary scores it has)."""
    out: dict[str, str] = {}
    if rep.task == "binary-classification" and y_true is not None and scores:
        out["ROC and precision-recall curves"] = curves_plot(y_true, scores)
    matrices = {label: q.confusion for label, q in (("candidate", rep.candidate_quality),
                                                    ("baseline", rep.baseline_quality))
                if q is not None and q.confusion}
    if matrices:
        out["Confusion matrices"] = confusion_plot(matrices)
    sweeps = {v: rep.details[v]["sweep"] for v in ("candidate", "baseline") if (rep.details.get(v) or {}).get("sweep")}
    if sweeps:
        out["Latency and throughput against batch size"] = sweep_plot(sweeps)
    timelines = {v: rep.details[v]["memoryTimeline"] for v in ("candidate", "baseline")
                 if (rep.details.get(v) or {}).get("memoryTimeline")}
    if timelines:
        out["Memory over time"] = memory_plot(timelines)
    by_group = groups_plot(rep)
    if by_group:
        out["By group"] = by_group
    drift = rep.details.get("drift")
    if drift and drift.get("features"):
        out["Drift by feature"] = drift_plot(drift)
    return out


def drift_plot(drift: Mapping[str, Any]) -> str:
    """PSI per feature, the most drifted first, against the threshold."""
    feats = drift["features"][:20]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(feats) + 1.2))
    ax.barh([f["feature"][:30] for f in feats][::-1], [f["psi"] or 0 for f in feats][::-1],
            color=["#b00" if f["drifted"] else COLORS["candidate"] for f in feats][::-1])
    ax.axvline(drift["psiThreshold"], color="#444", linestyle="--", label=f"threshold {drift['psiThreshold']:g}")
    ax.set_xlabel("PSI (hold-out against the reference)")
    ax.legend(fontsize=8)
    return _png(fig)


def _table(header: list[str], body: list[list[str]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
            + "</table>")


def _pair(a: float | None, b: float | None) -> str:
    return " / ".join("-" if v is None else f"{v:.4g}" for v in (a, b))


def slice_tables(rep: Report) -> str:
    """Per group of each slice column: rows, and the figures the gates name per group, both models."""
    return "".join(f"<h2>{html.escape(title[:1].upper() + title[1:])}</h2>" + _table(header, body)
                   for title, header, body in tables(rep))


def groups_plot(rep: Report) -> str | None:
    """One bar per group of each slice column for the first shown figure, the candidate beside the baseline."""
    cand = rep.candidate_quality
    if cand is None or not cand.slices:
        return None
    metric = groups.shown_metrics(rep.task, [g.metric for g in rep.gates])[0]
    base = {s.column: s for s in (rep.baseline_quality.slices if rep.baseline_quality else [])}
    fig, axes = plt.subplots(1, len(cand.slices[:4]), figsize=(4.5 * len(cand.slices[:4]), 3.2), squeeze=False)
    for ax, s in zip(axes[0], cand.slices[:4], strict=False):
        names = list(s.groups)[:20]
        x = np.arange(len(names))
        variants = [("candidate", s)] + ([("baseline", base[s.column])] if s.column in base else [])
        width = 0.8 / len(variants)
        for i, (who, sl) in enumerate(variants):
            vals = [(sl.groups.get(g) or {}).get(metric, np.nan) for g in names]
            ax.bar(x + i * width, vals, width, label=who, color=COLORS[who])
        ax.set_xticks(x + width * (len(variants) - 1) / 2, [n[:12] for n in names], rotation=30, ha="right")
        ax.set_title(f"{metric} by {s.column[:30]}")
        ax.legend(fontsize=8)
    return _png(fig)


def provenance(rep: Report, extra: dict[str, str] | None = None) -> list[list[str]]:
    """What the figures are of: models, hold-out, gates, versions."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("modelrollout")
    except PackageNotFoundError:
        ours = "unknown"
    rows_ = [[k, v] for k, v in (extra or {}).items()]
    h = rep.holdout
    if h:
        rows_ += [["hold-out sha256", str(h.get("sha256", ""))],
                  ["hold-out rows (scored)", f"{h.get('rows', '')} ({h.get('rowsUsed', '')})"],
                  ["hold-out schema sha256", str(h.get("schemaSha256", ""))]]
    rows_ += [[f"gate {g.index}", f"{g.metric} {g.bound} {g.threshold:g}{' (dry run)' if g.dry_run else ''}"]
              for g in rep.gates]
    rows_ += [["modelrollout", ours], ["python", platform.python_version()]]
    return rows_


def write_report_dir(rep: Report, folder: Path, plots: dict[str, str],
                     about: dict[str, str] | None = None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md", "html": folder / "index.html"}
    paths["json"].write_text(json.dumps(to_json(rep), indent=2) + "\n")
    paths["markdown"].write_text(to_markdown(rep))
    paths["html"].write_text(render_html(rep, plots, about))
    return paths


def render_html(rep: Report, plots: dict[str, str], about: dict[str, str] | None = None) -> str:
    """The one HTML report every entry point writes: the CLI's folder, the operator's ConfigMap, MLflow."""
    table = "".join(
        "<tr>" + "".join(f"<td class='{html.escape(c)}'>{html.escape(c)}</td>" for c in r) + "</tr>"
        for r in rows(rep))
    head = "".join(f"<th>{h}</th>" for h in HEADER)
    sw = rep.evidence.sweep
    sweep = "" if sw is None else (
        "<h2>Load sweep</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in SWEEP_HEADER) + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in sweep_rows(sw))
        + f"</table><p>{html.escape(sweep_legend(sw))}</p>")
    sweep += "".join(f"<p>{html.escape(line)}</p>" for line in notes(rep))
    imgs = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>"
                   for title, b64 in plots.items())
    verdict = "promote" if rep.decision.promote else "reject"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>modelrollout report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}
.Pass{{color:#080}}.Fail{{color:#b00;font-weight:bold}}.Inconclusive{{color:#b60}}
.promote{{color:#080}}.reject{{color:#b00}}</style></head><body>
<h1>Decision: <span class="{verdict}">{html.escape(str(rep.decision.outcome))}</span></h1>
<p>{html.escape(rep.decision.reason)}</p><table><tr>{head}</tr>{table}</table>
<p>{html.escape(LEGEND)}</p>{sweep}{slice_tables(rep)}{imgs}
<h2>Provenance</h2>{_table(["what", "value"], provenance(rep, about))}
</body></html>
"""
