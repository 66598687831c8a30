"""What every part of the manifest's model shares: names, problems, bounded units, the base model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from modelrollout.core.text import short
from modelrollout.core.units import format_duration, parse_duration, parse_size

GROUP = "modelrollout.dev"
VERSION = "v1alpha1"
KIND = "ModelRollout"
API_VERSION = f"{GROUP}/{VERSION}"
MAX_PROBLEMS = 20
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """All problems found in a manifest, each with its field path."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _err(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message is already formatted (without a context pydantic formats nothing)."""
    return PydanticCustomError(kind, message)


def _bounded(kind: str, parse: Any, most: float, show: Any) -> Any:
    """A validator for a positive duration or size with an upper bound (the CRD states the same bound)."""
    def check(v: Any) -> float:
        try:
            x = float(parse(v))
        except ValueError as e:
            raise _err(kind, str(e)) from None
        if x <= 0:
            raise _err(kind, f"{short(v)} must be a positive {'duration' if kind == 'duration' else 'size'}")
        if x > most:
            raise _err(kind, f"{short(v)} is more than the limit of {show(most)}")
        return x
    return BeforeValidator(check)


def _mib(n: float) -> str:
    return f"{n / 2**20:g}Mi"


def _dur(most: float) -> Any:
    return _bounded("duration", parse_duration, most, format_duration)


def _bytes(most: float) -> Any:
    return _bounded("size", parse_size, most, _mib)


MINUTE, HOUR, MIB = 60.0, 3600.0, float(2**20)
MAX_MEASUREMENTS, MAX_RECORDED = 20, 400  # per live gate and step; in all (they are kept in status)
Name = Annotated[str, Field(min_length=1, max_length=253)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=False
    )


def _path(loc: tuple[int | str, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union", "union[")) or part in {"str", "int", "float"}:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def _problems(err: ValidationError, prefix: str) -> list[Problem]:
    out: list[Problem] = []
    for e in err.errors(include_url=False):
        loc, kind, msg = tuple(e["loc"]), e["type"], e["msg"]
        value = e.get("input")
        if kind == "extra_forbidden":
            msg = f"unknown field (value: {short(value)})"
        elif kind == "missing":
            msg = "is required"
        elif kind == "literal_error":
            msg = f"{short(value)} is not one of {msg.split('Input should be ', 1)[-1][:200]}"
        elif kind in {
            "metric", "duration", "size", "name", "holdout_source", "holdout_columns", "load_rate",
            "gate_bound", "gate_range", "gate_confidence", "gate_baseline", "canary_weights", "canary_routing",
            "eval_timeout", "load_axis", "gate_cell", "gate_slices", "gate_facet", "fairness_facet", "gate_drift",
        }:
            pass
        else:
            msg = f"{msg[:1].lower()}{msg[1:200]} (got {short(value)})"
        problem = Problem(_path(loc, prefix)[:200], msg)
        if problem not in out:
            out.append(problem)
    if len(out) > MAX_PROBLEMS:  # a list of a million bad gates is one message, not a million lines
        out = [*out[:MAX_PROBLEMS], Problem("(more)", f"{len(out) - MAX_PROBLEMS} more problems not shown")]
    return out
