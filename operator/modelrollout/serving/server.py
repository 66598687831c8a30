"""`modelrollout serve`: a reference server for scikit-learn models, V2 and V1, with metrics.

Models load from skops files, which are data, not code: only scikit-learn, NumPy and SciPy
types are trusted. A pickle or joblib file runs code when loaded, so it needs an explicit
flag.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest

from modelrollout.serving.protocol import ProtocolError, tensor_array, v2_tensor

TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ModelLoadError(Exception):
    pass


def load_model(path: str | Path, *, trust_pickle: bool = False) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such file")
    if p.suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise ModelLoadError(
                f"{p}: loading a pickle/joblib file runs any code inside it; pass --trust-pickle only for "
                "a file you made yourself, or save the model with skops (skops.io.dump)")
        import joblib  # type: ignore[import-untyped]

        return joblib.load(p)
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=p)
    foreign = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if foreign:
        raise ModelLoadError(f"{p}: refusing types outside scikit-learn/NumPy/SciPy: {foreign}")
    return sio.load(p, trusted=untrusted)


class Metrics:
    def __init__(self, model: str):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        labels = ["model", "protocol", "code"]
        self.requests = Counter("modelserver_requests_total", "Inference requests answered.", labels,
                                registry=self.registry)
        self.errors = Counter("modelserver_errors_total", "Inference requests that failed.", labels,
                              registry=self.registry)
        self.rows = Counter("modelserver_predictions_total", "Rows predicted.", ["model"], registry=self.registry)
        self.latency = Histogram("modelserver_request_duration_seconds", "Time to answer an inference request.",
                                 ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model = model
        for protocol in ("v1", "v2"):  # series exist at 0 from the start: "no errors" is not "no data"
            self.requests.labels(model, protocol, "200")
            self.errors.labels(model, protocol, "400")
            self.latency.labels(model, protocol)
        self.rows.labels(model)




def make_app(model: Any, name: str, *, middlewares: list[Any] | None = None) -> web.Application:
    """The aiohttp application; tests wrap it with fault-injecting middlewares."""
    m = Metrics(name)
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])]
    has_proba = hasattr(model, "predict_proba")
    n_features = int(getattr(model, "n_features_in_", 0)) or None

    def check_name(request: web.Request) -> None:
        if request.match_info["name"] != name:
            raise web.HTTPNotFound(text=json.dumps({"error": f"model {request.match_info['name']!r} not found"}),
                                   content_type="application/json")

    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def metadata(request: web.Request) -> web.Response:
        check_name(request)
        return web.json_response({
            "name": name, "versions": ["1"], "platform": "sklearn",
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, n_features or -1]}],
            "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
            + ([{"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(classes)]}] if has_proba else []),
            "parameters": {"classes": classes} if classes else {},
        })

    def run(rows: np.ndarray, want: list[str]) -> dict[str, np.ndarray]:
        if rows.ndim != 2:
            raise ProtocolError(f"input must be 2-D rows x features, got shape {list(rows.shape)}")
        if n_features and rows.shape[1] != n_features:
            raise ProtocolError(f"the model takes {n_features} features, got {rows.shape[1]}")
        out = {"predict": np.asarray(model.predict(rows))}
        if "predict_proba" in want:
            if not has_proba:
                raise ProtocolError("the model has no predict_proba")
            out["predict_proba"] = np.asarray(model.predict_proba(rows), dtype=np.float64)
        return out

    def decode_v2(body: Any) -> tuple[np.ndarray, list[str]]:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
            raise ProtocolError("the request has no `inputs` list")
        want = [str(o.get("name")) for o in body.get("outputs") or [] if isinstance(o, dict)] or ["predict"]
        return tensor_array(body["inputs"][0]).astype(np.float64), want

    def encode_v2(outs: dict[str, np.ndarray], want: list[str]) -> dict[str, Any]:
        return {"model_name": name, "outputs": [v2_tensor(k, v) for k, v in outs.items() if k in want]}

    def decode_v1(body: Any) -> tuple[np.ndarray, list[str]]:
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
            raise ProtocolError("the request has no `instances` list")
        want = ["predict", "predict_proba"] if has_proba else ["predict"]
        return np.asarray(body["instances"], dtype=np.float64), want

    def encode_v1(outs: dict[str, np.ndarray], _: list[str]) -> dict[str, Any]:
        resp: dict[str, Any] = {"predictions": outs["predict"].tolist()}
        if "predict_proba" in outs:
            resp["probabilities"] = outs["predict_proba"].tolist()
        return resp

    def infer(protocol: str, decode: Callable[[Any], tuple[np.ndarray, list[str]]],
              encode: Callable[[dict[str, np.ndarray], list[str]], dict[str, Any]]) -> Callable[
            [web.Request], Awaitable[web.Response]]:
        """One inference handler per protocol: the same checks, counting and timing for both."""
        async def handler(request: web.Request) -> web.Response:
            check_name(request)
            t0 = time.perf_counter()
            try:
                rows, want = decode(await request.json())
                outs = run(rows, want)
            except (ProtocolError, ValueError, TypeError) as e:
                m.errors.labels(name, protocol, "400").inc()
                m.requests.labels(name, protocol, "400").inc()
                return error(400, str(e))
            resp = encode(outs, want)
            m.rows.labels(name).inc(len(rows))
            m.requests.labels(name, protocol, "200").inc()
            m.latency.labels(name, protocol).observe(time.perf_counter() - t0)
            return web.json_response(resp)

        return handler

    async def v1_status(request: web.Request) -> web.Response:
        check_name(request)
        return web.json_response({"name": name, "ready": True})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(m.registry), content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=middlewares or [], client_max_size=64 * 2**20)
    app.add_routes([
        web.get("/v2/health/live", ready), web.get("/v2/health/ready", ready),
        web.get("/v2/models/{name}", metadata), web.get("/v2/models/{name}/ready", ready),
        web.post("/v2/models/{name}/infer", infer("v2", decode_v2, encode_v2)),
        web.get("/v1/models/{name:[^/:]+}", v1_status),
        web.post("/v1/models/{name:[^/:]+}:predict", infer("v1", decode_v1, encode_v1)),
        web.get("/metrics", metrics),
    ])
    return app


def run_server(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.model, trust_pickle=args.trust_pickle)
    except ModelLoadError as e:
        print(f"error: {e}", flush=True)
        return 2
    print(f"serving {args.model} as {args.name!r} on http://{args.host}:{args.port} (pid {os.getpid()})", flush=True)
    web.run_app(make_app(model, args.name), host=args.host, port=args.port, access_log=None, print=None)
    return 0
