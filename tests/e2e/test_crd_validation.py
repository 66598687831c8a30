"""The API server itself rejects bad manifests (schema and CEL rules), naming the field.

What only the operator can check (the target, the ConfigMap key, the hold-out columns)
ends in a Failed condition that says exactly that, with nothing created.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from modelrollout.core.figures import SYSTEM, TASKS, figures_for
from modelrollout.core.loadspec import SLO_FIGURES
from modelrollout.core.spec import SpecError, parse_spec
from tests.conftest import ROOT, Cluster
from tests.e2e.conftest import Scenario

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[client.CustomObjectsApi]:
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/modelrollouts.modelrollout.dev", "--timeout=60s")
    yield client.CustomObjectsApi(config.new_client_from_config(cluster.kubeconfig))  # type: ignore[no-untyped-call]


def good() -> dict[str, Any]:
    body = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "rollout.yaml").read_text()))
    body["metadata"]["namespace"] = "default"
    return dict(body)


def create(api: client.CustomObjectsApi, body: dict[str, Any]) -> str | None:
    """The API server's error message, or None when it accepts (dry run: nothing is stored)."""
    try:
        api.create_namespaced_custom_object("modelrollout.dev", "v1alpha1", "default", "modelrollouts", body,
                                            dry_run="All")
    except ApiException as e:
        return str(json.loads(e.body or "{}")["message"])
    return None


def with_(path: str, value: Any, drop: bool = False) -> dict[str, Any]:
    body = good()
    node: Any = body
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        node = node[k]
    if drop:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return body


BAD = [
    ("spec.task", "ranking", "spec.task: Unsupported value: \"ranking\""),
    ("spec.gates.0.metric", "wellness", "spec.gates[0].metric: Unsupported value: \"wellness\""),
    ("spec.gates.0.metric", "r2", "a gate metric is not defined for task binary-classification"),
    ("spec.gates.0.max", 0.1, "spec.gates[0]: Invalid value: min is greater than max"),
    ("spec.gates.0.min", "high", "spec.gates[0].min: Invalid value: \"string\""),
    ("spec.gates", [], "spec.gates: Invalid value: 0: spec.gates in body should have at least 1 items"),
    ("spec.gates.0", {"metric": "f1"}, "a gate needs a bound"),
    ("spec.gates.0", {"metric": "latency_max_ms", "max": 50, "confidence": 0.9},
     "confidence needs a figure with an interval"),
    ("spec.holdout.url", {"url": "https://example.invalid/h.csv"}, "exactly one of configMapRef, url, pvc, s3 or file"),
    ("spec.holdout.configMapRef", None, "exactly one of configMapRef, url, pvc, s3 or file"),
    ("spec.load.duration", "-5m", "spec.load.duration: Invalid value: \"-5m\""),
    ("spec.load.duration", "0s", "spec.load.duration: Invalid value: \"0s\": must be a positive duration"),
    ("spec.staging.readyTimeout", "5 parsecs", "spec.staging.readyTimeout: Invalid value: \"5 parsecs\""),
    ("spec.serving.maxResponseSize", "12Zi", "spec.serving.maxResponseSize: Invalid value: \"12Zi\": must be a "
     "positive size"),
    ("spec.load.concurrency", 0, "spec.load.concurrency: Invalid value: 0"),
    ("spec.targetRef", None, "spec.targetRef: Required value"),
    ("spec.targetRef.name", "Churn_Model", "spec.targetRef.name: Invalid value: \"Churn_Model\""),
    ("spec.promotion.canary.steps", [{"weight": 50}, {"weight": 10}], "weights must increase"),
    ("spec.promotion.approval", "Sometimes", "spec.promotion.approval: Unsupported value: \"Sometimes\""),
    ("spec.load.mode", "open", "mode open needs a rate"),
    # the load sweep's cells (as the parser: core/spec.py _cell_error, Load._rate)
    ("spec.gates.0", {"metric": "latency_p99_ms", "max": 100, "batchSize": 4}, "must name a cell of the load sweep"),
    ("spec.gates.0", {"metric": "latency_p99_ms", "max": 100, "concurrency": 16}, "must name a cell of the load sweep"),
    ("spec.gates.0", {"metric": "latency_p99_ms", "max": 100, "batchSize": 8, "confidence": 0.9},
     "confidence on a load cell other than the default"),
    ("spec.gates.0", {"metric": "f1", "min": 0.5, "batchSize": 8}, "apply only to figures measured per load cell"),
    ("spec.load.concurrencies", [8], "concurrencies repeats load.concurrency"),
    ("spec.load.batchSizes", [1, 1], "spec.load.batchSizes[1]: Duplicate value: 1"),
    ("spec.colour", "blue", "unknown field \"spec.colour\""),
    # gates the spec can never compute (as the parser: core/gatefit.py)
    ("spec.gates.0", {"metric": "bias_di", "min": 0.8}, "a bias_ measure is between two facets"),
    ("spec.gates.0", {"metric": "drift_psi_max", "max": 0.25}, "compare the hold-out with a reference set"),
    ("spec.drift", {"referenceRef": {}}, "exactly one of configMapRef, url, pvc, s3 or file"),
    ("spec.fairness", {"facet": "age", "disadvantaged": ["60+"]}, "fairness.facet must be one of holdout.sliceColumns"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD])
