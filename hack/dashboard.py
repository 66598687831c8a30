"""Build the Grafana dashboard with grafana-foundation-sdk (never hand-edited JSON).

    .venv/bin/python hack/dashboard.py > charts/modelrollout/files/dashboard.json

A test rebuilds it and compares, and checks every query against a real Prometheus.
"""

from __future__ import annotations

import json

from grafana_foundation_sdk.builders import (
    barchart,
    dashboard,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
    xychart,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, DataTransformerConfig, DynamicConfigValue
from grafana_foundation_sdk.models.prometheus import PromQueryFormat
from grafana_foundation_sdk.models.xychart import ScatterShow, SeriesMapping

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'namespace=~"$namespace", rollout=~"$rollout"'
FIGURES = ["f1", "accuracy", "roc_auc", "rmse", "latency_p99_seconds", "throughput_requests_per_second",
           "memory_peak_bytes", "replicas_fit"]


def q(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend)


def queries() -> dict[str, list[str]]:
    """Every PromQL expression of the dashboard, by panel title (for the tests)."""
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in json.loads(render())["panels"] if p.get("targets")}


#: the figures' Grafana units: quality scores are ratios in [0, 1]
UNITS = {"f1": "percentunit", "accuracy": "percentunit", "roc_auc": "percentunit", "rmse": "short",
         "latency_p99_seconds": "s", "throughput_requests_per_second": "reqps", "memory_peak_bytes": "bytes",
         "replicas_fit": "none"}


def instant(expr: str, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).instant().format(PromQueryFormat.TABLE).ref_id(ref)


#: (title, kind, unit, queries); a table's instant queries are joined into one frame on their labels
PANELS: list[tuple[str, str, str, list[prometheus.Dataquery]]] = [
    ("Phase per rollout", "state", "none", [q(
        f"max by (namespace, rollout, phase) (modelrollout_rollout_phase{{{SEL}}}) == 1",
        "{{namespace}}/{{rollout}}: {{phase}}")]),
    ("Decisions over time", "timeseries", "short", [q('sum by (result) (increase(modelrollout_decisions_total'
                                                      '{namespace=~"$namespace"}[1h]))', "{{result}}")]),
    ("Gate verdicts", "table", "none", [instant(f"modelrollout_gate_{ref}{{{SEL}}}", ref)
                                        for ref in ("passed", "value", "threshold")]),
    ("Latency percentiles", "timeseries", "s", [
        q(f"modelrollout_latency_{p}_seconds{{{SEL}}}", "{{rollout}} {{variant}} " + p)
        for p in ("p50", "p90", "p99", "p999")]),
    ("Canary live gates: value per step and variant", "timeseries", "short", [
        q(f"modelrollout_canary_gate_value{{{SEL}}}", "{{rollout}} {{gate}} step {{step}} {{variant}}"),
        q(f"modelrollout_canary_gate_threshold{{{SEL}}}", "{{rollout}} {{gate}} {{bound}}")]),
    ("Canary measurements by verdict", "table", "none", [
        instant(f"modelrollout_canary_gate_measurements{{{SEL}}}", "measurements")]),
    ("Replicas that fit", "stat", "none", [q(f"modelrollout_replicas_fit{{{SEL}}}", "{{rollout}} {{variant}}")]),
    *[(f"Candidate vs baseline: {f}", "timeseries", UNITS[f], [q(f"modelrollout_{f}{{{SEL}}}",
                                                                "{{rollout}} {{variant}}")]) for f in FIGURES],
]


def joined(refs: list[str]) -> list[DataTransformerConfig]:
    """One table from several instant queries: rows joined on their labels, a column per query."""
    return [DataTransformerConfig(id_val="merge", options={}),
            DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"Time": True, "__name__": True},
                "renameByName": {f"Value #{r}": r for r in refs}})]


