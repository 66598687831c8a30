"""Interoperability with a real third-party V2 server, both ways: MLServer (scikit-learn runtime).

Our client, load probe and evaluation talk to MLServer; MLServer's own request codec and
response types talk to our reference server. MLServer lives in its own virtualenv (it pins
its own dependencies), installed by `./dev test` at $MODELROLLOUT_MLSERVER_VENV.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from modelrollout.core.quality import DataError, encode, metrics
from modelrollout.probes.load import LoadConfig, run_load
from modelrollout.serving.client import Endpoint, ModelClient
from tests.integration.conftest import Server, Trained, free_port, third_party_server

pytestmark = pytest.mark.integration
VENV = Path(os.environ.get("MODELROLLOUT_MLSERVER_VENV", Path.home() / ".cache/modelrollout/mlserver-venv"))


@pytest.fixture(scope="module")
def mlserver(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert (VENV / "bin" / "mlserver").exists(), f"MLServer is not installed in {VENV}: run ./dev test"
    d = tmp_path_factory.mktemp("mlserver")
    joblib.dump(trained.models["candidate"], d / "model.joblib")  # a file this test made itself
    port = free_port()
    (d / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1",
        "parallel_workers": 0}))
    (d / "model-settings.json").write_text(json.dumps({
        "name": "churn", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"}}))
    url = f"http://127.0.0.1:{port}"
    with third_party_server([str(VENV / "bin" / "mlserver"), "start", str(d)], d, d / "mlserver.log",
                            url + "/v2/models/churn/ready"):
        yield url


def test_our_client_reads_mlserver_predictions_and_probabilities(trained: Trained, mlserver: str) -> None:
    model = trained.models["candidate"]

    async def go() -> None:
        async with ModelClient(Endpoint(mlserver, "churn", "v2")) as c:
            assert await c.ready()
            meta = await c.metadata()
            assert meta["name"] == "churn"
            pred = await c.predict_all(trained.X, batch_size=64)
        assert (pred.labels == model.predict(trained.X)).all()  # type: ignore[attr-defined]
        assert pred.proba is not None
        np.testing.assert_allclose(pred.proba, model.predict_proba(trained.X), rtol=1e-9)  # type: ignore[attr-defined]

    asyncio.run(go())


def test_class_order_is_never_guessed_and_figures_equal_sklearns_for_either_positive_label(
        trained: Trained, mlserver: str) -> None:
    """MLServer's metadata does not give the class order: two probability columns are refused until the
    manifest names it (spec.serving.classes), then ROC-AUC equals scikit-learn's for positiveLabel 0 and 1."""
    model = trained.models["candidate"]

    async def go() -> tuple[Any, Any]:
        async with ModelClient(Endpoint(mlserver, "churn", "v2")) as c:
            return await c.predict_all(trained.X, batch_size=64), await c.classes()

    pred, classes = asyncio.run(go())
    assert classes is None and pred.proba is not None and pred.proba.shape == (len(trained.y), 2)
    with pytest.raises(DataError, match="class order is unknown"):
        encode("binary-classification", trained.y, pred.labels, pred.proba)
    truth = model.predict_proba(trained.X)  # type: ignore[attr-defined]
    for positive in (0, 1):
        pb = encode("binary-classification", trained.y, pred.labels, pred.proba, classes=[0, 1],
                    positive_label=positive)
        ours = metrics(pb)
        assert ours["roc_auc"] == pytest.approx(roc_auc_score(trained.y == positive, truth[:, positive]), abs=1e-12)
        assert ours["f1"] == pytest.approx(f1_score(trained.y, pred.labels, pos_label=positive), abs=1e-12)


def test_our_load_probe_drives_mlserver(trained: Trained, mlserver: str) -> None:
    body = json.dumps(Endpoint(mlserver, "churn").request_body(trained.X[:4], proba=False)).encode()
    r = run_load(LoadConfig(url=mlserver + "/v2/models/churn/infer", bodies=[body], batch_size=4, concurrency=4,
                            duration=1.5, warmup=0.5))
    assert r.requests > 20 and r.errors == {}


MLSERVER_CLIENT = """
import json, sys, urllib.request
import numpy as np
from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.types import InferenceResponse, MetadataModelResponse, RequestOutput
url, X = sys.argv[1], np.array(json.loads(sys.argv[2]))
req = NumpyRequestCodec.encode_request(X)
req.outputs = [RequestOutput(name="predict"), RequestOutput(name="predict_proba")]
r = urllib.request.urlopen(urllib.request.Request(url + "/v2/models/churn/infer", data=req.model_dump_json().encode(),
                           headers={"Content-Type": "application/json"}))
resp = InferenceResponse.model_validate_json(r.read())
meta = MetadataModelResponse.model_validate_json(urllib.request.urlopen(url + "/v2/models/churn").read())
out = {o.name: NumpyCodec.decode_output(o).tolist() for o in resp.outputs}
print(json.dumps({"model": resp.model_name, "meta": meta.name, **out}))
"""


def test_mlserver_codec_and_types_talk_to_our_server(trained: Trained, start_server: Callable[..., Server]) -> None:
    srv = start_server(trained.candidate, name="churn")
    X = trained.X[:6]
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", MLSERVER_CLIENT, srv.url, json.dumps(X.tolist())],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    model = trained.models["candidate"]
    assert got["model"] == "churn" and got["meta"] == "churn"
    assert np.ravel(got["predict"]).tolist() == model.predict(X).tolist()  # type: ignore[attr-defined]
    np.testing.assert_allclose(got["predict_proba"], model.predict_proba(X), rtol=1e-12)  # type: ignore[attr-defined]
