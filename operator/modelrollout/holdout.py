"""Reading hold-out sets and prediction files (CSV, Parquet, JSON Lines, NumPy .npz).

Reading is here, outside the pure core; every error names the file and what is wrong
with it, because a hold-out set is usually the first thing a user gets wrong. Errors never
quote cell values (the operator puts them in status, which more people can read than the
data), and optional `Bounds` refuse data that would expand beyond a memory budget, before
decoding where the format allows it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelrollout.core.drift import FeatureDrift
from modelrollout.core.figures import Task
from modelrollout.core.quality import DataError

FORMATS = ("csv", "parquet", "jsonl", "npz")
_EXT = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
        ".json": "jsonl", ".npz": "npz"}


class DataTooLarge(DataError):
    """The data is over a size, cell or memory bound: a limit to raise or data to shrink, not a format error."""


class OutOfMemory(DataTooLarge):
    """Parsing hit a MemoryError: in the operator, the parsing process's memory budget."""


class DataChanged(DataError):
    """The bytes do not have the SHA-256 the spec pinned: the hold-out is not the one the rollout was written for."""


@dataclass(frozen=True)
class Bounds:
    """How much a hold-out may expand to once parsed; checked before decoding where the format allows."""

    max_cells: int  # rows x columns (Parquet: also every leaf value of nested columns)
    max_cell_chars: int  # longest text cell in any column
    max_slice_chars: int  # longest value of a slice column, as str() renders it
    max_decoded_bytes: int  # decoded size of the data, and fixed-width text arrays built from slices


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
               max_bytes: float | None = None, bounds: Bounds | None = None,
               sha256: str | None = None) -> pd.DataFrame:
    """A DataFrame from a path or raw bytes; `name` gives the format when source is bytes.

    The bytes' SHA-256 and size go in `df.attrs` (prepare() puts them in the fingerprint); with
    `sha256`, other bytes are refused before parsing.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "hold-out")
    kind = detect_format(label, fmt)
    if isinstance(source, bytes):
        data = source
    else:
        p = Path(source)
        if not p.is_file():
            raise DataError(f"{label}: no such file")
        if max_bytes is not None and p.stat().st_size > max_bytes:
            raise DataTooLarge(f"{label}: {p.stat().st_size} bytes is larger than the limit of {int(max_bytes)}")
        data = p.read_bytes()
    if max_bytes is not None and len(data) > max_bytes:
        raise DataTooLarge(f"{label}: {len(data)} bytes is larger than the limit of {int(max_bytes)}")
    if not data.strip():
        raise DataError(f"{label}: the file is empty")
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256.lower():
        raise DataChanged(f"{label}: spec.holdout.sha256 pins {sha256.lower()}, but the data read has sha256 "
                          f"{digest}; pin the new digest if the change is intended")
    try:
        if bounds is not None:
            _check_encoded(data, kind, bounds)
        df = _parse(data, kind)
    except DataTooLarge as e:
        raise DataTooLarge(f"{label}: {e}") from None
    except MemoryError:
        raise OutOfMemory(f"{label}: ran out of memory while parsing the {kind} file") from None
    except DataError as e:
        raise DataError(f"{label}: not a valid {kind} file ({e})") from None
    except Exception as e:  # every reader has its own exception types; all mean "not this format"
        # the type and a position only: readers' messages quote the offending text
        raise DataError(f"{label}: not a valid {kind} file ({type(e).__name__}{_where(e)})") from None
    if df.shape[0] == 0:
        raise DataError(f"{label}: the file has no rows")
    df.attrs.update(sha256=digest, bytes=len(data))
    return df


def _where(e: Exception) -> str:
    """Where a reader failed, as numbers only: the line, row or byte some exceptions report."""
    if isinstance(e, UnicodeDecodeError):
        return f" at byte {e.start}"
    text = str(e)
    if m := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text):
        return f": expected {m[1]} fields in line {m[2]}, saw {m[3]}"
    if m := re.search(r"\b(line|row) (\d+)\b", text):
        return f" at {m[1]} {m[2]}"
    return ""


def _check_encoded(data: bytes, kind: str, b: Bounds) -> None:
    """Refuse Parquet and .npz files whose metadata says they expand beyond the bounds, before decoding."""
    if kind == "npz" and zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            size = sum(i.file_size for i in z.infolist())
        if size > b.max_decoded_bytes:
            raise DataTooLarge(f"its arrays take {size >> 20} MiB uncompressed, more than the budget of "
                               f"{b.max_decoded_bytes >> 20} MiB")
    if kind != "parquet" or data[:4] != b"PAR1":
        return
    import pyarrow as pa  # only here: the CLI's CSV path never needs it
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    f = pq.ParquetFile(io.BytesIO(data))
    meta = f.metadata
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    leaves = sum(g.column(j).num_values for g in groups for j in range(g.num_columns))
    cells = max(meta.num_rows * len(f.schema_arrow), leaves)
    if cells > b.max_cells:
        raise DataTooLarge(f"{meta.num_rows} rows x {len(f.schema_arrow)} columns ({cells} values) is more than "
                           f"the limit of {b.max_cells} cells")
    size = sum(g.total_byte_size for g in groups)
    if size > b.max_decoded_bytes:
        raise DataTooLarge(f"its data takes {size >> 20} MiB uncompressed, more than the budget of "
                           f"{b.max_decoded_bytes >> 20} MiB")
    # Dictionary pages store a repeated string once: read text as dictionaries and add up
    # what decoding would build, so a few KiB of file cannot become GiB of strings.
    text = [fld.name for fld in f.schema_arrow if _is_text(fld.type)]
    if not text:
        return
    decoded = 0
    dictionaries = pq.ParquetFile(io.BytesIO(data), read_dictionary=text).read(columns=text)
    for i, col in enumerate(dictionaries.columns):
        for chunk in col.chunks:
            if isinstance(chunk, pa.DictionaryArray):
                used = pc.take(pc.binary_length(chunk.dictionary), chunk.indices)
            else:
                used = pc.binary_length(chunk)
            decoded += int(pc.sum(used).as_py() or 0)
            top = int(pc.max(used).as_py() or 0)
            if top > b.max_cell_chars:
                raise DataTooLarge(f"text column {i + 1} of {len(text)} has a value of {top} bytes, more than "
                                   f"the limit of {b.max_cell_chars} characters")
    if decoded > b.max_decoded_bytes:
        raise DataTooLarge(f"its text columns decode to {decoded >> 20} MiB, more than the budget of "
                           f"{b.max_decoded_bytes >> 20} MiB")


def _is_text(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t))


def _parse(data: bytes, kind: str) -> pd.DataFrame:
    if kind == "csv":
        if data[:4] in (b"PAR1", b"PK\x03\x04"):
            raise DataError("it is a binary file (Parquet or zip), not CSV")
        return pd.read_csv(io.BytesIO(data))
    if kind == "parquet":
        return pd.read_parquet(io.BytesIO(data))
    if kind == "jsonl":
        rows = []
        for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"line {n} column {e.colno} is not valid JSON") from None
            if not isinstance(rows[-1], dict):
                raise DataError(f"every line must be a JSON object; line {n} is not")
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
    fingerprint: dict[str, Any] = field(default_factory=dict)
    drift: list[FeatureDrift] = field(default_factory=list)  # against spec.drift.referenceRef, when given

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])


def summarize(df: pd.DataFrame, label_column: str, task: Task, key: Callable[[str], str] = str) -> dict[str, Any]:
    """Rows, missing values per column, duplicate rows and the label distribution.

    `key` names a column in `missing`: by its position for a file whose header must not be shown.
    """
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
        "missing": {key(str(c)): int(v) for c, v in df.isna().sum().items()},
        "duplicateRows": int(df.duplicated().sum()),
        "labels": labels,
    }


def prepare(
    df: pd.DataFrame, *, task: Task, label_column: str, feature_columns: Sequence[str] | None = None,
    slice_columns: Sequence[str] = (), max_rows: int | None = None, seed: int = 0, name: str = "hold-out",
    echo_columns: bool = True, bounds: Bounds | None = None,
) -> Holdout:
    """Split a table into features, labels and slices, checking it first.

    `echo_columns=False` keeps the file's own column names out of messages (columns the
    spec names are always named): for data whose header the reader of the message must not see.
    """
    cols = list(map(str, df.columns))
    df.columns = pd.Index(cols)
    among = f"columns are {cols[:20]}" if echo_columns else f"the data has {len(cols)} columns"
    if label_column not in cols:
        raise DataError(f"{name}: label column {label_column!r} not found; {among}")
    for c in [*slice_columns, *(feature_columns or [])]:
        if c not in cols:
            raise DataError(f"{name}: column {c!r} not found; {among}")
    named = {label_column, *slice_columns, *(feature_columns or [])}
    position = {c: i + 1 for i, c in enumerate(cols)}

    def shown(c: str) -> str:
        return c if echo_columns or c in named else f"#{position[c]}"

    if bounds is not None:
        check_bounds(df, bounds, slice_columns, lambda c: repr(c) if echo_columns or c in named else
                     f"{position[c]} of {len(cols)}", name, min(df.shape[0], max_rows or df.shape[0]))
    fp = fingerprint(df, shown)
    if max_rows is not None and df.shape[0] > max_rows:
        df = df.sample(n=max_rows, random_state=seed).sort_index()
    fp["rowsUsed"] = int(df.shape[0])
    summary = summarize(df, label_column, task, shown)
    y = df[label_column]
    if y.isna().any():
        bad = [int(i) for i in np.flatnonzero(y.isna().to_numpy())[:5]]
        raise DataError(f"{name}: label column {label_column!r} has {int(y.isna().sum())} missing values "
                        f"(rows {bad}...)")
    if task == "regression" and not pd.api.types.is_numeric_dtype(y):
        odd = int(pd.to_numeric(y, errors="coerce").isna().sum())
        raise DataError(f"{name}: task regression needs numeric labels; {odd} of {len(y)} values in column "
                        f"{label_column!r} are not numbers")
    features = list(feature_columns) if feature_columns else [
        c for c in cols if c != label_column and c not in slice_columns]
    if not features:
        raise DataError(f"{name}: no feature columns left besides the label and slice columns")
    return Holdout(
        features=df[features].reset_index(drop=True),
        labels=y.to_numpy(),
        slices={c: df[c].astype(str).tolist() for c in slice_columns},
        summary=summary,
        fingerprint=fp,
    )


SCHEMA_SHOWN = 64  # columns listed in a fingerprint's schema; its digest covers them all


def fingerprint(df: pd.DataFrame, shown: Callable[[str], str] = str) -> dict[str, Any]:
    """What identifies a hold-out: its bytes' SHA-256 and size (from read_table), rows, columns and schema.

    The schema is each column's name (as `shown` renders it: a position for a header the reader
    must not see) and pandas dtype; `schemaSha256` hashes all of it, so two files with the same
    columns have the same one even when their bytes differ.
    """
    schema = [{"name": shown(str(c)), "type": str(t)} for c, t in df.dtypes.items()]
    canonical = json.dumps([[c["name"], c["type"]] for c in schema], separators=(",", ":")).encode()
    out: dict[str, Any] = {"sha256": df.attrs.get("sha256"), "bytes": df.attrs.get("bytes"),
                           "rows": int(df.shape[0]), "columns": int(df.shape[1]),
                           "schemaSha256": hashlib.sha256(canonical).hexdigest(), "schema": schema[:SCHEMA_SHOWN]}
    return out


def check_bounds(df: pd.DataFrame, b: Bounds, slice_columns: Sequence[str], show: Callable[[str], str] = repr,
                 name: str = "hold-out", rows_used: int | None = None) -> None:
    """Cells, text length and slice width after parsing; messages give counts, never values.

    Slices become fixed-width text arrays when scored (every value as wide as the longest),
    so their width times the rows is checked against the memory budget too.
    """
    rows, ncols = df.shape
    if rows * ncols > b.max_cells:
        raise DataTooLarge(f"{name}: {rows} rows x {ncols} columns is more than the limit of {b.max_cells} cells")
    for c in df.columns:
        n = _longest(df[c])
        if n > b.max_cell_chars:
            raise DataTooLarge(f"{name}: column {show(c)} has a value of {n} characters, more than the limit of "
                               f"{b.max_cell_chars}")
    for c in slice_columns:
        n = _longest(df[c], as_text=True)
        if n > b.max_slice_chars:
            raise DataTooLarge(f"{name}: slice column {show(c)} has a value of {n} characters, more than the "
                               f"limit of {b.max_slice_chars} for slice values")
        used = rows if rows_used is None else rows_used
        if used * n * 4 > b.max_decoded_bytes:
            raise DataTooLarge(f"{name}: slice column {show(c)}: {used} rows of up to {n} characters take "
                               f"{used * n * 4 >> 20} MiB as fixed-width text, more than the budget of "
                               f"{b.max_decoded_bytes >> 20} MiB")


def _longest(s: pd.Series, as_text: bool = False) -> int:
    """Longest text cell in characters; with `as_text`, of every cell as str() renders it."""
    if s.empty:
        return 0
    kind = pd.api.types.infer_dtype(s, skipna=True)
    if as_text and kind not in ("string", "bytes", "empty"):
        return int(s.map(lambda v: len(str(v))).max())
    if kind not in ("string", "bytes", "mixed", "mixed-integer", "categorical"):
        return 0
    try:
        n = s.str.len().max()
    except (AttributeError, TypeError):  # no text in it after all
        return 0
    return 0 if pd.isna(n) else int(n)


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
