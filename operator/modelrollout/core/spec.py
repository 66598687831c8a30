"""The ModelRollout manifest as typed objects, with every problem reported at once.

Each problem names its field path (`spec.gates[2].metric`) and the bad value, so that a
user can fix a manifest in one pass instead of one error per apply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from modelrollout.core import history
from modelrollout.core.figures import (
    AGREEMENT,
    DATA,
    DATA_ONLY,
    PER_CELL,
    SYSTEM,
    TASKS,
    WINDOW_WARMUP,
    WINDOWED,
    Task,
    figures_for,
    task_for_metric,
)
from modelrollout.core.gatefit import Drift, Fairness, fit_errors
from modelrollout.core.loadspec import SLO_FIGURES
from modelrollout.core.loadspec import Load as Load
from modelrollout.core.loadspec import SloSearch as SloSearch
from modelrollout.core.promotion import Canary as Canary
from modelrollout.core.promotion import CanaryStep as CanaryStep
from modelrollout.core.promotion import GatewayAPI as GatewayAPI
from modelrollout.core.promotion import Promotion as Promotion
from modelrollout.core.promotion import PromQLGate as PromQLGate
from modelrollout.core.promotion import TrafficRouting as TrafficRouting
from modelrollout.core.sources import ConfigMapRef as ConfigMapRef
from modelrollout.core.sources import PvcSource as PvcSource
from modelrollout.core.sources import S3Credentials as S3Credentials
from modelrollout.core.sources import S3Source as S3Source
from modelrollout.core.sources import SecretKeyRef as SecretKeyRef
from modelrollout.core.sources import Source
from modelrollout.core.sources import UrlSource as UrlSource
from modelrollout.core.specbase import _DNS1123, HOUR, MIB, MINUTE, Name, _bytes, _dur, _err, _Model, _problems
from modelrollout.core.specbase import API_VERSION as API_VERSION
from modelrollout.core.specbase import GROUP as GROUP
from modelrollout.core.specbase import KIND as KIND
from modelrollout.core.specbase import MAX_MEASUREMENTS as MAX_MEASUREMENTS
from modelrollout.core.specbase import MAX_PROBLEMS as MAX_PROBLEMS
from modelrollout.core.specbase import MAX_RECORDED as MAX_RECORDED
from modelrollout.core.specbase import VERSION as VERSION
from modelrollout.core.specbase import Problem as Problem
from modelrollout.core.specbase import SpecError as SpecError
from modelrollout.core.text import cap, short
from modelrollout.core.units import format_duration


class TargetRef(_Model):
    kind: Literal["Deployment"] = "Deployment"
    name: Name

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not _DNS1123.match(v):
            raise _err("name", f"{v!r} is not a valid Kubernetes name (lower-case letters, digits and '-')")
        return v


class EnvVar(_Model):
    name: Name
    value: str = ""


class Candidate(_Model):
    image: str | None = None
    env: list[EnvVar] = []
    args: list[str] | None = None


class Outputs(_Model):
    """The V2 output names asked for: predicted labels, and class probabilities (null: none asked)."""
    labels: Name = "predict"
    probabilities: Name | None = "predict_proba"


class Serving(_Model):
    protocol: Literal["v2", "v1"] = "v2"
    model_name: Name
    # the probability columns' class order when the server's metadata does not say (parameters.classes)
    classes: list[str | int] | None = Field(None, min_length=2, max_length=1000)
    outputs: Outputs = Outputs()
    port: int = Field(8080, ge=1, le=65535)
    timeout: Annotated[float, _dur(5 * MINUTE)] = 10.0
    max_response_size: Annotated[float, _bytes(1024 * MIB)] = 8 * 2**20
    auth_secret_ref: SecretKeyRef | None = None


class Staging(_Model):
    namespace: Annotated[str, Field(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")] | None = None
    replicas: int = Field(1, ge=1, le=100)
    ready_timeout: Annotated[float, _dur(HOUR)] = 300.0
    # Evaluating has a deadline: a server that never answers, or a bug, ends in a rollback, not a loop.
    evaluation_timeout: Annotated[float, _dur(6 * HOUR)] = 1800.0


class Holdout(Source):
    label_column: Name
    feature_columns: list[Name] | None = None
    slice_columns: list[Name] = []
    positive_label: str | int | None = None

    @model_validator(mode="after")
    def _columns(self) -> Holdout:
        if self.label_column in self.slice_columns:
            raise _err("holdout_columns", f"labelColumn {self.label_column!r} is also a slice column")
        return self


class Capacity(_Model):
    headroom_percent: float = Field(20.0, ge=0, le=1000)
    target_rps: float | None = Field(None, gt=0)
    node_price_per_hour: float | None = Field(None, ge=0)


class QualitySettings(_Model):
    confidence: float = Field(0.95, gt=0.5, lt=1)
    resamples: int = Field(1000, ge=0, le=100000)
    seed: int = 0
    min_group_rows: int = Field(30, ge=1, le=10_000_000)  # smaller slice groups are reported, never gated


class Gate(_Model):
    metric: Name
    min: float | None = None
    max: float | None = None
    max_drop: float | None = Field(None, ge=0)
    max_drop_percent: float | None = Field(None, ge=0)
    max_increase: float | None = Field(None, ge=0)
    max_increase_percent: float | None = Field(None, ge=0)
    confidence: float | None = Field(None, gt=0.5, lt=1)
    dry_run: bool = False
    # the load cell whose figure is gated; either missing is the default cell's (spec.load)
    batch_size: int | None = Field(None, ge=1, le=65536)
    concurrency: int | None = Field(None, ge=1, le=1024)

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str, info: ValidationInfo) -> str:
        ctx = info.context or {}
        task = ctx.get("task")
        if task in TASKS and v not in figures_for(task):
            others = task_for_metric(v)
            hint = f" (it is defined for {', '.join(others)})" if others else ""
            raise _err("metric", f"{v!r} is not defined for task {task!r}{hint}")
        if task not in TASKS and not any(v in figures_for(t) for t in TASKS):
            raise _err("metric", f"{v!r} is not a known metric")
        return v

    @property
    def names_cell(self) -> bool:
        return self.batch_size is not None or self.concurrency is not None

    @property
    def relative(self) -> bool:
        return any(
            b is not None
            for b in (self.max_drop, self.max_drop_percent, self.max_increase, self.max_increase_percent)
        )

    @model_validator(mode="after")
    def _bounds(self, info: ValidationInfo) -> Gate:
        if self.min is None and self.max is None and not self.relative:
            raise _err(
                "gate_bound",
                "a gate needs a bound: min, max, maxDrop, maxDropPercent, maxIncrease or maxIncreasePercent",
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _err("gate_range", f"min ({self.min:g}) is greater than max ({self.max:g})")
        if self.confidence is not None and ((self.metric in SYSTEM and self.metric not in WINDOWED)
                                            or self.metric in DATA):
            raise _err("gate_confidence", f"confidence needs a figure with an interval, and {self.metric!r} has "
                       f"none (quality figures, slice gaps and {', '.join(WINDOWED)} have one): remove confidence")
        if self.names_cell and self.metric not in PER_CELL:
            raise _err("gate_cell", f"{self.metric!r} is not measured per load cell, so batchSize and concurrency "
                       f"do not apply (they do to {', '.join(PER_CELL)})")
        ctx = info.context or {}
        if self.relative and ctx.get("has_baseline") is False:
            raise _err("gate_baseline", f"{self.metric!r} has a relative bound but no baseline was given")
        if self.relative and self.metric in DATA_ONLY:
            raise _err("gate_bound", f"{self.metric!r} is a figure of the hold-out, the same for both models: "
                       "bound it with min or max, not relative to the baseline")
        if self.metric in AGREEMENT and (self.relative or ctx.get("has_baseline") is False):
            raise _err("gate_baseline", f"{self.metric!r} compares the candidate with the baseline: it needs a "
                       "baseline, and min or max (it is already a difference)")
        return self


class MlflowTracking(_Model):
    # the operator prefixes modelrollout/<namespace>/: a tenant cannot write into another team's experiment
    experiment: Annotated[str, Field(min_length=1, max_length=200,
                                     pattern=r"^[A-Za-z0-9][-A-Za-z0-9_. /]*$")] | None = None
    # a version per evaluation, `challenger`; promotion moves `champion` to it. Only a model tagged
    # modelrollout.namespace=<this namespace> (or created by the operator for it) is touched
    registered_model: Annotated[str, Field(min_length=1, max_length=200,
                                           pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")] | None = None


class Tracking(_Model):
    mlflow: MlflowTracking = MlflowTracking()


class ModelRolloutSpec(_Model):
    target_ref: TargetRef
    task: Task
    candidate: Candidate = Candidate()
    serving: Serving
    staging: Staging = Staging()
    holdout: Holdout
    load: Load = Load()
    capacity: Capacity = Capacity()
    quality: QualitySettings = QualitySettings()
    gates: Annotated[list[Gate], Field(min_length=1)]
    promotion: Promotion = Promotion()
    tracking: Tracking = Tracking()
    fairness: Fairness | None = None
    drift: Drift | None = None
    history_limit: int = Field(history.DEFAULT_LIMIT, ge=0, le=history.MAX_LIMIT)  # status.history entries kept

    @model_validator(mode="after")
    def _load_plan(self) -> ModelRolloutSpec:
        """Gates name cells of the sweep, and the sweep fits the evaluation's deadline; all problems at once."""
        errors = [e for i, g in enumerate(self.gates) if (e := _cell_error(i, g, self.load)) is not None]
        errors += fit_errors([g.metric for g in self.gates], self.holdout.slice_columns, self.fairness,
                             drift=self.drift is not None)
        ld = self.load
        errors += [InitErrorDetails(type=_err(
            "gate_bound", f"{g.metric} comes from the throughput-at-SLO search: set load.latencySLO (the p99 "
            "bound it searches under, e.g. 50ms)"), loc=("gates", i, "metric"), input=g.metric)
            for i, g in enumerate(self.gates) if g.metric in SLO_FIGURES and ld.latency_slo is None]
        # each window after a variant's first warms up again, briefly (new connections)
        rewarm = max(0, ld.windows - 1) * min(ld.warmup, WINDOW_WARMUP)
        planned = 2 * (len(ld.cells) * (ld.warmup + ld.duration) + rewarm + ld.slo_seconds())
        if self.staging.evaluation_timeout < planned:
            errors.append(InitErrorDetails(type=_err(
                "eval_timeout", f"staging.evaluationTimeout ({format_duration(self.staging.evaluation_timeout)})"
                f" is shorter than the load plan alone (2 variants x {len(ld.cells)} load cells ("
                f"{len(ld.batch_sizes)} batch sizes x {len(ld.concurrency_axis)} concurrencies) x (warmup + duration)"
                f" + {max(0, ld.windows - 1)} load windows' re-warm-up per variant"
                + (f" + {format_duration(math.ceil(ld.slo_seconds()))} of throughput-at-SLO search per variant"
                   if ld.latency_slo is not None else "")
                + f" = {format_duration(math.ceil(planned))})"), loc=(), input=self.staging.evaluation_timeout))
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


