"""Reading hold-out sets and prediction files (CSV, Parquet, JSON Lines, NumPy .npz).

Reading is here, outside the pure core; every error names the file and what is wrong
with it, because a hold-out set is usually the first thing a user gets wrong.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelrollout.core.figures import Task
from modelrollout.core.quality import DataError

FORMATS = ("csv", "parquet", "jsonl", "npz")
_EXT = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
        ".json": "jsonl", ".npz": "npz"}


def detect_format(name: str, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise DataError(f"{name}: format {fmt!r} is not one of {', '.join(FORMATS)}")
        return fmt
    ext = Path(name).suffix.lower()
    if ext not in _EXT:
        raise DataError(f"{name}: cannot tell the format from {ext or 'no extension'!r}; "
                        f"use one of .csv, .parquet, .jsonl, .npz or say the format")
    return _EXT[ext]


def read_table(source: str | Path | bytes, name: str | None = None, fmt: str | None = None,
               max_bytes: float | None = None) -> pd.DataFrame:
    """A DataFrame from a path or raw bytes; `name` gives the format when source is bytes."""
    label = name or (str(source) if not isinstance(source, bytes) else "hold-out")
    kind = detect_format(label, fmt)
    if isinstance(source, bytes):
        data = source
    else:
        p = Path(source)
        if not p.is_file():
            raise DataError(f"{label}: no such file")
        if max_bytes is not None and p.stat().st_size > max_bytes:
            raise DataError(f"{label}: {p.stat().st_size} bytes is larger than the limit of {int(max_bytes)}")
        data = p.read_bytes()
    if max_bytes is not None and len(data) > max_bytes:
        raise DataError(f"{label}: {len(data)} bytes is larger than the limit of {int(max_bytes)}")
    if not data.strip():
        raise DataError(f"{label}: the file is empty")
    try:
        df = _parse(data, kind)
    except DataError as e:
        raise DataError(f"{label}: not a valid {kind} file ({e})") from None
    except Exception as e:  # every reader has its own exception types; all mean "not this format"
        raise DataError(f"{label}: not a valid {kind} file ({type(e).__name__}: {str(e)[:200]})") from None
    if df.shape[0] == 0:
        raise DataError(f"{label}: the file has no rows")
    return df


def _parse(data: bytes, kind: str) -> pd.DataFrame:
    if kind == "csv":
        if data[:4] in (b"PAR1", b"PK\x03\x04"):
            raise DataError("it is a binary file (Parquet or zip), not CSV")
        return pd.read_csv(io.BytesIO(data))
    if kind == "parquet":
        return pd.read_parquet(io.BytesIO(data))
    if kind == "jsonl":
        rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        if not all(isinstance(r, dict) for r in rows):
            raise DataError("every line must be a JSON object")
        return pd.DataFrame(rows)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DataError("not a NumPy .npz archive")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        cols: dict[str, Any] = {}
        for key in z.files:
            a = z[key]
            if a.ndim == 2:
                cols.update({f"{key}{i}": a[:, i] for i in range(a.shape[1])})
            else:
                cols[key] = a
    return pd.DataFrame(cols)


@dataclass
class Holdout:
    """A hold-out set ready to score: features, labels, slice columns and a quality summary."""

    features: pd.DataFrame
    labels: np.ndarray
    slices: dict[str, list[Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])


def summarize(df: pd.DataFrame, label_column: str, task: Task) -> dict[str, Any]:
    """Rows, missing values per column, duplicate rows and the label distribution."""
    labels: dict[str, Any]
    y = df[label_column]
    if task == "regression":
        yn = pd.to_numeric(y, errors="coerce")
        labels = {"min": float(yn.min()), "mean": float(yn.mean()), "max": float(yn.max())}
    else:
        labels = {str(k): int(v) for k, v in y.value_counts(dropna=True).sort_index().items()}
    return {
        "rows": int(df.shape[0]),
        "columns": int(df.shape[1]),
        "missing": {str(c): int(v) for c, v in df.isna().sum().items()},
        "duplicateRows": int(df.duplicated().sum()),
        "labels": labels,
    }


def prepare(
    df: pd.DataFrame, *, task: Task, label_column: str, feature_columns: Sequence[str] | None = None,
    slice_columns: Sequence[str] = (), max_rows: int | None = None, seed: int = 0, name: str = "hold-out",
) -> Holdout:
    cols = list(map(str, df.columns))
    df.columns = pd.Index(cols)
    if label_column not in cols:
        raise DataError(f"{name}: label column {label_column!r} not found; columns are {cols[:20]}")
    for c in [*slice_columns, *(feature_columns or [])]:
        if c not in cols:
            raise DataError(f"{name}: column {c!r} not found; columns are {cols[:20]}")
    if max_rows is not None and df.shape[0] > max_rows:
        df = df.sample(n=max_rows, random_state=seed).sort_index()
    summary = summarize(df, label_column, task)
    y = df[label_column]
    if y.isna().any():
        bad = [int(i) for i in np.flatnonzero(y.isna().to_numpy())[:5]]
        raise DataError(f"{name}: label column {label_column!r} has {int(y.isna().sum())} missing values "
                        f"(rows {bad}...)")
    if task == "regression" and not pd.api.types.is_numeric_dtype(y):
        raise DataError(f"{name}: task regression needs numeric labels, column {label_column!r} has "
                        f"{y.head(3).tolist()}")
    features = list(feature_columns) if feature_columns else [
        c for c in cols if c != label_column and c not in slice_columns]
    if not features:
        raise DataError(f"{name}: no feature columns left besides the label and slice columns")
    return Holdout(
        features=df[features].reset_index(drop=True),
        labels=y.to_numpy(),
        slices={c: df[c].astype(str).tolist() for c in slice_columns},
        summary=summary,
    )


@dataclass
class PredictionFile:
    labels: np.ndarray
    scores: np.ndarray | None
    classes: list[str] | None


def read_predictions(path: str | Path, *, task: Task, column: str = "prediction") -> PredictionFile:
    """Predictions from a batch job: a `prediction` column, and `score` (binary) or `proba_<class>`."""
    df = read_table(path)
    cols = list(map(str, df.columns))
    if column not in cols:
        raise DataError(f"{path}: prediction column {column!r} not found; columns are {cols[:20]}")
    labels = df[column].to_numpy()
    proba = [c for c in cols if c.startswith("proba_")]
    if task == "binary-classification" and "score" in cols:
        return PredictionFile(labels, df["score"].to_numpy(dtype=np.float64), None)
    if task == "multiclass-classification" and proba:
        return PredictionFile(labels, df[proba].to_numpy(dtype=np.float64), [c[6:] for c in proba])
    return PredictionFile(labels, None, None)
