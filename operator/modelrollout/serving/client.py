"""An async client for V2 (Open Inference Protocol) and V1 model servers.

Every error says which server, which request and what came back, because "the rollout
failed" is useless without knowing that the candidate answered HTTP 500 to batch 3.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import aiohttp
import numpy as np

from modelrollout.serving.protocol import (
    Prediction,
    ProtocolError,
    parse_v1_response,
    parse_v2_response,
    v1_request,
    v2_request,
)

Protocol = Literal["v2", "v1"]


class ServerError(Exception):
    """A model server failed a request. `kind` is a short, stable category for counting."""

    def __init__(self, server: str, request: str, kind: str, detail: str):
        self.server, self.request, self.kind, self.detail = server, request, kind, detail
        super().__init__(f"{server}: {request}: {detail}")


@dataclass(frozen=True)
class Endpoint:
    """Where a model is served and how to talk to it."""

    url: str
    model_name: str
    protocol: Protocol = "v2"
    timeout: float = 10.0
    max_response_bytes: int = 8 * 2**20
    label: str = "server"  # "candidate" or "baseline", for messages
    headers: tuple[tuple[str, str], ...] = ()
    outputs: tuple[str, str | None] = ("predict", "predict_proba")  # V2 output names: labels, probabilities

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    def infer_path(self) -> str:
        if self.protocol == "v2":
            return f"/v2/models/{self.model_name}/infer"
        return f"/v1/models/{self.model_name}:predict"

    def request_body(self, rows: np.ndarray, proba: bool = True) -> dict[str, Any]:
        if self.protocol == "v2":
            labels, probabilities = self.outputs
            return v2_request(rows, [labels, probabilities] if proba and probabilities else [labels])
        return v1_request(rows)


class ModelClient:
    """Connection-reusing client; use as `async with ModelClient(endpoint) as c:`."""

    def __init__(self, endpoint: Endpoint, connections: int = 16):
        self.ep = endpoint
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ModelClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=self.ep.timeout),
            headers=dict(self.ep.headers),
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ModelClient used outside `async with`")
        return self._session

    async def _call(self, method: str, path: str, what: str, body: Any = None) -> tuple[int, bytes]:
        server = f"{self.ep.label} server {self.ep.base}"
        request = f"{method} {path} ({what})"
        try:
            async with self.session.request(method, self.ep.base + path, json=body) as resp:
                limit = self.ep.max_response_bytes
                if resp.content_length is not None and resp.content_length > limit:
                    raise ServerError(server, request, "too_large",
                                      f"response of {resp.content_length} bytes exceeds the limit of {limit}")
                data = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > limit:
                        raise ServerError(server, request, "too_large",
                                          f"response exceeds the limit of {limit} bytes")
                return resp.status, bytes(data)
        except ServerError:
            raise
        except TimeoutError:
            raise ServerError(server, request, "timeout", f"no answer within {self.ep.timeout:g}s") from None
        except aiohttp.ClientConnectorError as e:
            raise ServerError(server, request, "connection", f"cannot connect ({e.os_error})") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as e:
            raise ServerError(server, request, "disconnected",
                              f"connection closed mid-response ({type(e).__name__})") from None
        except aiohttp.ClientError as e:
            raise ServerError(server, request, "connection", f"{type(e).__name__}: {e}") from None

    async def _json(self, method: str, path: str, what: str, body: Any = None) -> Any:
        status, data = await self._call(method, path, what, body)
        server = f"{self.ep.label} server {self.ep.base}"
        request = f"{method} {path} ({what})"
        if status != 200:
            raise ServerError(server, request, f"http_{status // 100}xx",
                              f"HTTP {status}: {data[:300].decode('utf-8', 'replace')}")
        try:
            return json.loads(data)
        except ValueError:
            raise ServerError(server, request, "malformed",
                              f"response is not JSON: {data[:120].decode('utf-8', 'replace')!r}") from None

    async def _readiness(self) -> str | None:
        """None when ready, else what went wrong."""
        path = "/v2/health/ready" if self.ep.protocol == "v2" else f"/v1/models/{self.ep.model_name}"
        try:
            status, _ = await self._call("GET", path, "readiness")
        except ServerError as e:
            return e.detail
        return None if status == 200 else f"HTTP {status}"

    async def ready(self) -> bool:
        return await self._readiness() is None

    async def wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (problem := await self._readiness()) is not None:
            if loop.time() > end:
                raise ServerError(f"{self.ep.label} server {self.ep.base}", f"GET {self.ep.base} readiness",
                                  "not_ready", f"not ready within {timeout:g}s (last answer: {problem})")
            await asyncio.sleep(0.2)

    async def metadata(self) -> dict[str, Any]:
        if self.ep.protocol == "v1":
            return {"name": self.ep.model_name}
        body = await self._json("GET", f"/v2/models/{self.ep.model_name}", "model metadata")
        if not isinstance(body, dict):
            raise ServerError(self.ep.base, "model metadata", "malformed", "metadata is not an object")
        return body

    async def predict(self, rows: np.ndarray, what: str = "batch") -> Prediction:
        try:
            body = await self._json("POST", self.ep.infer_path(), f"{what} of {len(rows)} rows",
                                    self.ep.request_body(rows))
        except ServerError as e:
            asked = [o for o in self.ep.outputs if o is not None]
            if self.ep.protocol == "v2" and e.kind == "http_4xx" and any(o in e.detail for o in asked):
                # KServe answers 400 "Unexpected inference output 'predict'" to a name its model lacks
                raise ServerError(e.server, e.request, e.kind,
                                  f"{e.detail} (the request asked for the outputs {asked}; if the server names "
                                  "them otherwise, as KServe's scikit-learn runtime answers one output "
                                  "`output-0`, name them in spec.serving.outputs)") from None
            raise
        try:
            if self.ep.protocol == "v2":
                return parse_v2_response(body, len(rows), *self.ep.outputs)
            return parse_v1_response(body, len(rows))
        except ProtocolError as e:
            raise ServerError(f"{self.ep.label} server {self.ep.base}",
                              f"POST {self.ep.infer_path()} ({what} of {len(rows)} rows)", "bad_response",
                              str(e)) from None

    async def predict_all(self, X: np.ndarray, batch_size: int = 256, concurrency: int = 4) -> Prediction:
        """Predictions for every row, in row order, batched and a few batches in flight."""
        starts = list(range(0, len(X), batch_size))
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int, s: int) -> Prediction:
            async with sem:
                return await self.predict(X[s:s + batch_size], what=f"hold-out batch {i}")

        parts: Sequence[Prediction] = await asyncio.gather(*(one(i, s) for i, s in enumerate(starts)))
        labels = np.concatenate([p.labels for p in parts])
        probas = [p.proba for p in parts if p.proba is not None]
        proba = np.concatenate(probas) if len(probas) == len(parts) else None
        return Prediction(labels, proba)

    async def classes(self) -> list[Any] | None:
        """The model's classes in probability-column order, when the server says."""
        if self.ep.protocol != "v2":
            return None
        meta = await self.metadata()
        params = meta.get("parameters") or {}
        cls = params.get("classes") if isinstance(params, dict) else None
        return list(cls) if isinstance(cls, list) else None
