"""The operator's own Prometheus metrics: phases, decisions, evaluations, API calls, and every figure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modelrollout.core.decide import TERMINAL
from modelrollout.exporter import FigureExporter, forget_series

PHASES = ("Pending", "Waiting", "Staging", "Evaluating", "AwaitingApproval", "Canary", "Promoted", "RolledBack",
          "Failed")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.figures = FigureExporter(registry)
        self.phase = Gauge("modelrollout_rollout_phase", "1 for the phase a rollout is in, 0 for the others.",
                           ["rollout", "namespace", "phase"], registry=registry)
        self.decisions = Counter("modelrollout_decisions_total", "Rollouts decided, by result.",
                                 ["namespace", "result"], registry=registry)
        # one series per rollout, its last decision: alerts can name the rollout and the reason
        self.decided_at = Gauge("modelrollout_decision_timestamp_seconds", "When a rollout was last decided (Unix "
                                "time), with its result and reason.", ["rollout", "namespace", "result", "reason"],
                                registry=registry)
        self.eval_seconds = Histogram("modelrollout_evaluation_duration_seconds", "Time to evaluate both variants.",
                                      buckets=(5, 15, 30, 60, 120, 300, 600, 1200), registry=registry)
        self.eval_errors = Counter("modelrollout_evaluation_errors_total", "Evaluations that failed.",
                                   ["namespace"], registry=registry)
        self.tracking_failures = Counter("modelrollout_tracking_failures_total",
                                         "Evaluations the MLflow tracking server did not record (the decision stood).",
                                         ["namespace"], registry=registry)
        self.reconcile_errors = Counter("modelrollout_reconcile_errors_total", "Reconciles that raised.",
                                        registry=registry)
        self.in_flight = Gauge("modelrollout_evaluations_in_progress", "Evaluations running now.",
                               registry=registry)
        self.api_requests = Counter("modelrollout_kubernetes_api_requests_total",
                                    "Kubernetes API calls made by the controller (besides kopf's watches).",
                                    registry=registry)
        live = ["rollout", "namespace", "gate", "step"]
        self.canary_value = Gauge("modelrollout_canary_gate_value",
                                  "The last measurement of a live gate at a canary step (variant: canary, or "
                                  "production for a relative gate).", [*live, "variant"], registry=registry)
        self.canary_threshold = Gauge("modelrollout_canary_gate_threshold", "The bound a live gate was judged by.",
                                      [*live, "bound"], registry=registry)
        self.canary_measurements = Gauge("modelrollout_canary_gate_measurements",
                                         "Measurements of a live gate at a canary step, by verdict.",
                                         [*live, "verdict"], registry=registry)

    def canary(self, name: str, ns: str, step: int, taken: list[Mapping[str, Any]]) -> None:
        """Export the measurements of one canary step, as status.canary.steps[] records them."""
        counts: dict[tuple[str, str], int] = {}
        for m in taken:
            gate = str(m["gate"])
            for variant, key in (("canary", "value"), ("production", "productionValue")):
                if m.get(key) is not None:
                    self.canary_value.labels(name, ns, gate, str(step), variant).set(float(m[key]))
            if m.get("threshold") is not None:
                self.canary_threshold.labels(name, ns, gate, str(step), str(m.get("bound"))).set(
                    float(m["threshold"]))
            counts[gate, str(m["verdict"])] = counts.get((gate, str(m["verdict"])), 0) + 1
        for (gate, verdict), n in counts.items():
            self.canary_measurements.labels(name, ns, gate, str(step), verdict).set(n)

    def forget(self, name: str, ns: str) -> None:
        """A deleted rollout leaves no series behind (its phase gauge would keep ModelRolloutStuck firing)."""
        forget_series([self.phase, self.canary_value, self.canary_threshold, self.canary_measurements,
                       self.decided_at], name, ns)
        self.figures.forget(name, ns)

    def decided(self, name: str, ns: str, result: str, reason: str, at: float) -> None:
        self.decisions.labels(ns, result).inc()
        forget_series([self.decided_at], name, ns)
        self.decided_at.labels(name, ns, result, reason).set(at)

    def set_phase(self, name: str, ns: str, phase: str) -> None:
        for p in PHASES:
            self.phase.labels(name, ns, p).set(1.0 if p == phase else 0.0)
        for result in TERMINAL:  # counters exist at 0 before the first decision, so increase() sees it
            self.decisions.labels(ns, result)
        self.eval_errors.labels(ns)
        self.tracking_failures.labels(ns)
