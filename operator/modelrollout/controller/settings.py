"""Operator settings, from the environment (the Helm chart sets them)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from modelrollout.core.pods import MeasuredPod


@dataclass(frozen=True)
class Settings:
    """Operator settings, from the environment (the Helm chart sets them)."""

    service_addresses_file: str | None = None  # JSON {"namespace/service": "http://host:port"}
    prometheus_url: str | None = None
    max_concurrent_evaluations: int = 2
    # Rollouts staging or evaluating at once. Unbounded, many rollouts on a full cluster each get
    # one of their two staging pods scheduled and all wait for the other until readyTimeout.
    max_concurrent_stagings: int = 4
    metrics_port: int = 8080
    interval: float = 2.0
    metrics_api_wait: float = 60.0  # for metrics-server's first sample of a new staging pod
    mlflow_tracking_uri: str | None = None  # every evaluation becomes a run there

    @classmethod
    def from_env(cls) -> Settings:
        e = os.environ
        return cls(
            service_addresses_file=e.get("MODELROLLOUT_SERVICE_ADDRESSES_FILE") or None,
            prometheus_url=e.get("MODELROLLOUT_PROMETHEUS_URL") or None,
            max_concurrent_evaluations=int(e.get("MODELROLLOUT_MAX_CONCURRENT_EVALUATIONS", "2")),
            max_concurrent_stagings=int(e.get("MODELROLLOUT_MAX_CONCURRENT_STAGINGS", "4")),
            metrics_port=int(e.get("MODELROLLOUT_METRICS_PORT", "8080")),
            interval=float(e.get("MODELROLLOUT_RECONCILE_INTERVAL", "2")),
            metrics_api_wait=float(e.get("MODELROLLOUT_METRICS_API_WAIT", "60")),
            mlflow_tracking_uri=e.get("MODELROLLOUT_MLFLOW_TRACKING_URI") or None,
        )

    def _mapped(self, namespace: str, service: str) -> str | None:
        if not self.service_addresses_file:
            return None
        path = Path(self.service_addresses_file)
        mapping = json.loads(path.read_text()) if path.exists() else {}
        got = mapping.get(f"{namespace}/{service}")
        return None if got is None else str(got)

    def service_url(self, namespace: str, service: str, port: int) -> str:
        """The cluster DNS name in a cluster; the documented address map outside one."""
        return self._mapped(namespace, service) or f"http://{service}.{namespace}.svc:{port}"

    def pod_url(self, namespace: str, service: str, pod: MeasuredPod, port: int) -> str:
        """The pod's own address; outside a cluster, the address map's entry for its Service (there one
        local server stands for every pod of it)."""
        return self._mapped(namespace, service) or pod.url(port)
