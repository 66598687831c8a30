"""A report folder: JSON, Markdown and an HTML page with plots of both models."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from modelrollout.core.report import (
    HEADER,
    SWEEP_HEADER,
    Report,
    notes,
    rows,
    sweep_legend,
    sweep_rows,
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


def write_report_dir(rep: Report, folder: Path, plots: dict[str, str]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md", "html": folder / "index.html"}
    paths["json"].write_text(json.dumps(to_json(rep), indent=2) + "\n")
    paths["markdown"].write_text(to_markdown(rep))
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
    paths["html"].write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>modelrollout report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}
.Pass{{color:#080}}.Fail{{color:#b00;font-weight:bold}}.Inconclusive{{color:#b60}}
.promote{{color:#080}}.reject{{color:#b00}}</style></head><body>
<h1>Decision: <span class="{verdict}">{html.escape(str(rep.decision.outcome))}</span></h1>
<p>{html.escape(rep.decision.reason)}</p><table><tr>{head}</tr>{table}</table>{sweep}{imgs}
</body></html>
""")
    return paths
