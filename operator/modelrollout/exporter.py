"""Figures and verdicts as Prometheus metrics, shared by the CLI and the operator.

Figure names carry their unit (`latency_p99_ms`); Prometheus wants base units, so the
exporter converts: `_ms` -> `_seconds`, `_mib` -> `_bytes`, `_percent` -> `_ratio`, `_s` -> `_seconds`,
`_rps` -> `_requests_per_second`. Every figure is `modelrollout_<name>{rollout, namespace,
variant}`; gates are `modelrollout_gate_{value,threshold,passed}` with the gate's labels.
"""

from __future__ import annotations

import contextlib
import math
import re

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from modelrollout.core.report import Report

_UNITS = [(r"_mib_per_10k_requests$", "_bytes_per_10k_requests", 2.0**20), (r"_ms$", "_seconds", 1e-3),
          (r"_mib$", "_bytes", 2.0**20), (r"_percent$", "_ratio", 0.01), (r"_rps$", "_requests_per_second", 1.0),
          (r"_s$", "_seconds", 1.0)]
FIGURE_LABELS = ["rollout", "namespace", "variant"]
GATE_LABELS = ["rollout", "namespace", "gate", "metric", "bound", "dry_run"]


def prom_name(figure: str) -> tuple[str, float]:
    """The Prometheus metric name of a figure and the factor to its base unit."""
    for pattern, repl, scale in _UNITS:
        if re.search(pattern, figure):
            return "modelrollout_" + re.sub(pattern, repl, figure), scale
    return "modelrollout_" + figure, 1.0


class FigureExporter:
    """Holds the gauges; `observe` sets them from one report."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._figures: dict[str, Gauge] = {}
        self.gate_value = self._gate("value", "The value a gate saw (in the figure's base unit).")
        self.gate_threshold = self._gate("threshold", "A gate's threshold (in the figure's base unit).")
        self.gate_passed = self._gate("passed", "1 if the gate passed, 0 if it failed or was inconclusive.")
        self.gate_inconclusive = self._gate("inconclusive", "1 if the gate had no data or not enough evidence.")
        self.promote = Gauge("modelrollout_decision_promote", "1 if the decision is to promote, else 0.",
                             ["rollout", "namespace"], registry=self.registry)

    def _gate(self, name: str, doc: str) -> Gauge:
        return Gauge(f"modelrollout_gate_{name}", doc, GATE_LABELS, registry=self.registry)

    def _figure(self, name: str) -> tuple[Gauge, float]:
        metric, scale = prom_name(name)
        if metric not in self._figures:
            self._figures[metric] = Gauge(metric, f"Figure {name} of a model variant (base units).", FIGURE_LABELS,
                                          registry=self.registry)
        return self._figures[metric], scale

    def observe(self, rep: Report, rollout: str, namespace: str) -> None:
        for variant, figs in (("candidate", rep.evidence.candidate), ("baseline", rep.evidence.baseline or {})):
            for name, value in figs.items():
                if value is not None and math.isfinite(value):
                    g, scale = self._figure(name)
                    g.labels(rollout, namespace, variant).set(value * scale)
        for r in rep.gates:
            _, scale = prom_name(r.metric)
            percent_bound = r.bound.endswith("Percent")
            labels = (rollout, namespace, str(r.index), r.metric, r.bound, str(r.dry_run).lower())
            if r.value is not None:
                self.gate_value.labels(*labels).set(r.value * scale)
            self.gate_threshold.labels(*labels).set(r.threshold * (0.01 if percent_bound else scale))
            self.gate_passed.labels(*labels).set(1.0 if r.passed else 0.0)
            self.gate_inconclusive.labels(*labels).set(1.0 if str(r.verdict) == "Inconclusive" else 0.0)
        self.promote.labels(rollout, namespace).set(1.0 if rep.decision.promote else 0.0)


    def forget(self, rollout: str, namespace: str) -> None:
        """Remove every series of a deleted rollout, so dashboards and alerts stop showing it."""
        forget_series([*self._figures.values(), self.gate_value, self.gate_threshold, self.gate_passed,
                       self.gate_inconclusive, self.promote], rollout, namespace)


def forget_series(metrics: list[Gauge], rollout: str, namespace: str) -> None:
    """Remove the children of labelled gauges whose `rollout` and `namespace` labels match."""
    for metric in metrics:
        names = list(metric._labelnames)
        for family in metric.collect():
            for sample in family.samples:
                if sample.labels.get("rollout") == rollout and sample.labels.get("namespace") == namespace:
                    with contextlib.suppress(KeyError):
                        metric.remove(*(sample.labels[n] for n in names))


def export(rep: Report, rollout: str, namespace: str, *, metrics_file: str | None = None,
           pushgateway: str | None = None) -> None:
    if not metrics_file and not pushgateway:
        return
    ex = FigureExporter()
    ex.observe(rep, rollout, namespace)
    if metrics_file:
        write_to_textfile(metrics_file, ex.registry)
    if pushgateway:
        push_to_gateway(pushgateway, job="modelrollout", registry=ex.registry,
                        grouping_key={"rollout": rollout, "namespace": namespace})