# --- the load sweep: batch size x concurrency, one point per cell and variant (at the last evaluation) ----
#: refId -> (metric, column, Grafana unit)
SWEEP = {"p99s": ("modelrollout_sweep_latency_per_sample_p99_seconds", "p99 per sample", "s"),
         "rows": ("modelrollout_sweep_rows_per_second", "rows/s", "rowsps"),
         "rps": ("modelrollout_sweep_requests_per_second", "requests/s", "reqps"),
         "err": ("modelrollout_sweep_error_ratio", "errors", "percentunit"),
         "p99": ("modelrollout_sweep_latency_p99_seconds", "p99 per request", "s")}


def sweep_target(ref: str, variant: str | None = None) -> prometheus.Dataquery:
    """An instant query as a table: one row per cell, its labels as columns, joined with the others by `merge`."""
    sel = SEL + (f', variant="{variant}"' if variant else "")
    return prometheus.Dataquery().expr(f"{SWEEP[ref][0]}{{{sel}}}").instant().format(PromQueryFormat.TABLE).ref_id(ref)


def sweep_columns(refs: list[str]) -> list[DataTransformerConfig]:
    return [DataTransformerConfig(id_val="merge", options={}),
            DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"Time": True, "__name__": True},
                "renameByName": {f"Value #{r}": SWEEP[r][1] for r in refs}})]


def sweep_panels() -> list[table.Panel | xychart.Panel]:
    """Latency against throughput per variant (each point a cell: x rows/s, y p99 per sample), and the table."""
    out: list[table.Panel | xychart.Panel] = []
    for variant in ("candidate", "baseline"):
        p = (xychart.Panel().title(f"Load sweep, {variant}: p99 per sample vs rows/s (a point per cell)")
             .description("Each point is one batch size x concurrency cell of the last evaluation; hover for its "
                          "batch_size and concurrency. Down and to the right is better.")
             .datasource(DS).height(8).span(12).series_mapping(SeriesMapping.AUTO)
             .dims(xychart.XYDimensionConfig().x("rows/s")).show(ScatterShow.POINTS).unit("s")
             .override_by_name("rows/s", [DynamicConfigValue(id_val="unit", value="rowsps")]))
        for ref in ("rows", "p99s"):
            p = p.with_target(sweep_target(ref, variant))
        for tr in sweep_columns(["rows", "p99s"]):
            p = p.with_transformation(tr)
        out.append(p)
    cells = (table.Panel().title("Load sweep: every cell, candidate and baseline").datasource(DS).height(8).span(24)
         .description("The batch size x concurrency table of the last evaluation; modelrollout_sweep_default_cell "
                      "marks the cell the gates naming none read."))
    for ref in SWEEP:
        cells = cells.with_target(sweep_target(ref))
    for tr in sweep_columns(list(SWEEP)):
        cells = cells.with_transformation(tr)
    for _, column, unit in SWEEP.values():
        cells = cells.override_by_name(column, [DynamicConfigValue(id_val="unit", value=unit)])
    out.append(cells)
    return out


def slo_panels() -> list[barchart.Panel | stat.Panel]:
    """The throughput-at-SLO search's curve: each batch size's best rows/s within the SLO, per variant."""
    by_batch = (prometheus.Dataquery().expr(f"modelrollout_slo_rows_per_second{{{SEL}}}").instant()
                .format(PromQueryFormat.TABLE).ref_id("slo"))
    curve = (barchart.Panel().title("Rows/s at the latency SLO by batch size, candidate vs baseline")
             .description("The first throughput-at-SLO search of the last evaluation: for each batch size, the most "
                          "rows/s whose p99 met load.latencySLO (open loop). Pick one rollout.")
             .datasource(DS).height(8).span(12).unit("rowsps").x_field("batch_size").with_target(by_batch)
             .with_transformation(DataTransformerConfig(id_val="groupingToMatrix", options={
                 "columnField": "variant", "rowField": "batch_size", "valueField": "Value"})))
    where = (stat.Panel().title("Where the throughput at the SLO was found").datasource(DS).height(8).span(12)
             .with_target(q(f"modelrollout_slo_batch_size{{{SEL}}}", "{{rollout}} {{variant}} batch size"))
             .with_target(q(f"modelrollout_slo_offered_requests_per_second{{{SEL}}}",
                            "{{rollout}} {{variant}} requests/s offered"))
             .with_target(q(f"modelrollout_latency_slo_seconds{{{SEL}}}", "{{rollout}} SLO (p99)"))
             .unit("none")
             .override_by_regexp(".*requests/s offered", [DynamicConfigValue(id_val="unit", value="reqps")])
             .override_by_regexp(r".*SLO \(p99\)", [DynamicConfigValue(id_val="unit", value="s")]))
    return [curve, where]