def test_api_server_rejects_bad_manifest_naming_the_field(api: client.CustomObjectsApi, path: str, value: Any,
                                                          message: str) -> None:
    body = with_(path, value, drop=value is None)
    if path == "spec.colour":  # unknown fields are rejected under strict field validation (kubectl's default)
        try:
            api.create_namespaced_custom_object("modelrollout.dev", "v1alpha1", "default", "modelrollouts", body,
                                                dry_run="All", field_validation="Strict")
            err = None
        except ApiException as e:
            err = str(json.loads(e.body or "{}")["message"])
    else:
        err = create(api, body)
    assert err is not None, f"accepted: {path}={value!r}"
    assert message in err, err


def test_a_group_gate_without_groups_is_refused_by_both(api: client.CustomObjectsApi) -> None:
    body = with_("spec.gates.0", {"metric": "f1_worst_group", "min": 0.5})
    assert create(api, body) is None
    del body["spec"]["holdout"]["sliceColumns"]
    err = create(api, body)
    assert err is not None and "a _slice_gap or _worst_group figure is of groups" in err, err
    with pytest.raises(SpecError, match=r"spec.gates\[0\].metric: f1_worst_group is a figure of groups"):
        parse_spec(body["spec"])


def test_the_example_is_accepted(api: client.CustomObjectsApi) -> None:
    assert create(api, good()) is None


@pytest.mark.parametrize("task", TASKS)
def test_the_api_server_and_the_engine_agree_on_every_metric(api: client.CustomObjectsApi, task: str) -> None:
    allowed = set(figures_for(task))  # type: ignore[arg-type]
    every = {m for t in TASKS for m in figures_for(t)} | {"wellness"}
    for metric in sorted(every):
        body = good()
        body["spec"]["task"] = task
        body["spec"]["gates"] = [{"metric": metric, "max": 1e9}]
        body["spec"].setdefault("load", {})["latencySLO"] = "100ms"  # the SLO figures need a search
        body["spec"]["fairness"] = {"facet": body["spec"]["holdout"]["sliceColumns"][0], "disadvantaged": ["x"]}
        body["spec"]["drift"] = {"referenceRef": {"configMapRef": {"name": "ref", "key": "ref.csv"}}}
        accepted = create(api, body) is None
        assert accepted == (metric in allowed), (task, metric)
    assert set(SYSTEM) <= allowed
    for metric in SLO_FIGURES:  # without load.latencySLO both refuse them, naming the field to set
        body = good()
        body["spec"]["task"] = task
        body["spec"]["gates"] = [{"metric": metric, "min": 1}]
        body["spec"].get("load", {}).pop("latencySLO", None)
        refused = create(api, body)
        assert refused is not None and "load.latencySLO" in refused, (task, metric, refused)
        with pytest.raises(SpecError, match=r"set load\.latencySLO"):
            parse_spec(body["spec"])


def test_operator_only_checks_end_in_a_failed_condition(scenario: Scenario, models: Any) -> None:
    cases: dict[str, tuple[dict[str, Any], str, str]] = {
        "no-target": ({"targetRef": {"name": "missing"}}, "TargetNotFound",
                      "target Deployment 'missing' does not exist"),
        "no-key": ({"holdout": {"configMapRef": {"name": "holdout", "key": "nope.csv"}, "labelColumn": "label"}},
                   "HoldoutNotFound", "has no key 'nope.csv'"),
        "no-configmap": ({"holdout": {"configMapRef": {"name": "ghost", "key": "h.csv"}, "labelColumn": "label"}},
                         "HoldoutNotFound", "ConfigMap"),
        "no-label": ({"holdout": {"configMapRef": {"name": "holdout", "key": "holdout.csv"}, "labelColumn": "churned"}},
                     "HoldoutInvalid", "label column 'churned' not found"),
        # a data gate that fails on the hold-out alone: refused before a server starts (the minority share
        # can never exceed one half)
        "bad-data": ({"gates": [{"metric": "f1", "min": 0.5}, {"metric": "label_balance", "min": 0.6}]},
                     "HoldoutQuality", "gate 1 failed: label_balance"),
        # the reference set's x0 is shifted by two standard deviations: drifted before anything is staged
        "drifted": ({"gates": [{"metric": "f1", "min": 0.5}, {"metric": "drifted_features", "max": 0}],
                     "drift": {"referenceRef": {"configMapRef": {"name": "reference", "key": "reference.csv"}}}},
                    "HoldoutQuality", "gate 1 failed: drifted_features 1 is above the maximum 0"),
        "no-reference": ({"gates": [{"metric": "f1", "min": 0.5}, {"metric": "drift_psi_max", "max": 0.25}],
                          "drift": {"referenceRef": {"configMapRef": {"name": "ghost", "key": "r.csv"}}}},
                         "HoldoutNotFound", "ConfigMap"),
    }
    ref = pd.read_csv(io.StringIO(models.holdout_csv)).drop(columns=["label"])
    ref["x0"] = ref["x0"] + 2 * ref["x0"].std()
    scenario.cluster.kubectl("-n", scenario.ns, "create", "configmap", "reference",
                             "--from-file=reference.csv=/dev/stdin", input=ref.to_csv(index=False))
    before = scenario.template()
    for name, (overrides, _, _) in cases.items():
        extra = {k: v for k, v in overrides.items() if k != "gates"}
        scenario.rollout(name, "http://127.0.0.1:9", "http://127.0.0.1:9",
                         overrides.get("gates", [{"metric": "f1", "min": 0.5}]), **extra)
    for name, (_, reason, words) in cases.items():
        st = scenario.wait_phase(name, {"Failed", "Staging", "Evaluating", "RolledBack", "Promoted"}, timeout=60)
        assert st["phase"] == "Failed" and st["reason"] == reason, (name, st.get("message"))
        assert words in st["message"], st["message"]
        assert st["decision"]["result"] == "Failed"
        assert scenario.staging_objects(name) == []
    assert scenario.template() == before
