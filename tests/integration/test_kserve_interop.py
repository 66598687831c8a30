"""Interoperability with KServe's own Python model server (PyPI `kserve`: `kserve.ModelServer`).

KServe's scikit-learn runtime (`sklearnserver`) is not on PyPI; what it runs is a `kserve.Model`
whose predict turns the request into an array with `get_predict_input` and the answer into one
output, `output-0`, with `get_predict_response` (labels, or with PREDICT_PROBA the probabilities).
The script below is such a model, served by KServe's real ModelServer (FastAPI/uvicorn, V2 REST),
plus two custom predictors naming their outputs. KServe lives in its own virtualenv, installed by
`./dev test` at $MODELROLLOUT_KSERVE_VENV. Its metadata has no `parameters`, so it cannot give
the class order: that comes from spec.serving.classes, or scoring is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, log_loss, roc_auc_score

from modelrollout.cli.evaluate import endpoint
from modelrollout.core.quality import DataError, encode, metrics
from modelrollout.core.report import Report
from modelrollout.core.spec import ModelRolloutSpec, parse_manifest
from modelrollout.evaluation import Measured, Variant, evaluate_servers
from modelrollout.holdout import prepare
from modelrollout.probes.load import LoadConfig, run_load
from modelrollout.serving.client import Endpoint, ModelClient, ServerError
from tests.integration.conftest import Trained, free_port, third_party_server

pytestmark = pytest.mark.integration
VENV = Path(os.environ.get("MODELROLLOUT_KSERVE_VENV", Path.home() / ".cache/modelrollout/kserve-venv"))
MODELS = {"churn": "labels", "churn-proba": "proba", "churn-named": "named", "churn-positive": "positive"}

SERVER = '''
import sys

import joblib
import uvicorn
from kserve import Model, ModelServer
from kserve.protocol.infer_type import InferOutput, InferResponse
from kserve.utils.numpy_codec import from_np_dtype
from kserve.utils.utils import generate_uuid, get_predict_input, get_predict_response


class Loopback(uvicorn.Config):  # KServe binds 0.0.0.0 and has no option for it: keep the test on loopback
    def __init__(self, *a, **k):
        super().__init__(*a, **{**k, "host": "127.0.0.1"})


uvicorn.Config = Loopback


def tensor(name, a):
    out = InferOutput(name=name, shape=list(a.shape), datatype=from_np_dtype(a.dtype))
    out.set_data_from_numpy(a)
    return out


class SKLearn(Model):
    """labels, proba: as KServe's scikit-learn runtime (one output, output-0; proba is PREDICT_PROBA=true).
    named: outputs predict and predict_proba; positive: predict and the positive class's probability alone."""

    def __init__(self, name, path, reply):
        super().__init__(name)
        self.path, self.reply = path, reply

    def load(self):
        self.model = joblib.load(self.path)
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        X = get_predict_input(payload)
        if self.reply == "labels":
            return get_predict_response(payload, self.model.predict(X), self.name)
        if self.reply == "proba":
            return get_predict_response(payload, self.model.predict_proba(X), self.name)
        proba = self.model.predict_proba(X)
        if self.reply == "positive":
            proba = proba[:, 1]
        outs = [tensor("predict", self.model.predict(X)), tensor("predict_proba", proba)]
        return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=outs,
                             requested_outputs=payload.request_outputs)


if __name__ == "__main__":
    path, port = sys.argv[1], int(sys.argv[2])
    models = [SKLearn(name, path, reply) for name, reply in zip(sys.argv[3::2], sys.argv[4::2])]
    for m in models:
        m.load()
    ModelServer(http_port=port, enable_grpc=False, workers=1).start(models)