def fairness_panels() -> list[table.Panel | barchart.Panel | stat.Panel]:
    """Clarify's bias measures and the worst groups side by side; per-group bars; the hold-out's own figures."""
    def matrix(row: str) -> DataTransformerConfig:
        return DataTransformerConfig(id_val="groupingToMatrix", options={
            "columnField": "variant", "rowField": row, "valueField": "Value"})

    bias = (table.Panel().title("Bias measures and worst groups, candidate vs baseline")
            .description("Clarify's measures (bias_*: facet d against facet a, spec.fairness) and each figure's "
                         "worst slice group (*_worst_group) of the last evaluation. Pick one rollout.")
            .datasource(DS).height(8).span(12).unit("none")
            .with_target(instant(f'{{__name__=~"modelrollout_bias_.+|modelrollout_.+_worst_group", {SEL}}}', "bias"))
            .with_transformation(matrix("__name__")))
    by_group = (barchart.Panel().title("Figures by slice group, candidate vs baseline")
                .description("The figures the gates name per group (at most 20 groups per slice column); groups under"
                             " quality.minGroupRows are shown but not gated. Pick one rollout.")
                .datasource(DS).height(8).span(12).unit("percentunit").x_field("group")
                .with_target(instant(f"modelrollout_group_figure{{{SEL}}}", "groups"))
                .with_transformation(matrix("group")))
    data = (stat.Panel().title("Hold-out data quality and agreement with production").datasource(DS)
            .height(8).span(24)
            .with_target(q(f'{{__name__=~"modelrollout_data_.+", variant="candidate", {SEL}}}',
                           "{{rollout}} {{__name__}}"))
            .with_target(q(f'modelrollout_disagreement_ratio{{{SEL}}}', "{{rollout}} disagreement with production"))
            .unit("none")
            .override_by_regexp(".*(ratio|disagreement).*", [DynamicConfigValue(id_val="unit", value="percentunit")]))
    return [bias, by_group, data]


def build() -> dashboard.Dashboard:
    d = (dashboard.Dashboard("modelrollout").uid("modelrollout").tags(["mlops", "modelrollout"])
         .refresh("30s").time("now-6h", "now")
         .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
         .with_variable(dashboard.QueryVariable("namespace").label("Namespace").datasource(DS)
                        .query("label_values(modelrollout_rollout_phase, namespace)").multi(True).include_all(True))
         .with_variable(dashboard.QueryVariable("rollout").label("Rollout").datasource(DS)
                        .query('label_values(modelrollout_rollout_phase{namespace=~"$namespace"}, rollout)')
                        .multi(True).include_all(True)))
    kinds: dict[str, type[statetimeline.Panel | timeseries.Panel | table.Panel | stat.Panel]] = {
        "state": statetimeline.Panel, "timeseries": timeseries.Panel, "table": table.Panel, "stat": stat.Panel}
    for title, kind, unit, targets in PANELS:
        p = kinds[kind]().title(title).datasource(DS).height(8).span(12).unit(unit)
        for t in targets:
            p = p.with_target(t)
        if kind == "table":
            for tr in joined([str(t.build().ref_id) for t in targets]):
                p = p.with_transformation(tr)
        d = d.with_panel(p)
    d = d.with_row(dashboard.Row("Load sweep: batch size x concurrency"))
    for sp in sweep_panels():
        d = d.with_panel(sp)
    d = d.with_row(dashboard.Row("Throughput at the latency SLO"))
    for slo in slo_panels():
        d = d.with_panel(slo)
    d = d.with_row(dashboard.Row("Fairness, data quality and agreement with production"))
    for fp in fairness_panels():
        d = d.with_panel(fp)
    return d


def render() -> str:
    return json.dumps(json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build().build())), indent=2,
                      sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