def _cell_error(index: int, gate: Gate, load: Load) -> InitErrorDetails | None:
    """A gate's cell must be in the sweep, and only the default cell (the windowed one) has intervals."""
    if not gate.names_cell:
        return None
    b, c = gate.batch_size or load.batch_sizes[0], gate.concurrency or load.concurrency
    sweep = f"batch sizes {load.batch_sizes} x concurrencies {load.concurrency_axis}"
    bad = [f for f, ok in (("batchSize", b in load.batch_sizes), ("concurrency", c in load.concurrency_axis))
           if not ok]
    where: tuple[str | int, ...] = ("gates", index, *bad[:1]) if len(bad) == 1 else ("gates", index)
    if bad:
        return InitErrorDetails(type=_err("gate_cell", f"batch {b}, concurrency {c} is not a cell of the load sweep "
                                          f"({sweep}: load.batchSizes x load.concurrency and load.concurrencies)"),
                                loc=where, input=b if bad == ["batchSize"] else c)
    default = (load.batch_sizes[0], load.concurrency)
    if gate.confidence is not None and (b, c) != default:
        return InitErrorDetails(type=_err(
            "gate_confidence", f"batch {b}, concurrency {c} is measured once per variant, not in load windows, so "
            f"its figures have no interval: remove confidence, or gate the default cell (batch {default[0]}, "
            f"concurrency {default[1]})"), loc=("gates", index, "confidence"), input=gate.confidence)
    return None


