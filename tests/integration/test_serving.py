"""The reference server and the client over real HTTP: both protocols, and every fault named."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest

from modelrollout.serving.client import Endpoint, ModelClient, ServerError
from tests.integration.conftest import Server, Trained, free_port

pytestmark = pytest.mark.integration


def test_v2_predictions_and_probabilities_equal_the_model(trained: Trained,
                                                            start_server: Callable[..., Server]) -> None:
    srv = start_server(trained.candidate, name="churn")
    model = trained.models["candidate"]

    async def go() -> None:
        async with ModelClient(Endpoint(srv.url, "churn", "v2")) as c:
            assert await c.ready()
            meta = await c.metadata()
            assert meta["name"] == "churn" and meta["parameters"]["classes"] == [0, 1]
            pred = await c.predict_all(trained.X, batch_size=50)
            assert (pred.labels == model.predict(trained.X)).all()  # type: ignore[attr-defined]
            assert pred.proba is not None
            np.testing.assert_allclose(pred.proba, model.predict_proba(trained.X), rtol=1e-12)  # type: ignore[attr-defined]

    asyncio.run(go())


def test_v1_protocol(trained: Trained, start_server: Callable[..., Server]) -> None:
    srv = start_server(trained.baseline, name="churn")

    async def go() -> None:
        async with ModelClient(Endpoint(srv.url, "churn", "v1")) as c:
            assert await c.ready()
            pred = await c.predict(trained.X[:7])
            assert (pred.labels == trained.models["baseline"].predict(trained.X[:7])).all()  # type: ignore[attr-defined]

    asyncio.run(go())


def test_bad_request_gets_400_with_reason(trained: Trained, start_server: Callable[..., Server]) -> None:
    srv = start_server(trained.candidate)

    async def go() -> None:
        async with ModelClient(Endpoint(srv.url, "m", "v2")) as c:
            with pytest.raises(ServerError) as e:
                await c.predict(trained.X[:3, :5])
            assert e.value.kind == "http_4xx" and "the model takes 30 features, got 5" in str(e.value)

    asyncio.run(go())


@pytest.mark.parametrize(("mode", "kind", "words"), [
    ("500", "http_5xx", "HTTP 500"),
    ("malformed", "malformed", "response is not JSON"),
    ("wrong_count", "bad_response", "1 predictions of shape [1] for 5 rows"),
    ("huge", "too_large", "exceeds the limit"),
    ("hang", "timeout", "no answer within 1s"),
    ("close", "disconnected", "connection closed mid-response"),
])
def test_each_fault_is_named(trained: Trained, start_server: Callable[..., Server], mode: str, kind: str,
                             words: str) -> None:
    srv = start_server(trained.candidate, mode=mode)

    async def go() -> None:
        ep = Endpoint(srv.url, "m", "v2", timeout=1.0, max_response_bytes=2**20, label="candidate")
        async with ModelClient(ep) as c:
            with pytest.raises(ServerError) as e:
                await c.predict(trained.X[:5])
        assert e.value.kind == kind, str(e.value)
        assert words in str(e.value)
        assert str(e.value).startswith(f"candidate server {srv.url}: POST /v2/models/m/infer (batch of 5 rows)")

    asyncio.run(go())


def test_refused_connection_is_named() -> None:
    async def go() -> None:
        async with ModelClient(Endpoint(f"http://127.0.0.1:{free_port()}", "m", label="baseline")) as c:
            assert not await c.ready()
            with pytest.raises(ServerError) as e:
                await c.predict(np.zeros((1, 3)))
        assert e.value.kind == "connection" and "cannot connect" in str(e.value)

    asyncio.run(go())


def test_pickle_needs_an_explicit_flag(trained: Trained, tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(trained.models["baseline"], path)
    out = subprocess.run([sys.executable, "-m", "modelrollout.cli", "serve", str(path), "--port", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "runs any code inside it; pass --trust-pickle" in out.stdout
