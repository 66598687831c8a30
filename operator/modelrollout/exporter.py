"""Figures and verdicts as Prometheus metrics, shared by the CLI and the operator.

Figure names carry their unit (`latency_p99_ms`); Prometheus wants base units, so the
exporter converts: `_ms` -> `_seconds`, `_mib` -> `_bytes`, `_percent` -> `_ratio`, `_s` -> `_seconds`,
`_rps` -> `_requests_per_second` (`_rows_per_second` for the figures counted in predictions: the throughput
at the SLO and the fleet's). Every figure is `modelrollout_<name>{rollout, namespace, variant}`; gates are
`modelrollout_gate_{value,threshold,passed}` with the gate's labels (`metric` as the spec names it, `unit` the
base unit its value and threshold are in: `latency_p99_ms` is in seconds). The load
sweep is `modelrollout_sweep_<figure>{rollout, namespace, variant, batch_size, concurrency}`, one
series per cell (at most the spec's 16 batch sizes x 17 concurrencies), and
`modelrollout_sweep_default_cell{rollout, namespace, batch_size, concurrency}` 1 marks the default cell.
The hold-out is `modelrollout_holdout_info{rollout, namespace, sha256, schema_sha256}` 1, with
`modelrollout_holdout_rows` and `modelrollout_holdout_size_bytes`: an alert can fire when a target's
hold-out digest changes between rollouts. The throughput-at-SLO search is `modelrollout_latency_slo_seconds`
(the SLO), `modelrollout_slo_batch_size` and `modelrollout_slo_offered_requests_per_second` (where the
headline was found) and `modelrollout_slo_rows_per_second{..., batch_size}` (each batch size's best, the
curve a dashboard draws).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Collection

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from modelrollout.core import groups
from modelrollout.core.figures import DATA
from modelrollout.core.report import Report
from modelrollout.core.sweep import CellFigures, Sweep

_UNITS = [(r"_mib_per_10k_requests$", "_bytes_per_10k_requests", 2.0**20), (r"_ms$", "_seconds", 1e-3),
          (r"_mib$", "_bytes", 2.0**20), (r"_percent$", "_ratio", 0.01), (r"_rps$", "_requests_per_second", 1.0),
          (r"_s$", "_seconds", 1.0)]
FIGURE_LABELS = ["rollout", "namespace", "variant"]
GATE_LABELS = ["rollout", "namespace", "gate", "metric", "bound", "dry_run", "unit"]
SWEEP_LABELS = ["rollout", "namespace", "variant", "batch_size", "concurrency"]
#: per-cell gauges of the sweep: name -> (help, the figure in its base unit)
SWEEP_FIGURES: dict[str, tuple[str, Callable[[CellFigures], float | None]]] = {
    "modelrollout_sweep_latency_per_sample_p99_seconds": (
        "p99 latency of a load cell per sample: a request's latency divided by its batch size.",
        lambda f: _scaled(f.per_sample_ms().get("p99"), 1e-3)),
    "modelrollout_sweep_latency_p99_seconds": ("p99 latency of a load cell per request.",
                                               lambda f: _scaled(f.latency_ms.get("p99"), 1e-3)),
    "modelrollout_sweep_rows_per_second": ("Rows (samples) per second a load cell answered.", lambda f: f.rows_per_s),
    "modelrollout_sweep_requests_per_second": ("Requests per second a load cell answered.",
                                               lambda f: f.throughput_rps),
    "modelrollout_sweep_error_ratio": ("Share of a load cell's requests that failed.",
                                       lambda f: _scaled(f.error_rate_percent, 0.01)),
}


#: figures in rows (predictions) per second, not requests: the name says so
ROWS_PER_SECOND = frozenset({"throughput_at_slo_rps", "fleet_throughput_rps", "fleet_throughput_at_slo_rps"})


def base_unit(figure: str) -> str:
    """The unit a figure's series hold (`latency_p99_ms` -> seconds), for the gates' `unit` label: a gate keeps
    the name the user wrote, its value and threshold are in base units."""
    name = prom_name(figure)[0]
    for unit in ("rows_per_second", "requests_per_second", "bytes_per_10k_requests", "seconds", "bytes", "ratio"):
        if name.endswith("_" + unit) and not figure.endswith("_" + unit):
            return unit
    return ""


def prom_name(figure: str) -> tuple[str, float]:
    """The Prometheus metric name of a figure and the factor to its base unit."""
    if figure in ROWS_PER_SECOND:
        return "modelrollout_" + figure.removesuffix("_rps") + "_rows_per_second", 1.0
    if figure == "disagreement_rate":  # a share of rows, not per second
        return "modelrollout_disagreement_ratio", 1.0
    prefix = "modelrollout_data_" if figure in DATA else "modelrollout_"  # the hold-out's: modelrollout_data_rows
    for pattern, repl, scale in _UNITS:
        if re.search(pattern, figure):
            return prefix + re.sub(pattern, repl, figure), scale
    return prefix + figure, 1.0


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
        self.sweep = {name: Gauge(name, doc, SWEEP_LABELS, registry=self.registry)
                      for name, (doc, _) in SWEEP_FIGURES.items()}
        self.sweep_default = Gauge("modelrollout_sweep_default_cell",
                                   "1 for the default cell of a rollout's load sweep (what gates naming no cell read).",
                                   ["rollout", "namespace", "batch_size", "concurrency"], registry=self.registry)
        self.holdout_info = Gauge("modelrollout_holdout_info", "1 for the hold-out the last evaluation scored on: "
                                  "the SHA-256 of its bytes and of its schema.",
                                  ["rollout", "namespace", "sha256", "schema_sha256"], registry=self.registry)
        self.holdout_rows = Gauge("modelrollout_holdout_rows", "Rows of the hold-out file the last evaluation read.",
                                  ["rollout", "namespace"], registry=self.registry)
        self.holdout_bytes = Gauge("modelrollout_holdout_size_bytes", "Size of the hold-out file, in bytes.",
                                   ["rollout", "namespace"], registry=self.registry)

        variant = ["rollout", "namespace", "variant"]
        self.slo = Gauge("modelrollout_latency_slo_seconds", "load.latencySLO: the p99 the throughput-at-SLO search "
                         "stays under.", ["rollout", "namespace"], registry=self.registry)
        self.slo_batch = Gauge("modelrollout_slo_batch_size", "The batch size with the most rows/s at the latency "
                               "SLO.", variant, registry=self.registry)
        self.slo_rate = Gauge("modelrollout_slo_offered_requests_per_second", "Requests/s offered (open loop) "
                              "where the throughput at the SLO was found.", variant, registry=self.registry)
        self.slo_by_batch = Gauge("modelrollout_slo_rows_per_second", "Rows/s at the latency SLO for one batch "
                                  "size (the first search).", [*variant, "batch_size"], registry=self.registry)

        self.group = Gauge("modelrollout_group_figure", "A quality figure of one group of a slice column (the "
                           "figures gates name per group; at most 20 groups per column).",
                           ["rollout", "namespace", "variant", "column", "group", "metric"], registry=self.registry)

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
            labels = (rollout, namespace, str(r.index), r.metric, r.bound, str(r.dry_run).lower(), base_unit(r.metric))
            if r.value is not None:
                self.gate_value.labels(*labels).set(r.value * scale)
            self.gate_threshold.labels(*labels).set(r.threshold * (0.01 if percent_bound else scale))
            self.gate_passed.labels(*labels).set(1.0 if r.passed else 0.0)
            self.gate_inconclusive.labels(*labels).set(1.0 if str(r.verdict) == "Inconclusive" else 0.0)
        self.promote.labels(rollout, namespace).set(1.0 if rep.decision.promote else 0.0)
        self._observe_sweep(rep.evidence.sweep, rollout, namespace)
        self._observe_holdout(rep, rollout, namespace)
        self._observe_slo(rep, rollout, namespace)
        self._observe_groups(rep, rollout, namespace)

    def _observe_groups(self, rep: Report, rollout: str, namespace: str) -> None:
        """Per-group figures, bounded as in status: 20 groups per slice column, the figures gates name per group."""
        keep = set()
        for col in groups.status_form(rep.candidate_quality, rep.baseline_quality, rep.task,
                                      [g.metric for g in rep.gates]):
            for g in col["groups"]:
                for variant in ("candidate", "baseline"):
                    for metric, v in (g[variant] or {}).items():
                        if v is not None:
                            labels = (rollout, namespace, variant, col["column"][:63], g["group"], metric)
                            self.group.labels(*labels).set(v)
                            keep.add(labels)
        forget_series([self.group], rollout, namespace, keep=keep)

    def _observe_slo(self, rep: Report, rollout: str, namespace: str) -> None:
        kept: dict[int, set[tuple[str, ...]]] = {id(g): set() for g in self._slo_gauges}
        for variant in ("candidate", "baseline"):
            d = (rep.details.get(variant) or {}).get("sloSearch") or {}
            if not d:
                continue
            for g, value in ((self.slo_batch, d.get("batchSize")), (self.slo_rate, d.get("rateRps"))):
                if isinstance(value, int | float) and math.isfinite(value):
                    g.labels(rollout, namespace, variant).set(value)
                    kept[id(g)].add((rollout, namespace, variant))
            for batch, rows in (d.get("byBatchSize") or {}).items():
                if isinstance(rows, int | float) and math.isfinite(rows):
                    self.slo_by_batch.labels(rollout, namespace, variant, str(batch)).set(rows)
                    kept[id(self.slo_by_batch)].add((rollout, namespace, variant, str(batch)))
            if isinstance(d.get("sloMs"), int | float):
                self.slo.labels(rollout, namespace).set(float(d["sloMs"]) * 1e-3)
                kept[id(self.slo)].add((rollout, namespace))
        for g in self._slo_gauges:
            forget_series([g], rollout, namespace, keep=kept[id(g)])

    @property
    def _slo_gauges(self) -> list[Gauge]:
        return [self.slo, self.slo_batch, self.slo_rate, self.slo_by_batch]

    def _observe_holdout(self, rep: Report, rollout: str, namespace: str) -> None:
        """One info series per rollout: the digest of a new file replaces the old one's."""
        h, keep = rep.holdout, set()
        if h.get("sha256"):
            labels = (rollout, namespace, str(h["sha256"]), str(h.get("schemaSha256", "")))
            self.holdout_info.labels(*labels).set(1.0)
            keep.add(labels)
            for g, key in ((self.holdout_rows, "rows"), (self.holdout_bytes, "bytes")):
                if h.get(key) is not None:
                    g.labels(rollout, namespace).set(float(h[key]))
        forget_series([self.holdout_info], rollout, namespace, keep=keep)

    def _observe_sweep(self, sw: Sweep | None, rollout: str, namespace: str) -> None:
        """One series per cell, variant and figure; a cell no longer swept (or without the figure) is dropped."""
        kept: dict[str, set[tuple[str, ...]]] = {name: set() for name in self.sweep}
        default: set[tuple[str, ...]] = set()
        if sw is not None:
            for variant, side in (("candidate", sw.candidate), ("baseline", sw.baseline or {})):
                for cell, f in side.items():
                    labels = (rollout, namespace, variant, str(cell.batch_size), str(cell.concurrency))
                    for name, (_, get) in SWEEP_FIGURES.items():
                        v = get(f)
                        if v is not None and math.isfinite(v):
                            self.sweep[name].labels(*labels).set(v)
                            kept[name].add(labels)
            d = (rollout, namespace, str(sw.default.batch_size), str(sw.default.concurrency))
            self.sweep_default.labels(*d).set(1.0)
            default.add(d)
        for name, g in self.sweep.items():
            forget_series([g], rollout, namespace, keep=kept[name])
        forget_series([self.sweep_default], rollout, namespace, keep=default)

    def forget(self, rollout: str, namespace: str) -> None:
        """Remove every series of a deleted rollout, so dashboards and alerts stop showing it."""
        forget_series([*self._figures.values(), self.gate_value, self.gate_threshold, self.gate_passed,
                       self.gate_inconclusive, self.promote, *self.sweep.values(), self.sweep_default,
                       self.holdout_info, self.holdout_rows, self.holdout_bytes, *self._slo_gauges, self.group],
                      rollout, namespace)


def forget_series(metrics: list[Gauge], rollout: str, namespace: str,
                  keep: Collection[tuple[str, ...]] = ()) -> None:
    """Remove the children of labelled gauges whose `rollout` and `namespace` labels match (but those in `keep`,
    label values in the gauge's label order)."""
    for metric in metrics:
        names = list(metric._labelnames)
        for family in metric.collect():
            for sample in family.samples:
                if sample.labels.get("rollout") == rollout and sample.labels.get("namespace") == namespace:
                    values = tuple(sample.labels[n] for n in names)
                    if values not in keep:
                        with contextlib.suppress(KeyError):
                            metric.remove(*values)


def _scaled(v: float | None, scale: float) -> float | None:
    return None if v is None else v * scale


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
