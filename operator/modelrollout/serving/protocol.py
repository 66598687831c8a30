"""Payloads of the Open Inference Protocol (V2) and the V1 protocol, both directions.

V2 is what KServe, MLServer and Triton serve: tensors with a name, shape, datatype and
flattened data. V1 is `{"instances": [...]}` -> `{"predictions": [...]}`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

V2_DATATYPES = {"f": "FP64", "i": "INT64", "u": "INT64", "b": "BOOL", "U": "BYTES", "S": "BYTES", "O": "BYTES"}
NUMPY_OF = {"FP64": np.float64, "FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
            "INT16": np.int16, "INT8": np.int8, "UINT64": np.uint64, "UINT32": np.uint32, "UINT8": np.uint8,
            "BOOL": np.bool_}
MAX_DIMS = 32  # numpy takes 64; no model input needs more than a handful
MAX_MESSAGE = 300


class ProtocolError(ValueError):
    """A payload that does not follow the protocol; the message says what is wrong."""


def v2_datatype(a: np.ndarray) -> str:
    if a.dtype == np.float32:
        return "FP32"
    return V2_DATATYPES.get(a.dtype.kind, "BYTES")


def v2_tensor(name: str, a: np.ndarray) -> dict[str, Any]:
    dt = v2_datatype(a)
    data = [str(v) for v in a.ravel()] if dt == "BYTES" else a.ravel().tolist()
    return {"name": name, "shape": list(a.shape), "datatype": dt, "data": data}


def v2_request(rows: np.ndarray, outputs: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [v2_tensor("input-0", np.asarray(rows))]}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    return body


def tensor_array(t: Any) -> np.ndarray:
    """A V2 tensor (request input or response output) as a numpy array of its shape."""
    if not isinstance(t, dict) or not {"shape", "datatype", "data"} <= t.keys():
        raise ProtocolError("a tensor needs name, shape, datatype and data")
    name, shape, dt, data = _text(t.get("name"), 60), t["shape"], t["datatype"], t["data"]
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ProtocolError(f"tensor {name!r}: shape is not a list of at most {MAX_DIMS} sizes")
    if not isinstance(data, list):
        raise ProtocolError(f"tensor {name!r}: data is not a list")
    if not isinstance(dt, str) or (dt not in NUMPY_OF and dt != "BYTES"):
        raise ProtocolError(f"tensor {name!r}: datatype {_text(dt, 20)!r} is not supported")
    flat = numbers(_flatten(data), NUMPY_OF.get(dt, object), f"tensor {name!r}")
    if flat.ndim != 1 or flat.size != math.prod(shape):
        raise ProtocolError(f"tensor {name!r}: {flat.size} values do not fill shape {clip(str(shape), 80)}")
    return flat.reshape(shape)


def numbers(data: Any, dtype: Any, what: str = "the input") -> np.ndarray:
    """`data` as an array of `dtype`, or a ProtocolError that does not repeat the values.

    numpy's own messages quote the offending value, which may be private data. A float beyond the
    range of `dtype` becomes infinite here; the server refuses infinite inputs."""
    kind = np.dtype(dtype).name
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(data, dtype=dtype)
    except OverflowError:
        raise ProtocolError(f"{what}: a value is out of range for {kind}") from None
    except (ValueError, TypeError, RecursionError):
        raise ProtocolError(f"{what}: the values are not a rectangular array of {kind}") from None


def parse_json(body: bytes) -> Any:
    """A request body as JSON; a ProtocolError, never a crash, for anything else."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ProtocolError("the JSON nests too deeply") from None
    except json.JSONDecodeError as e:
        raise ProtocolError(f"the body is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise ProtocolError("the body is not UTF-8 JSON") from None
    except ValueError:  # the only other one: an integer with more than sys.get_int_max_str_digits()
        raise ProtocolError("a number in the body has too many digits") from None


def clip(s: str, n: int = MAX_MESSAGE) -> str:
    """At most n characters: an error message must stay short whatever the request held."""
    return s if len(s) <= n else s[: n - 1] + "…"


def _text(v: Any, n: int) -> str:
    """A name from the request, clipped; str() of anything else could be huge or nest too deeply."""
    return clip(v, n) if isinstance(v, str) else f"<{type(v).__name__}>"


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major values of nested lists, without recursion (a deep nesting cannot exhaust the stack)."""
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray
    proba: np.ndarray | None = None


def parse_v2_response(body: Any, rows: int, labels_name: str = "predict",
                      proba_name: str | None = "predict_proba") -> Prediction:
    """Labels from the output named `labels_name` (or the only output, as a server's `output-0`), and
    probabilities from `proba_name`: one column per class, or one column (the positive class's)."""
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list) or not body["outputs"]:
        raise ProtocolError("the response has no `outputs` list")
    outputs = {o.get("name"): o for o in body["outputs"] if isinstance(o, dict)}
    if labels_name not in outputs and len(outputs) > 1:
        raise ProtocolError(f"no output named {labels_name!r} (outputs: {sorted(map(str, outputs))[:10]}); "
                            "name it in spec.serving.outputs.labels")
    chosen = outputs.get(labels_name, body["outputs"][0])
    labels = tensor_array(chosen)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 2 and labels.shape[0] == rows and labels.dtype.kind == "f":
        raise ProtocolError(f"the labels output {_text(chosen.get('name'), 60)!r} has {labels.shape[1]} columns of "
                            "numbers: probabilities, not one label per row (KServe's scikit-learn runtime with "
                            "PREDICT_PROBA answers probabilities alone); serve the labels too, or serve them "
                            "alone and set spec.serving.outputs.probabilities to null")
    if labels.ndim != 1 or labels.shape[0] != rows:
        raise ProtocolError(f"{labels.shape[0] if labels.ndim else 0} predictions of shape "
                            f"{list(labels.shape)} for {rows} rows")
    proba = None
    if proba_name is not None and proba_name in outputs:
        proba = tensor_array(outputs[proba_name]).astype(np.float64)
        if proba.ndim == 1 and proba.shape[0] == rows:  # the positive class's probability only
            proba = proba[:, None]
        if proba.ndim != 2 or proba.shape[0] != rows:
            raise ProtocolError(f"probabilities of shape {list(proba.shape)} for {rows} rows")
    return Prediction(labels, proba)


def v1_request(rows: np.ndarray) -> dict[str, Any]:
    return {"instances": np.asarray(rows).tolist()}


def parse_v1_response(body: Any, rows: int) -> Prediction:
    if not isinstance(body, dict) or not isinstance(body.get("predictions"), list):
        raise ProtocolError("the response has no `predictions` list")
    labels = np.asarray(body["predictions"])
    if labels.ndim != 1 or labels.shape[0] != rows:
        raise ProtocolError(f"{labels.shape[0] if labels.ndim else 0} predictions for {rows} rows")
    proba = None
    if isinstance(body.get("probabilities"), list):
        proba = np.asarray(body["probabilities"], dtype=np.float64)
        if proba.ndim != 2 or proba.shape[0] != rows:
            raise ProtocolError(f"probabilities of shape {list(proba.shape)} for {rows} rows")
    return Prediction(labels, proba)
