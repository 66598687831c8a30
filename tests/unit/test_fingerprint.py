"""The hold-out's fingerprint: the digest of its bytes, its shape and schema, in the report, status and Prometheus;
and a pinned digest that refuses any other file, naming both."""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any

import pandas as pd
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from modelrollout.core.gates import Decision, Evidence, Outcome
from modelrollout.core.report import Report, from_status, to_json, to_markdown, to_text
from modelrollout.core.spec import SpecError, parse_spec
from modelrollout.exporter import FigureExporter
from modelrollout.holdout import SCHEMA_SHOWN, DataChanged, prepare, read_table
from modelrollout.opmetrics import OperatorMetrics
from modelrollout.status import StatusWriter
from tests.unit.fake_kube import CRD, FakeKube
from tests.unit.test_sweep_outputs import conforms

CSV = b"age,region,label\n31,north,1\n45,south,0\n27,north,1\n52,east,0\n"


def _hold(data: bytes, **kw: Any) -> dict[str, Any]:
    df = read_table(data, "h.csv")
    return prepare(df, task="binary-classification", label_column="label", name="h.csv", **kw).fingerprint


def test_fingerprint_is_the_bytes_digest_shape_and_schema() -> None:
    fp = _hold(CSV)
    text = str(pd.read_csv(io.BytesIO(CSV))["region"].dtype)  # "object" before pandas 3, "str" since
    assert fp["sha256"] == hashlib.sha256(CSV).hexdigest() and fp["bytes"] == len(CSV)
    assert (fp["rows"], fp["rowsUsed"], fp["columns"]) == (4, 4, 3)
    assert fp["schema"] == [{"name": "age", "type": "int64"}, {"name": "region", "type": text},
                            {"name": "label", "type": "int64"}]
    crlf = _hold(CSV.replace(b"\n", b"\r\n"))  # other bytes, the same table
    assert crlf["sha256"] != fp["sha256"] and crlf["schemaSha256"] == fp["schemaSha256"]
    renamed = _hold(CSV.replace(b"age,", b"years,"))
    assert renamed["schemaSha256"] != fp["schemaSha256"]
    retyped = _hold(CSV.replace(b"31,", b"31.5,"))  # age becomes float64
    assert retyped["schemaSha256"] != fp["schemaSha256"]
    sampled = _hold(CSV, max_rows=2)
    assert (sampled["rows"], sampled["rowsUsed"], sampled["sha256"]) == (4, 2, fp["sha256"])


def test_a_header_the_reader_must_not_see_is_fingerprinted_by_position() -> None:
    fp = _hold(CSV, echo_columns=False)
    assert [c["name"] for c in fp["schema"]] == ["#1", "#2", "label"]  # the spec's own label column is named
    wide = b",".join(b"c%d" % i for i in range(100)) + b",label\n" + b",".join([b"1"] * 101) + b"\n"
    fp = _hold(wide)
    assert fp["columns"] == 101 and len(fp["schema"]) == SCHEMA_SHOWN  # listed bounded, hashed whole
    assert fp["schemaSha256"] != _hold(wide.replace(b"c99,", b"cx,"))["schemaSha256"]


def test_a_pinned_digest_refuses_other_bytes_naming_both() -> None:
    good = hashlib.sha256(CSV).hexdigest()
    assert read_table(CSV, "h.csv", sha256=good.upper()).attrs["sha256"] == good  # hex in either case
    changed = CSV.replace(b"31", b"32")
    with pytest.raises(DataChanged) as e:
        read_table(changed, "h.csv", sha256=good)
    assert str(e.value) == (f"h.csv: spec.holdout.sha256 pins {good}, but the data read has sha256 "
                            f"{hashlib.sha256(changed).hexdigest()}; pin the new digest if the change is intended")
    spec = {"targetRef": {"name": "m"}, "task": "binary-classification", "serving": {"modelName": "m"},
            "gates": [{"metric": "f1", "min": 0.5}]}
    assert parse_spec({**spec, "holdout": {"file": "h.csv", "labelColumn": "label", "sha256": good}}
                      ).holdout.sha256 == good
    with pytest.raises(SpecError, match=r"spec\.holdout\.sha256"):
        parse_spec({**spec, "holdout": {"file": "h.csv", "labelColumn": "label", "sha256": "abc"}})


def _report(fp: dict[str, Any]) -> Report:
    return Report(task="binary-classification", evidence=Evidence({"f1": 0.9}, None), gates=[],
                  decision=Decision(Outcome.PROMOTE, "all gates passed"), holdout=fp)


def test_the_report_status_and_kubectl_carry_the_fingerprint() -> None:
    fp = _hold(CSV, max_rows=3)
    rep = _report(fp)
    line = (f"hold-out: 4 rows (3 used) x 3 columns, {len(CSV)} bytes, sha256 {fp['sha256']}, "
            f"schema sha256 {fp['schemaSha256']}")
    assert to_json(rep)["holdout"] == fp and line in to_text(rep) and line in to_markdown(rep)
    assert to_json(_report({}))["holdout"] is None and "hold-out:" not in to_text(_report({}))

    status = {k: v for k, v in fp.items() if k != "schema"}  # what the operator records
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["status"]["properties"]["holdout"]
    assert conforms(status, schema, "holdout") == []
    assert conforms(fp, schema, "holdout")  # the schema list would be pruned: status keeps the digests
    kube = FakeKube()
    kube.rollouts["ml", "r"] = {"metadata": {"name": "r", "namespace": "ml"},
                                "spec": {"task": "binary-classification", "targetRef": {"name": "churn"}}}
    asyncio.run(StatusWriter(kube, OperatorMetrics(CollectorRegistry())).record(
        {"name": "r", "namespace": "ml"}, {"holdout": status}))
    back = from_status("binary-classification", kube.rollouts["ml", "r"]["status"])
    assert line in to_text(back)


def test_prometheus_has_one_info_series_per_rollout_the_latest_digest() -> None:
    ex = FigureExporter(CollectorRegistry())
    first, second = _hold(CSV), _hold(CSV + b"60,west,1\n")
    ex.observe(_report(first), "r", "ml")
    ex.observe(_report(second), "r", "ml")
    text = generate_latest(ex.registry).decode()
    assert (f'modelrollout_holdout_info{{namespace="ml",rollout="r",schema_sha256="{second["schemaSha256"]}",'
            f'sha256="{second["sha256"]}"}} 1.0') in text
    assert str(first["sha256"]) not in text  # replaced, not kept beside the new one
    assert 'modelrollout_holdout_rows{namespace="ml",rollout="r"} 5.0' in text
    assert f'modelrollout_holdout_size_bytes{{namespace="ml",rollout="r"}} {float(second["bytes"])}' in text
    ex.forget("r", "ml")
    assert "modelrollout_holdout_info{" not in generate_latest(ex.registry).decode()
