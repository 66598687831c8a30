"""The drift reference set: fetched from the hold-out's kinds of source, parsed under the same bounds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from modelrollout.core.drift import FeatureDrift, feature_drift
from modelrollout.core.quality import DataError
from modelrollout.holdout import Holdout


def reference_table(df: pd.DataFrame, columns: Sequence[str], *, max_rows: int | None, seed: int,
                    name: str) -> Holdout:
    """A drift reference set: the hold-out's feature columns it has (no labels), sampled to max_rows."""
    keep = [c for c in columns if c in df.columns]
    if not keep:
        raise DataError(f"{name}: the drift reference has none of the hold-out's {len(columns)} feature columns")
    if max_rows is not None and df.shape[0] > max_rows:
        df = df.sample(n=max_rows, random_state=seed)
    return Holdout(df[keep].reset_index(drop=True), np.zeros(0), {})


def drift_between(holdout: Holdout, reference: Holdout, *, bins: int, threshold: float) -> list[FeatureDrift]:
    """Each shared feature's drift (core/drift.py), numeric columns as floats, the others as values."""
    def arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
        return {str(c): (df[c].to_numpy(dtype=np.float64, na_value=np.nan) if pd.api.types.is_numeric_dtype(df[c])
                         else df[c].to_numpy(dtype=object)) for c in df.columns}
    return feature_drift(arrays(holdout.features), arrays(reference.features), bins=bins, threshold=threshold)
