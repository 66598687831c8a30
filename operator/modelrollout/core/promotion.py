"""The promotion part of the manifest: approval, canary steps, traffic routing and live gates."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from modelrollout.core.specbase import _DNS1123, HOUR, MAX_MEASUREMENTS, MAX_RECORDED, Name, _dur, _err, _Model


class PromQLGate(_Model):
    """A live gate of the canary steps: its query, bounds, and how often and how strictly it is measured."""

    name: str | None = None
    query: Annotated[str, Field(min_length=1)]
    min: float | None = None
    max: float | None = None
    max_increase: float | None = Field(None, ge=0)
    max_increase_percent: float | None = Field(None, ge=0)
    interval: Annotated[float, _dur(24 * HOUR)] | None = None
    count: int = Field(1, ge=1, le=MAX_MEASUREMENTS)
    failure_limit: int = Field(0, ge=0)
    inconclusive_limit: int = Field(0, ge=0)
    on_no_data: Literal["Fail", "Inconclusive"] = "Inconclusive"
    dry_run: bool = False

    @property
    def relative(self) -> bool:
        return self.max_increase is not None or self.max_increase_percent is not None

    @model_validator(mode="after")
    def _bounds(self) -> PromQLGate:
        if self.min is None and self.max is None and not self.relative:
            raise _err("gate_bound", "a query gate needs min, max, maxIncrease or maxIncreasePercent")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _err("gate_range", f"min ({self.min:g}) is greater than max ({self.max:g})")
        if self.relative != ("{{variant}}" in self.query):
            raise _err("gate_variant", "maxIncrease and maxIncreasePercent compare the canary with production: "
                       "they need {{variant}} in the query (replaced by canary and production), and only they use it")
        if self.failure_limit >= self.count:
            raise _err("gate_limit", f"failureLimit ({self.failure_limit}) must be less than count ({self.count})")
        return self


class CanaryStep(_Model):
    weight: int = Field(ge=1, le=100)
    pause: Annotated[float, _dur(24 * HOUR)] = 60.0


class GatewayAPI(_Model):
    """An HTTPRoute in the rollout's namespace whose backend weights carry the canary's share."""
    http_route: Name
    service: Name | None = None  # production's Service among the route's backends (default: the target's name)

    @field_validator("http_route", "service")
    @classmethod
    def _dns(cls, v: str | None) -> str | None:
        if v is not None and not _DNS1123.match(v):
            raise _err("name", f"{v!r} is not a valid Kubernetes name (lower-case letters, digits and '-')")
        return v


class TrafficRouting(_Model):
    gateway_api: GatewayAPI = Field(alias="gatewayAPI")


class Canary(_Model):
    steps: list[CanaryStep] = []
    traffic_routing: TrafficRouting | None = None

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: list[CanaryStep]) -> list[CanaryStep]:
        weights = [s.weight for s in v]
        if weights != sorted(set(weights)):
            raise _err("canary_weights", f"weights must strictly increase, got {weights}")
        return v

    @model_validator(mode="after")
    def _routed_steps(self) -> Canary:
        if self.traffic_routing is not None and not self.steps:
            raise _err("canary_routing", "trafficRouting splits the canary steps' traffic: add steps")
        return self


class Promotion(_Model):
    approval: Literal["Automatic", "Manual"] = "Automatic"
    canary: Canary = Canary()
    gates: list[PromQLGate] = []

    @model_validator(mode="after")
    def _recorded(self) -> Promotion:
        total = sum(g.count for g in self.gates) * max(1, len(self.canary.steps))
        if total > MAX_RECORDED:
            raise _err("gate_count", f"steps x gates x count is {total} measurements; status records at most "
                       f"{MAX_RECORDED}")
        return self
