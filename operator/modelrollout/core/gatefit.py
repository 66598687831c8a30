"""Whether each gate can ever be computed for the spec it is in, named by field before anything runs.

A gate on a slice gap with no slice column, or on a bias measure with no facet, would be Inconclusive
on every rollout: accepted, it blocks every promotion with no way to pass. These are refused at apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field, ValidationError
from pydantic_core import InitErrorDetails

from modelrollout.core.fairness import Facet
from modelrollout.core.figures import BIAS_POST, BIAS_PRE, DRIFT, SLICE_GAP_SUFFIX, WORST_GROUP_SUFFIX
from modelrollout.core.sources import ReferenceSource
from modelrollout.core.specbase import Name, Problem, _err, _Model, _problems


class Fairness(_Model):
    """Clarify's facet: the rows of `facet` whose value is disadvantaged against the advantaged rest."""

    facet: Name  # a slice column (holdout.sliceColumns)
    disadvantaged: Annotated[list[Annotated[str, Field(max_length=253)]], Field(min_length=1, max_length=64)]
    advantaged: Annotated[list[Annotated[str, Field(max_length=253)]], Field(min_length=1, max_length=64)] | None = None

    def as_facet(self) -> Facet:
        return Facet(self.facet, tuple(self.disadvantaged), tuple(self.advantaged) if self.advantaged else None)


class Drift(_Model):
    """The reference set the hold-out's features are compared with (core/drift.py)."""

    reference_ref: ReferenceSource
    psi_threshold: float = Field(0.25, gt=0, le=100)  # a feature at or over it counts in drifted_features
    bins: int = Field(10, ge=2, le=100)


def fit_errors(metrics: Sequence[str], slice_columns: Sequence[str], fairness: Fairness | None,
               where: str = "holdout.sliceColumns", drift: bool = True,
               drift_where: str = "drift.referenceRef") -> list[InitErrorDetails]:
    """One error per gate (by index) that the spec cannot compute, and one for a facet that is not a slice."""
    errors = []
    for i, m in enumerate(metrics):
        if m in DRIFT and not drift:
            errors.append(InitErrorDetails(type=_err(
                "gate_drift", f"{m} compares the hold-out with a reference set: give {drift_where}"),
                loc=("gates", i, "metric"), input=m))
        if m.endswith((SLICE_GAP_SUFFIX, WORST_GROUP_SUFFIX)) and not slice_columns:
            errors.append(InitErrorDetails(type=_err(
                "gate_slices", f"{m} is a figure of groups, and there are none: name the group columns in {where}"),
                loc=("gates", i, "metric"), input=m))
        if m in BIAS_POST + BIAS_PRE and fairness is None:
            errors.append(InitErrorDetails(type=_err(
                "gate_facet", f"{m} is a bias measure between two facets: set fairness.facet (one of {where}) "
                "and fairness.disadvantaged (its values for the disadvantaged group)"),
                loc=("gates", i, "metric"), input=m))
    if fairness is not None and fairness.facet not in slice_columns:
        errors.append(InitErrorDetails(type=_err(
            "fairness_facet", f"fairness.facet {fairness.facet!r} is not one of {where} ({list(slice_columns)[:8]})"),
            loc=("fairness", "facet"), input=fairness.facet))
    if fairness is not None and fairness.advantaged and set(fairness.advantaged) & set(fairness.disadvantaged):
        both = sorted(set(fairness.advantaged) & set(fairness.disadvantaged))[:5]
        errors.append(InitErrorDetails(type=_err(
            "fairness_facet", f"fairness: {both} are both advantaged and disadvantaged"),
            loc=("fairness", "advantaged"), input=both))
    return errors


def fit_problems(metrics: Sequence[str], slice_columns: Sequence[str], fairness: Fairness | None,
                 where: str, drift: bool) -> list[Problem]:
    """fit_errors as the problems a SpecError carries (for a gates file, whose slices come from flags)."""
    errors = fit_errors(metrics, slice_columns, fairness, where, drift, "--drift-reference")
    if not errors:
        return []
    return _problems(ValidationError.from_exception_data("GatesFile", errors), "")
