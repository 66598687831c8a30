"""The operator's own Prometheus metrics: phases, decisions, evaluations, API calls, and every figure."""

from __future__ import annotations

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
        self.eval_seconds = Histogram("modelrollout_evaluation_duration_seconds", "Time to evaluate both variants.",
                                      buckets=(5, 15, 30, 60, 120, 300, 600, 1200), registry=registry)
        self.eval_errors = Counter("modelrollout_evaluation_errors_total", "Evaluations that failed.",
                                   ["namespace"], registry=registry)
        self.reconcile_errors = Counter("modelrollout_reconcile_errors_total", "Reconciles that raised.",
                                        registry=registry)
        self.in_flight = Gauge("modelrollout_evaluations_in_progress", "Evaluations running now.",
                               registry=registry)
        self.api_requests = Counter("modelrollout_kubernetes_api_requests_total",
                                    "Kubernetes API calls made by the controller (besides kopf's watches).",
                                    registry=registry)

    def forget(self, name: str, ns: str) -> None:
        """A deleted rollout leaves no series behind (its phase gauge would keep ModelRolloutStuck firing)."""
        forget_series([self.phase], name, ns)
        self.figures.forget(name, ns)

    def set_phase(self, name: str, ns: str, phase: str) -> None:
        for p in PHASES:
            self.phase.labels(name, ns, p).set(1.0 if p == phase else 0.0)
        for result in TERMINAL:  # counters exist at 0 before the first decision, so increase() sees it
            self.decisions.labels(ns, result)
        self.eval_errors.labels(ns)
