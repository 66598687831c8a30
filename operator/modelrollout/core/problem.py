"""The hold-out as a problem to score: labels, predictions and scores checked and encoded once.

Every input mistake is a DataError that names what is wrong and where (a column, a row, the
values found, bounded), so the CLI exits 2 with it and the operator fails the rollout with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelrollout.core.figures import Task

FloatArray = npt.NDArray[np.float64]


class DataError(ValueError):
    """Hold-out data or predictions that cannot be scored; the message says what and where."""


@dataclass(frozen=True)
class Problem:
    """A scored problem: labels encoded once, so every kernel works on integer codes."""

    task: Task
    y: FloatArray  # class codes (classification) or targets (regression)
    pred: FloatArray  # predicted codes or values
    scores: FloatArray | None  # binary: P(positive), shape (n,); multiclass: (n, k) in class order
    classes: tuple[Any, ...] = ()
    n_features: int | None = None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


def encode(
    task: Task,
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    scores: np.ndarray | None = None,
    *,
    classes: Sequence[Any] | None = None,
    positive_label: Any = None,
    n_features: int | None = None,
    who: str = "predictions",
) -> Problem:
    """Check shapes and labels and encode classes as 0..k-1 in sorted order.

    For binary tasks `positive_label` (default 1, or True) is code 1. For multiclass tasks
    `classes` are the model's classes, in the order of the probability columns.
    """
    yt = np.asarray(y_true)
    yp = np.asarray(y_pred)
    n = yt.shape[0]
    if yp.shape[0] != n:
        raise DataError(f"{who}: {yp.shape[0]} predictions for {n} hold-out rows")
    if n == 0:
        raise DataError("the hold-out set has no rows")
    if task == "regression":
        yt_f, yp_f = _numeric(yt, "labels"), _numeric(yp, who)
        if not np.all(np.isfinite(yp_f)):
            raise DataError(f"{who}: {int(np.sum(~np.isfinite(yp_f)))} predictions are not finite numbers")
        return Problem(task, yt_f, yp_f, None, (), n_features)
    if task == "binary-classification":
        pos = positive_label if positive_label is not None else _default_positive(yt)
        if classes is not None:
            known = {str(_key(c)) for c in classes}
            foreign = sorted({str(_key(v)) for v in _as_list(np.unique(yt))} - known)
            if foreign:
                raise DataError(f"labels {foreign[:5]} are not among the model's classes {list(classes)[:10]}")
        labels = set(_as_list(np.unique(yt))) | set(_as_list(np.unique(yp)))
        if len(labels) > 2:
            raise DataError(f"{who}: binary task but found labels {sorted(map(str, labels))}")
        named = {str(_key(v)) for v in labels}
        if str(_key(pos)) not in named and (len(labels) == 2 or not named <= {"0", "1", "True", "False"}):
            # one class present and not 0/1: which is positive cannot be guessed (all would score negative)
            hint = "" if positive_label is not None else " (set holdout.positiveLabel, or --positive-label)"
            raise DataError(f"positive label {pos!r} is not among the labels {sorted(named)[:10]}{hint}")
        y = (_same(yt, pos)).astype(np.float64)
        p = (_same(yp, pos)).astype(np.float64)
        s = None
        if scores is not None:
            s = np.asarray(scores, dtype=np.float64)
            if s.ndim == 2 and s.shape[1] == 1:
                s = _one_column(s[:, 0], classes, pos, who)
            if s.ndim == 2 and s.shape[1] == 2:  # predict_proba columns, in the model's class order
                if classes is None:  # never guessed: with positiveLabel 0 a guess inverts ROC-AUC
                    raise DataError(f"{who}: two probability columns but their class order is unknown: the "
                                    "server's metadata has no parameters.classes; set spec.serving.classes "
                                    "(e.g. [0, 1])")
                keys = [str(_key(c)) for c in classes]
                if str(_key(pos)) not in keys:
                    raise DataError(f"{who}: the positive label {pos!r} is not among the classes "
                                    f"{[str(k) for k in keys][:10]}")
                s = s[:, keys.index(str(_key(pos)))]
            if s.ndim != 1 or s.shape[0] != n:
                raise DataError(f"{who}: scores of shape {np.shape(scores)} for {n} rows")
            _check_probabilities(s, who)
        negative = next((v for v in labels if not _same(np.asarray([v]), pos)[0]), None)
        return Problem(task, y, p, s, (negative, pos), n_features)
    # multiclass
    found = sorted(set(_as_list(np.unique(yt))) | set(_as_list(np.unique(yp))), key=_sort_key)
    cls = list(classes) if classes is not None else found
    index = {str(_key(c)): i for i, c in enumerate(cls)}
    missing = [c for c in found if str(_key(c)) not in index]
    if missing:
        raise DataError(f"labels {missing[:5]} are not among the model's classes {cls[:10]}")
    y = np.array([index[str(_key(v))] for v in yt], dtype=np.float64)
    p = np.array([index[str(_key(v))] for v in yp], dtype=np.float64)
    s = None
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2 or s.shape != (n, len(cls)):
            raise DataError(f"{who}: probabilities of shape {s.shape}, expected ({n}, {len(cls)})")
        _check_probabilities(s, who)
        off = np.flatnonzero(np.abs(s.sum(axis=1) - 1) > 1e-3)
        if off.size:
            raise DataError(f"{who}: each row's class probabilities must sum to 1; {off.size} rows do not "
                            f"(row {int(off[0])} sums to {float(s[off[0]].sum()):.6g})")
    return Problem(task, y, p, s, tuple(cls), n_features)


def _as_list(a: np.ndarray) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in a]


def _key(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) else (1, str(v))


def _same(a: np.ndarray, label: Any) -> npt.NDArray[np.bool_]:
    if a.dtype.kind in "iufb" and isinstance(label, int | float | bool | np.number):
        return np.asarray(a == label)
    return np.asarray([str(_key(v)) == str(_key(label)) for v in a])


def _default_positive(y: np.ndarray) -> Any:
    if y.dtype.kind == "b":
        return True
    return 1


def _numeric(a: np.ndarray, who: str) -> FloatArray:
    try:
        return a.astype(np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{who}: regression needs numbers, found {a[:3].tolist()}") from None


def _one_column(s: FloatArray, classes: Sequence[Any] | None, pos: Any, who: str) -> FloatArray:
    """One probability column is, as predict_proba[:, 1] and every binary scorer have it, the probability
    of the second class in the model's order: of 1 when the classes are 0 and 1."""
    keys = [str(_key(c)) for c in classes] if classes is not None else None
    if keys is None:
        if str(_key(pos)) in ("1", "True"):
            return s
        raise DataError(f"{who}: one probability column, which is the probability of the model's second class, "
                        f"but the class order is unknown and the positive label is {pos!r}: set "
                        "spec.serving.classes (e.g. [0, 1])")
    if len(keys) != 2 or str(_key(pos)) not in keys:
        raise DataError(f"{who}: one probability column needs two classes including the positive label "
                        f"{pos!r}; classes are {keys[:10]}")
    return s if keys[1] == str(_key(pos)) else 1.0 - s


def _check_probabilities(s: FloatArray, who: str) -> None:
    bad = ~np.isfinite(s)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataError(f"{who}: {int(bad.sum())} scores are not numbers (NaN or infinite), the first in row {row}")
    if s.min() < 0 or s.max() > 1:
        raise DataError(f"{who}: probabilities must lie in [0, 1] (found {s.min():g}..{s.max():g})")