class GatesFile(_Model):
    """A gates-only file for `modelrollout score`: the task and the gates, nothing else."""

    task: Task | None = None
    quality: QualitySettings = QualitySettings()
    gates: Annotated[list[Gate], Field(min_length=1)]
    fairness: Fairness | None = None  # its facet must be a --slice-column


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _task_of(raw: Any) -> str | None:
    return raw.get("task") if isinstance(raw, Mapping) else None


def parse_spec(raw: Any, *, has_baseline: bool = True) -> ModelRolloutSpec:
    """Validate a `spec` mapping; raise SpecError with every problem at once."""
    if not isinstance(raw, Mapping):
        raise SpecError([Problem("spec", f"must be a mapping, got {type(raw).__name__}")])
    ctx = {"task": _task_of(raw), "has_baseline": has_baseline}
    try:
        return ModelRolloutSpec.model_validate(raw, context=ctx)
    except ValidationError as e:
        raise SpecError(_problems(e, "spec")) from None


def parse_manifest(doc: Any) -> tuple[dict[str, Any], ModelRolloutSpec]:
    """Validate a whole ModelRollout object: (metadata, spec)."""
    if not isinstance(doc, Mapping):
        raise SpecError([Problem("(root)", f"must be a mapping, got {type(doc).__name__}")])
    problems: list[Problem] = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"{short(doc.get('apiVersion'))} is not {API_VERSION!r}"))
    if doc.get("kind") != KIND:
        problems.append(Problem("kind", f"{short(doc.get('kind'))} is not {KIND!r}"))
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("name"):
        problems.append(Problem("metadata.name", "is required"))
        meta = {}
    for key in doc:
        if key not in {"apiVersion", "kind", "metadata", "spec", "status"}:
            problems.append(Problem(cap(str(key), 80), f"unknown field (value: {short(doc[key])})"))
    spec: ModelRolloutSpec | None = None
    try:
        spec = parse_spec(doc.get("spec"))
    except SpecError as e:
        problems.extend(e.problems)
    if problems or spec is None:
        raise SpecError(problems)
    return dict(meta), spec


def parse_gates_file(doc: Any, *, task: str | None, has_baseline: bool) -> GatesFile:
    """Gates from either a whole manifest or a file with `gates:` (and optionally `task:`)."""
    if isinstance(doc, Mapping) and doc.get("kind") == KIND:
        _, spec = parse_manifest(doc)
        parse_spec(doc["spec"], has_baseline=has_baseline)
        return GatesFile(task=spec.task, quality=spec.quality, gates=spec.gates, fairness=spec.fairness)
    if not isinstance(doc, Mapping):
        raise SpecError([Problem("(root)", f"must be a mapping, got {type(doc).__name__}")])
    ctx = {"task": task or _task_of(doc), "has_baseline": has_baseline}
    try:
        parsed = GatesFile.model_validate(doc, context=ctx)
    except ValidationError as e:
        raise SpecError(_problems(e, "")) from None
    if task is not None and parsed.task is not None and parsed.task != task:
        raise SpecError([Problem("task", f"{parsed.task!r} differs from the task given ({task!r})")])
    return parsed
