"""`modelrollout serve`: a reference server for scikit-learn models, V2 and V1, with metrics.

Models load from skops files, which are data, not code, and only with the types that
`trust.py` allows. A pickle or joblib file runs code when loaded, so it needs an explicit flag.

Safe on a shared cluster, within `Limits` (options.py), one client cannot stall or exhaust it:
- parsing, prediction and encoding run in a worker thread, so health checks and /metrics
  answer while a big batch is predicted;
- at most `max_inflight` inference requests are admitted at once; one more waits up to
  `queue_wait` seconds for a slot, then gets 503 with Retry-After, its body unread;
- a body over `max_body_bytes` gets 413, one slower than `body_timeout` gets 408;
- `idle_timeout` (aiohttp's keep-alive timer) drops a connection that has not completed a
  request in time, which includes a client that never finishes its headers;
- a bad request gets 400 with a reason of at most 300 characters that never repeats the
  values sent: numpy's and scikit-learn's own messages may quote them, so they stay here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest

from modelrollout.serving.options import Limits
from modelrollout.serving.protocol import ProtocolError, clip, numbers, parse_json, tensor_array, v2_tensor
from modelrollout.serving.trust import refused_types

LINGER_S = 2.0  # after a 408/413/503, how long aiohttp drains the unread body before closing
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
    refused = refused_types(untrusted)
    if refused:
        named = ", ".join(clip(t, 80) for t in refused[:5]) + (f" and {len(refused) - 5} more" * (len(refused) > 5))
        raise ModelLoadError(f"{p}: refusing {len(refused)} type(s) a scikit-learn model does not need: {named}")
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




def make_app(model: Any, name: str, *, middlewares: list[Any] | None = None,
             limits: Limits | None = None) -> web.Application:
    """The aiohttp application; tests wrap it with fault-injecting middlewares."""
    limits = limits or Limits()
    m = Metrics(name)
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])]
    has_proba = hasattr(model, "predict_proba")
    offered = ["predict", "predict_proba"] if has_proba else ["predict"]
    n_features = int(getattr(model, "n_features_in_", 0)) or None
    slots = asyncio.Semaphore(limits.max_inflight)

    def check_name(request: web.Request) -> None:
        if request.match_info["name"] != name:
            raise web.HTTPNotFound(text=json.dumps({"error": f"model {clip(request.match_info['name'], 60)!r} "
                                                             "not found"}), content_type="application/json")

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
            raise ProtocolError(f"input must be 2-D rows x features, got shape {clip(str(list(rows.shape)), 80)}")
        if n_features and rows.shape[1] != n_features:
            raise ProtocolError(f"the model takes {n_features} features, got {rows.shape[1]}")
        if np.isinf(rows).any():
            raise ProtocolError("an input is infinite or beyond the range of its datatype")
        try:
            out = {"predict": np.asarray(model.predict(rows))}
            if "predict_proba" in want:
                out["predict_proba"] = np.asarray(model.predict_proba(rows), dtype=np.float64)
        except (ValueError, TypeError, ArithmeticError) as e:  # its message may quote the inputs
            if np.isnan(rows).any():
                raise ProtocolError("the inputs hold NaN (missing values), which this model does not take") from None
            raise ProtocolError(f"the model cannot predict on these inputs ({type(e).__name__})") from None
        return out

    def outputs_wanted(body: dict[str, Any]) -> list[str]:
        outputs = body.get("outputs")
        if outputs is None:
            return ["predict"]
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise ProtocolError('`outputs` must be a list of {"name": ...} objects')
        unknown = [o["name"] for o in outputs if o["name"] not in offered]
        if unknown:
            raise ProtocolError(f"{len(unknown)} unknown output(s), the first {clip(unknown[0], 40)!r}; "
                                f"this model offers {', '.join(offered)}")
        return [o["name"] for o in outputs] or ["predict"]

    def decode_v2(body: Any) -> tuple[np.ndarray, list[str]]:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
            raise ProtocolError("the request has no `inputs` list")
        want = outputs_wanted(body)
        rows = tensor_array(body["inputs"][0])
        if rows.dtype == object:
            raise ProtocolError("the input is BYTES; the model takes numbers")
        return rows.astype(np.float64), want

    def encode_v2(outs: dict[str, np.ndarray], want: list[str]) -> dict[str, Any]:
        return {"model_name": name, "outputs": [v2_tensor(k, v) for k, v in outs.items() if k in want]}

    def decode_v1(body: Any) -> tuple[np.ndarray, list[str]]:
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
            raise ProtocolError("the request has no `instances` list")
        return numbers(body["instances"], np.float64, "`instances`"), offered

    def encode_v1(outs: dict[str, np.ndarray], _: list[str]) -> dict[str, Any]:
        resp: dict[str, Any] = {"predictions": outs["predict"].tolist()}
        if "predict_proba" in outs:
            resp["probabilities"] = outs["predict_proba"].tolist()
        return resp

    def failure(protocol: str, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        m.errors.labels(name, protocol, str(status)).inc()
        m.requests.labels(name, protocol, str(status)).inc()
        return web.json_response({"error": clip(message)}, status=status, headers=headers)

    async def admit() -> bool:
        """A slot for one request, waiting at most limits.queue_wait for it."""
        try:
            async with asyncio.timeout(limits.queue_wait):
                await slots.acquire()
        except TimeoutError:
            return False
        return True

    def infer(protocol: str, decode: Callable[[Any], tuple[np.ndarray, list[str]]],
              encode: Callable[[dict[str, np.ndarray], list[str]], dict[str, Any]]) -> Callable[
            [web.Request], Awaitable[web.Response]]:
        """One inference handler per protocol: the same limits, checks, counting and timing for both."""
        def answer(body: bytes) -> tuple[bytes, int]:
            """The CPU-bound part, for a worker thread: parse, check, predict, encode."""
            try:
                rows, want = decode(parse_json(body))
            except RecursionError:  # parse_json catches the JSON's own; this is any left in decoding
                raise ProtocolError("the JSON nests too deeply") from None
            resp = encode(run(rows, want), want)
            return json.dumps(resp).encode(), len(rows)

        async def handler(request: web.Request) -> web.Response:
            check_name(request)
            t0 = time.perf_counter()
            if not await admit():
                return failure(protocol, 503, f"busy: {limits.max_inflight} requests in progress, try again",
                               headers={"Retry-After": "1"})
            try:  # the slot is held until the thread is done, even if the client has gone
                try:
                    async with asyncio.timeout(limits.body_timeout):
                        body = await request.read()
                except TimeoutError:
                    return failure(protocol, 408, f"the body did not arrive within {limits.body_timeout:g}s")
                except web.HTTPRequestEntityTooLarge:
                    return failure(protocol, 413, f"the body is over the limit of {limits.max_body_bytes} bytes")
                try:
                    payload, n = await asyncio.to_thread(answer, body)
                except ProtocolError as e:
                    return failure(protocol, 400, str(e))
            finally:
                slots.release()
            m.rows.labels(name).inc(n)
            m.requests.labels(name, protocol, "200").inc()
            m.latency.labels(name, protocol).observe(time.perf_counter() - t0)
            return web.Response(body=payload, content_type="application/json")

        return handler

    async def v1_status(request: web.Request) -> web.Response:
        check_name(request)
        return web.json_response({"name": name, "ready": True})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(m.registry), content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=middlewares or [], client_max_size=limits.max_body_bytes)
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
    limits = Limits.from_args(args)
    print(f"serving {args.model} as {args.name!r} on http://{args.host}:{args.port} (pid {os.getpid()})", flush=True)
    web.run_app(make_app(model, args.name, limits=limits), host=args.host, port=args.port, access_log=None,
                print=None, keepalive_timeout=limits.idle_timeout, lingering_time=LINGER_S)
    return 0
