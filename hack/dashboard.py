"""Build the Grafana dashboard with grafana-foundation-sdk (never hand-edited JSON).

    .venv/bin/python hack/dashboard.py > charts/modelrollout/files/dashboard.json

A test rebuilds it and compares, and checks every query against a real Prometheus.
"""

from __future__ import annotations

import json

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'namespace=~"$namespace", rollout=~"$rollout"'
FIGURES = ["f1", "accuracy", "roc_auc", "rmse", "latency_p99_seconds", "throughput_requests_per_second",
           "memory_peak_bytes", "replicas_fit"]


def q(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend)


def queries() -> dict[str, list[str]]:
    """Every PromQL expression of the dashboard, by panel title (for the tests)."""
    return {title: [t.build().expr for t in targets] for title, _, targets in PANELS}


PANELS: list[tuple[str, str, list[prometheus.Dataquery]]] = [
    ("Phase per rollout", "state", [q(f"max by (namespace, rollout, phase) (modelrollout_rollout_phase{{{SEL}}}) == 1",
                                      "{{namespace}}/{{rollout}}: {{phase}}")]),
    ("Decisions over time", "timeseries", [q('sum by (result) (increase(modelrollout_decisions_total'
                                             '{namespace=~"$namespace"}[1h]))', "{{result}}")]),
    ("Gate verdicts", "table", [q(f"modelrollout_gate_passed{{{SEL}}}", "{{rollout}} gate {{gate}} {{metric}}"),
                                q(f"modelrollout_gate_value{{{SEL}}}", "value"),
                                q(f"modelrollout_gate_threshold{{{SEL}}}", "threshold")]),
    ("Latency percentiles (seconds)", "timeseries", [
        q(f"modelrollout_latency_{p}_seconds{{{SEL}}}", "{{rollout}} {{variant}} " + p)
        for p in ("p50", "p90", "p99", "p999")]),
    ("Canary live gates: value per step and variant", "timeseries", [
        q(f"modelrollout_canary_gate_value{{{SEL}}}", "{{rollout}} {{gate}} step {{step}} {{variant}}"),
        q(f"modelrollout_canary_gate_threshold{{{SEL}}}", "{{rollout}} {{gate}} {{bound}}")]),
    ("Canary measurements by verdict", "table", [
        q(f"modelrollout_canary_gate_measurements{{{SEL}}}", "{{rollout}} {{gate}} step {{step}} {{verdict}}")]),
    ("Replicas that fit", "stat", [q(f"modelrollout_replicas_fit{{{SEL}}}", "{{rollout}} {{variant}}")]),
    *[(f"Candidate vs baseline: {f}", "timeseries", [q(f"modelrollout_{f}{{{SEL}}}", "{{rollout}} {{variant}}")])
      for f in FIGURES],
]


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
    for title, kind, targets in PANELS:
        p = kinds[kind]().title(title).datasource(DS).height(8).span(12)
        for t in targets:
            p = p.with_target(t)
        d = d.with_panel(p)
    return d


def render() -> str:
    return json.dumps(json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build().build())), indent=2,
                      sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
