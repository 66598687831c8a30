"""Drift of each feature between the hold-out the models are scored on and a reference set.

A model that passes every gate on a hold-out unlike what it will serve has passed the wrong exam; the
reference (spec.drift.referenceRef) is e.g. a sample of recent live inputs or of the training data.

Per feature: the population stability index (PSI) over bins (numeric: the reference's deciles, so
each reference bin holds about a tenth; categorical: each value), and a two-sample test (numeric: the
Kolmogorov-Smirnov statistic and p-value; categorical: chi-square on the 2 x values table), all from
scipy. Missing values are left out (the hold-out's are `missing_percent`). The threshold convention
is the usual one for PSI: under 0.1 stable, 0.1 to 0.25 a moderate shift, over 0.25 a significant one;
`drifted_features` counts the features at or over `psiThreshold` (default 0.25).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

#: the smallest share a bin is given in the PSI, so an empty bin costs a large but finite term
PSI_FLOOR = 1e-4
#: features kept in status and the report table, the most drifted first
SHOWN = 20


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical
    psi: float
    statistic: float  # KS (numeric) or chi-square (categorical)
    p_value: float
    drifted: bool

    def as_dict(self) -> dict[str, Any]:
        test = "ks" if self.kind == "numeric" else "chi2"
        return {"feature": self.feature[:63], "kind": self.kind, "psi": _r(self.psi), test: _r(self.statistic),
                f"{test}PValue": _r(self.p_value), "drifted": self.drifted}


def _r(v: float) -> float | None:
    return float(f"{v:.6g}") if np.isfinite(v) else None


def psi(holdout: npt.NDArray[np.float64], reference: npt.NDArray[np.float64]) -> float:
    """Population stability index of two count vectors over the same bins."""
    h = np.maximum(holdout / max(holdout.sum(), 1), PSI_FLOOR)
    r = np.maximum(reference / max(reference.sum(), 1), PSI_FLOOR)
    return float(np.sum((h - r) * np.log(h / r)))


def _numeric(h: npt.NDArray[Any], r: npt.NDArray[Any], bins: int, threshold: float, name: str) -> FeatureDrift:
    h, r = h[np.isfinite(h)], r[np.isfinite(r)]
    edges = np.unique(np.quantile(r, np.linspace(0, 1, bins + 1)[1:-1]))
    hc = np.bincount(np.searchsorted(edges, h, side="right"), minlength=edges.size + 1).astype(np.float64)
    rc = np.bincount(np.searchsorted(edges, r, side="right"), minlength=edges.size + 1).astype(np.float64)
    value = psi(hc, rc)
    ks = stats.ks_2samp(h, r)
    return FeatureDrift(name, "numeric", value, float(ks.statistic), float(ks.pvalue), value >= threshold)


def _categorical(h: Sequence[Any], r: Sequence[Any], threshold: float, name: str) -> FeatureDrift:
    hs = np.asarray([str(v) for v in h if v is not None and v == v])  # v == v: not NaN
    rs = np.asarray([str(v) for v in r if v is not None and v == v])
    values = np.unique(np.concatenate([hs, rs]))
    hc = np.array([(hs == v).sum() for v in values], dtype=np.float64)
    rc = np.array([(rs == v).sum() for v in values], dtype=np.float64)
    value = psi(hc, rc)
    if values.size >= 2:
        chi = stats.chi2_contingency(np.stack([hc, rc]))
        stat, p = float(chi.statistic), float(chi.pvalue)
    else:
        stat, p = 0.0, 1.0
    return FeatureDrift(name, "categorical", value, stat, p, value >= threshold)


def feature_drift(holdout: Mapping[str, npt.NDArray[Any]], reference: Mapping[str, npt.NDArray[Any]], *,
                  bins: int = 10, threshold: float = 0.25) -> list[FeatureDrift]:
    """Each feature of the hold-out that the reference has, the most drifted first."""
    out = []
    for name, h in holdout.items():
        if name not in reference:
            continue
        r = reference[name]
        numeric = h.dtype.kind in "iufb" and r.dtype.kind in "iufb"
        if numeric:
            h64, r64 = h.astype(np.float64), r.astype(np.float64)
            if np.isfinite(h64).any() and np.isfinite(r64).any():
                out.append(_numeric(h64, r64, bins, threshold, name))
        else:
            out.append(_categorical(list(h), list(r), threshold, name))
    return sorted(out, key=lambda f: -f.psi)


def drift_figures(features: Sequence[FeatureDrift]) -> dict[str, float]:
    if not features:
        return {}
    return {"drift_psi_max": max(f.psi for f in features), "drifted_features": float(sum(f.drifted for f in features))}


def drift_status(features: Sequence[FeatureDrift], threshold: float) -> dict[str, Any]:
    return {"psiThreshold": threshold, "features": [f.as_dict() for f in features[:SHOWN]],
            "featuresTotal": len(features), "figures": drift_figures(features)}


DRIFT_HEADER = ["feature", "kind", "PSI", "test", "p-value", "drifted"]


def drift_rows(status: Mapping[str, Any] | None) -> list[list[str]]:
    """The drift table from drift_status: the most drifted features first."""
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}"
    return [[d["feature"], d["kind"], f(d["psi"]),
             f"KS {f(d.get('ks'))}" if d["kind"] == "numeric" else f"chi² {f(d.get('chi2'))}",
             f(d.get("ksPValue", d.get("chi2PValue"))), "yes" if d["drifted"] else ""]
            for d in (status or {}).get("features", [])]
