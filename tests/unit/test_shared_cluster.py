"""Bounds and ownership rules a hostile or careless tenant meets before anything reaches the cluster."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelrollout.core.decide import CANARY_CHECK_GRACE, Observed, decide
from modelrollout.core.spec import SpecError, parse_manifest, parse_spec
from modelrollout.core.text import cap, short
from modelrollout.kube import objects
from tests.unit.test_decide import NOW, ago

EXAMPLE = Path(__file__).parents[2] / "examples" / "rollout.yaml"
SCORE = Path(__file__).parents[2] / "examples" / "score"
# 413 bytes of YAML whose aliases expand to 9**9 strings: printed whole, one message is gigabytes
BOMB = "\n".join(['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]" for i in range(8)]) + "\ngates: *i\n"


def manifest() -> dict[str, Any]:
    return dict(copy.deepcopy(yaml.safe_load(EXAMPLE.read_text())))


def errors(spec: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as e:
        parse_spec(spec)
    return str(e.value)


@pytest.mark.parametrize(("path", "value", "message"), [
    ("load.duration", "2h", "spec.load.duration: '2h' is more than the limit of 60m"),
    ("load.warmup", "11m", "spec.load.warmup: '11m' is more than the limit of 10m"),
    ("staging.readyTimeout", "90000h", "spec.staging.readyTimeout: '90000h' is more than the limit of 60m"),
    ("staging.evaluationTimeout", "7h", "spec.staging.evaluationTimeout: '7h' is more than the limit of 360m"),
    ("serving.timeout", "10m", "spec.serving.timeout: '10m' is more than the limit of 5m"),
    ("serving.maxResponseSize", "2Gi", "spec.serving.maxResponseSize: '2Gi' is more than the limit of 1024Mi"),
    ("holdout.maxSize", "1Ti", "spec.holdout.maxSize: '1Ti' is more than the limit of 1024Mi"),
    ("load.leakRequests", 10**9, "spec.load.leakRequests: input should be less than or equal to 1000000"),
    ("holdout.maxRows", 10**12, "spec.holdout.maxRows: input should be less than or equal to 10000000"),
    ("staging.namespace", "Other_NS", "spec.staging.namespace: string should match pattern"),
])
def test_every_duration_and_count_has_an_upper_bound(path: str, value: Any, message: str) -> None:
    spec = manifest()["spec"]
    node = spec
    *parents, leaf = path.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    node[leaf] = value
    assert message in errors(spec)


def test_evaluation_timeout_must_cover_the_load_plan() -> None:
    spec = manifest()["spec"]
    spec["load"] = {"duration": "10m", "warmup": "1m", "batchSizes": [1, 8, 32]}
    spec.setdefault("staging", {})["evaluationTimeout"] = "30m"
    assert ("is shorter than the load plan alone (2 variants x 3 load cells (3 batch sizes x 1 concurrencies) x "
            "(warmup + duration) + 4 load windows' re-warm-up per variant = 66m2s)") in errors(spec)
    spec["staging"]["evaluationTimeout"] = "2h"
    assert parse_spec(spec).staging.evaluation_timeout == 7200
    spec["load"]["concurrencies"] = [16]  # every batch size x concurrency cell counts: 6 of them
    assert ("(2 variants x 6 load cells (3 batch sizes x 2 concurrencies) x (warmup + duration) + 4 load windows' "
            "re-warm-up per variant = 132m2s)") in errors(spec)


def test_messages_quote_values_bounded() -> None:
    doc = manifest()
    doc["spec"]["serving"]["protocol"] = "x" * 1_000_000
    doc["bogus"] = {"k": ["v" * 100_000] * 100_000}
    with pytest.raises(SpecError) as e:
        parse_manifest(doc)
    text = "\n".join(str(p) for p in e.value.problems)
    assert len(text) < 1000 and "spec.serving.protocol" in text and "bogus: unknown field" in text
    assert len(short("x" * 10**6)) < 80 and len(short([[["deep"] * 100] * 100] * 100)) < 200
    assert len(cap("y" * 10_000, 300)) == 300 and "characters)" in cap("y" * 10_000, 300)


def test_a_million_bad_gates_is_one_bounded_error() -> None:
    spec = manifest()["spec"]
    spec["gates"] = [{"metric": "wellness", "min": 1}] * 1_000
    text = errors(spec)
    assert text.count("\n") <= 21 and "more problems not shown" in text and len(text) < 5000


def test_yaml_bomb_as_gates_is_a_short_error(tmp_path: Path) -> None:
    assert len(BOMB) < 600
    gates = tmp_path / "bomb.yaml"
    gates.write_text(BOMB)
    out = subprocess.run([sys.executable, "-m", "modelrollout.cli", "score", "--holdout", str(SCORE / "holdout.csv"),
                          "--label-column", "malignant", "--candidate", str(SCORE / "candidate.csv"),
                          "--gates", str(gates)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(out.stderr) < 5000 and "gates" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(("name", "ok"), [
    ("churn-v8", True), ("a" * 53, True), ("a" * 54, False), ("web.v2", False), ("8churn", False),
    ("churn-", False),
])
def test_rollout_names_that_cannot_name_staging_objects_are_refused(name: str, ok: bool) -> None:
    assert (objects.name_problem(name) is None) == ok
    if ok:
        assert objects.staging_name(name, "candidate") != objects.staging_name(name, "baseline")
        assert len(objects.staging_name(name, "candidate")) <= 63


def test_canary_names_of_long_targets_never_collide() -> None:
    a, b = "t" * 60 + "-a", "t" * 60 + "-b"
    assert objects.canary_name("churn") == "churn-canary"
    assert objects.canary_name(a) != objects.canary_name(b)
    assert max(len(objects.canary_name(a)), len(objects.canary_name(b))) <= 63


def test_ownership_is_the_uid_label_or_an_owner_reference() -> None:
    rollout = {"apiVersion": "modelrollout.dev/v1alpha1", "kind": "ModelRollout",
               "metadata": {"name": "web", "namespace": "ml", "uid": "u-1"}}
    dep, svc = objects.staging_objects(rollout, "candidate", {"spec": {"containers": [{}]}}, "ml", 1, 8080)
    assert objects.owned_by(dep["metadata"], "u-1") and objects.owned_by(svc["metadata"], "u-1")
    assert not objects.owned_by(dep["metadata"], "u-2")
    production = {"name": "web-candidate", "labels": {"app": "web", objects.LABEL_ROLLOUT: "web"}}
    assert not objects.owned_by(production, "u-1")  # a name or a rollout label alone proves nothing
    forged = {"labels": {objects.LABEL_UID: "u-1"}}
    assert not objects.owned_by(forged, "u-1")  # our labels are managed-by and uid together
    old = {"ownerReferences": [{"kind": "ModelRollout", "uid": "u-1"}]}
    assert objects.owned_by(old, "u-1")


def _spec(**staging: Any) -> Any:
    return parse_spec({
        "targetRef": {"name": "churn"}, "task": "binary-classification", "serving": {"modelName": "m"},
        "staging": {"readyTimeout": "60s", **staging},
        "holdout": {"configMapRef": {"name": "h", "key": "h.csv"}, "labelColumn": "y"},
        "gates": [{"metric": "f1", "min": 0.5}],
        "promotion": {"canary": {"steps": [{"weight": 10, "pause": "60s"}]}}})


def test_evaluating_has_a_deadline() -> None:
    spec = _spec(evaluationTimeout="10m")
    running = Observed(generation=1, now=NOW, evaluation="running")
    st = {"phase": "Evaluating", "observedGeneration": 1, "evaluation": {"startedAt": ago(599), "generation": 1}}
    assert decide(spec, st, running).action == "wait"
    st["evaluation"] = {"startedAt": ago(601), "generation": 1}
    s = decide(spec, st, running)
    assert (s.action, s.reason) == ("rollback", "EvaluationTimeout") and "600s" in s.message


def test_canary_step_has_a_deadline() -> None:
    spec = _spec()
    limit = 60 + 60 + CANARY_CHECK_GRACE
    ok = Observed(generation=1, now=NOW, canary_available=True)
    st = {"phase": "Canary", "observedGeneration": 1, "canary": {"step": 0, "startedAt": ago(limit - 1)}}
    assert decide(spec, st, ok).action == "promote"  # no live gates: the step passes after its pause
    st["canary"] = {"step": 0, "startedAt": ago(limit + 1)}
    assert decide(spec, st, ok).reason == "CanaryTimeout"
