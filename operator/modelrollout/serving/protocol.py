"""Payloads of the Open Inference Protocol (V2) and the V1 protocol, both directions.

V2 is what KServe, MLServer and Triton serve: tensors with a name, shape, datatype and
flattened data. V1 is `{"instances": [...]}` -> `{"predictions": [...]}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

V2_DATATYPES = {"f": "FP64", "i": "INT64", "u": "INT64", "b": "BOOL", "U": "BYTES", "S": "BYTES", "O": "BYTES"}
NUMPY_OF = {"FP64": np.float64, "FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
            "INT16": np.int16, "INT8": np.int8, "UINT64": np.uint64, "UINT32": np.uint32, "UINT8": np.uint8,
            "BOOL": np.bool_}


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
    shape, dt, data = t["shape"], t["datatype"], t["data"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(f"tensor {t.get('name')!r}: shape {shape!r} is not a list of sizes")
    if not isinstance(data, list):
        raise ProtocolError(f"tensor {t.get('name')!r}: data is not a list")
    flat: np.ndarray = np.asarray(_flatten(data), dtype=object if dt == "BYTES" else NUMPY_OF.get(dt, np.float64))
    if dt not in NUMPY_OF and dt != "BYTES":
        raise ProtocolError(f"tensor {t.get('name')!r}: datatype {dt!r} is not supported")
    if flat.size != int(np.prod(shape)):
        raise ProtocolError(f"tensor {t.get('name')!r}: {flat.size} values do not fill shape {shape}")
    return flat.reshape(shape)


def _flatten(data: list[Any]) -> list[Any]:
    if data and isinstance(data[0], list):
        return [v for row in data for v in _flatten(row)]
    return data


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray
    proba: np.ndarray | None = None


def parse_v2_response(body: Any, rows: int) -> Prediction:
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list) or not body["outputs"]:
        raise ProtocolError("the response has no `outputs` list")
    outputs = {o.get("name"): o for o in body["outputs"] if isinstance(o, dict)}
    first = body["outputs"][0]
    labels = tensor_array(outputs.get("predict", first))
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != rows:
        raise ProtocolError(f"{labels.shape[0] if labels.ndim else 0} predictions of shape "
                            f"{list(labels.shape)} for {rows} rows")
    proba = None
    if "predict_proba" in outputs:
        proba = tensor_array(outputs["predict_proba"]).astype(np.float64)
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