'''


@pytest.fixture(scope="module")
def kserve(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert (VENV / ".installed").exists(), f"KServe is not installed in {VENV}: run ./dev test"
    d = tmp_path_factory.mktemp("kserve")
    joblib.dump(trained.models["candidate"], d / "model.joblib")  # a file this test made itself
    (d / "serve.py").write_text(SERVER)
    port = free_port()
    args = [a for kv in MODELS.items() for a in kv]
    url = f"http://127.0.0.1:{port}"
    with third_party_server([str(VENV / "bin" / "python"), str(d / "serve.py"), str(d / "model.joblib"), str(port),
                             *args], d, d / "kserve.log", url + "/v2/health/ready"):
        yield url


def _spec(model: str, positive: int, classes: list[int] | None, outputs: dict[str, Any] | None = None,
          ) -> ModelRolloutSpec:
    serving: dict[str, Any] = {"protocol": "v2", "modelName": model}
    if classes is not None:
        serving["classes"] = classes
    if outputs is not None:
        serving["outputs"] = outputs
    _, spec = parse_manifest({
        "apiVersion": "modelrollout.dev/v1alpha1", "kind": "ModelRollout", "metadata": {"name": "churn"},
        "spec": {"targetRef": {"name": "churn"}, "task": "binary-classification", "serving": serving,
                 "holdout": {"file": "holdout.csv", "labelColumn": "churned", "positiveLabel": positive},
                 "load": {"duration": "400ms", "warmup": "100ms", "concurrency": 2, "batchSizes": [8],
                          "leakRequests": 0},
                 "quality": {"resamples": 0}, "gates": [{"metric": "roc_auc", "min": 0.5}]}})
    return spec


def _evaluate(trained: Trained, url: str, spec: ModelRolloutSpec) -> tuple[Report, Measured]:
    """The evaluation the CLI and the operator run: endpoint from the spec, hold-out, load sweep, scoring."""
    df = pd.DataFrame(trained.X, columns=[f"f{i}" for i in range(trained.X.shape[1])]).assign(churned=trained.y)
    hold = prepare(df, task="binary-classification", label_column="churned")
    cand = Variant("candidate", endpoint(spec, url, "candidate"))
    report, measured = asyncio.run(evaluate_servers(spec, hold, cand, None))
    return report, measured["candidate"]


def _sklearns(y: np.ndarray, labels: np.ndarray, p_positive: np.ndarray, positive: int) -> dict[str, float]:
    truth = y == positive
    return {"roc_auc": roc_auc_score(truth, p_positive), "pr_auc": average_precision_score(truth, p_positive),
            "log_loss": log_loss(truth, p_positive, labels=[False, True]),
            "f1": f1_score(y, labels, pos_label=positive), "accuracy": accuracy_score(y, labels)}


def test_kserves_default_reply_output_0_is_read_once_the_manifest_names_it(trained: Trained, kserve: str) -> None:
    """KServe's scikit-learn runtime answers one output, `output-0`, and refuses (400) a request naming
    outputs its model lacks: with our default names the error says so; named in spec.serving.outputs,
    `output-0` is read as the labels. Its PREDICT_PROBA reply (probabilities alone) is refused as labels."""
    model = trained.models["candidate"]

    async def go() -> None:
        async with ModelClient(Endpoint(kserve, "churn", outputs=("output-0", None))) as c:
            assert await c.ready()
            meta = await c.metadata()
            assert meta["name"] == "churn" and not meta.get("parameters")  # no room for the class order
            assert await c.classes() is None
            pred = await c.predict_all(trained.X, batch_size=64)
        assert pred.labels.tolist() == model.predict(trained.X).tolist()  # type: ignore[attr-defined]
        assert pred.proba is None
        async with ModelClient(Endpoint(kserve, "churn")) as c:  # asks for predict and predict_proba
            with pytest.raises(ServerError, match=r"HTTP 400: .*Unexpected inference output 'predict'.*"
                                                  r"spec\.serving\.outputs") as e:
                await c.predict(trained.X[:3])
            assert e.value.kind == "http_4xx"
        async with ModelClient(Endpoint(kserve, "churn-proba", outputs=("output-0", None))) as c:
            with pytest.raises(ServerError, match=r"'output-0' has 2 columns of numbers: probabilities") as e:
                await c.predict(trained.X[:3])
            assert e.value.kind == "bad_response"

    asyncio.run(go())
    report, m = _evaluate(trained, kserve, _spec("churn", 1, None, {"labels": "output-0", "probabilities": None}))
    labels = model.predict(trained.X)  # type: ignore[attr-defined]
    assert m.prediction.labels.tolist() == labels.tolist() and m.prediction.proba is None
    ours = report.evidence.candidate
    assert "roc_auc" not in ours and ours["error_rate_percent"] == 0.0
    assert ours["f1"] == pytest.approx(f1_score(trained.y, labels), abs=1e-12)
    assert ours["accuracy"] == pytest.approx(accuracy_score(trained.y, labels), abs=1e-12)


def test_class_order_comes_from_serving_classes_and_figures_equal_sklearns_for_either_positive_label(
        trained: Trained, kserve: str) -> None:
    """Two probability columns from KServe: refused without spec.serving.classes (never guessed), then every
    figure of the evaluation equals scikit-learn's on the same answers, for positiveLabel 0 and 1
    (the guessed order gave roc_auc 0.0089 instead of 0.9911 for positiveLabel 0)."""
    model = trained.models["candidate"]
    with pytest.raises(DataError, match=r"class order is unknown: .*set spec\.serving\.classes"):
        _evaluate(trained, kserve, _spec("churn-named", 0, None))
    for positive in (0, 1):
        report, m = _evaluate(trained, kserve, _spec("churn-named", positive, [0, 1]))
        pred = m.prediction
        assert m.classes == [0, 1] and pred.proba is not None and pred.proba.shape == (len(trained.y), 2)
        assert pred.labels.tolist() == model.predict(trained.X).tolist()  # type: ignore[attr-defined]
        np.testing.assert_allclose(pred.proba, model.predict_proba(trained.X), rtol=1e-12)  # type: ignore[attr-defined]
        ours = report.evidence.candidate
        want = _sklearns(trained.y, pred.labels, pred.proba[:, positive], positive)
        for k, v in want.items():
            assert ours[k] == pytest.approx(v, abs=1e-12), (positive, k)
        assert ours["roc_auc"] > 0.95
        assert report.evidence.candidate["error_rate_percent"] == 0.0
    # the manifest's order is the one used: named wrongly, the columns swap and ROC-AUC turns over
    swapped = metrics(encode("binary-classification", trained.y, pred.labels, pred.proba, classes=[1, 0],
                             positive_label=1))
    assert swapped["roc_auc"] == pytest.approx(1 - want["roc_auc"], abs=1e-12)


def test_one_column_of_the_positive_class_probability_needs_no_class_order(trained: Trained, kserve: str) -> None:
    model = trained.models["candidate"]
    report, m = _evaluate(trained, kserve, _spec("churn-positive", 1, None))
    pred = m.prediction
    assert m.classes is None and pred.proba is not None and pred.proba.shape == (len(trained.y), 1)
    np.testing.assert_allclose(pred.proba[:, 0], model.predict_proba(trained.X)[:, 1], rtol=1e-12)  # type: ignore[attr-defined]
    want = _sklearns(trained.y, pred.labels, pred.proba[:, 0], 1)
    for k, v in want.items():
        assert report.evidence.candidate[k] == pytest.approx(v, abs=1e-12), k


def test_one_column_with_positive_label_0_is_read_as_class_1s_probability_or_refused(
        trained: Trained, kserve: str) -> None:
    with pytest.raises(DataError, match="class order is unknown and the positive label is 0"):
        _evaluate(trained, kserve, _spec("churn-positive", 0, None))
    report, m = _evaluate(trained, kserve, _spec("churn-positive", 0, [0, 1]))
    assert m.prediction.proba is not None
    want = _sklearns(trained.y, m.prediction.labels, 1 - m.prediction.proba[:, 0], 0)
    for k, v in want.items():
        assert report.evidence.candidate[k] == pytest.approx(v, abs=1e-12), k
    assert report.evidence.candidate["roc_auc"] > 0.9


def test_our_load_probe_drives_kserve(trained: Trained, kserve: str) -> None:
    for name, outputs in (("churn", ("output-0", None)), ("churn-named", ("predict", "predict_proba"))):
        ep = Endpoint(kserve, name, outputs=outputs)
        body = ep.request_body(trained.X[:4], proba=False)
        r = run_load(LoadConfig(url=ep.base + ep.infer_path(), bodies=[json.dumps(body).encode()], batch_size=4,
                                concurrency=4, duration=0.8, warmup=0.2))
        assert r.requests > 20 and r.errors == {}, (name, r.errors)
