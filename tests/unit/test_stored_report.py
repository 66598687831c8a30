"""The operator's stored report: one gzipped HTML with plots, bounded, in a ConfigMap the rollout owns."""

from __future__ import annotations

import base64
import gzip

import numpy as np
import pytest

from modelrollout.controller import stored_report
from modelrollout.core.engine import build_report
from modelrollout.core.quality import compare, encode
from modelrollout.core.spec import Gate
from modelrollout.kube.objects import owned_by

ROLLOUT = {"metadata": {"name": "r", "namespace": "ml", "uid": "u-1"}}


def _report() -> object:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.clip(0.4 * y + 0.6 * rng.random(300), 0, 1)
    q = compare(encode("binary-classification", y, (s > 0.5).astype(int), s), resamples=50,
                slices={"region": rng.choice(["eu", "us"], 300).tolist()})
    return build_report("binary-classification", [Gate(metric="f1", min=0.5)], q)


def test_the_report_is_gzipped_html_with_its_plots_in_an_owned_config_map() -> None:
    data, note = stored_report.render(_report(), None, None, {"rollout": "ml/r"})  # type: ignore[arg-type]
    page = gzip.decompress(data).decode()
    assert note == "all" and "<h2>Confusion matrices</h2>" in page and "data:image/png;base64," in page
    assert "<h2>By region</h2>" in page and "ml/r" in page
    cm = stored_report.config_map(ROLLOUT, data, note)
    assert cm["metadata"]["name"] == "r-report" and owned_by(cm["metadata"], "u-1")
    assert base64.b64decode(cm["binaryData"][stored_report.KEY]) == data
    assert stored_report.status_of(ROLLOUT, data, note) == {"configMap": "r-report", "key": "report.html.gz",
                                                            "bytes": len(data), "plots": "all"}


def test_a_report_too_large_with_plots_is_stored_without_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stored_report, "MAX_BYTES", 4000)
    data, note = stored_report.render(_report(), None, None, {})  # type: ignore[arg-type]
    assert note == "none: with plots the report is over 3 KiB gzipped"
    assert "data:image/png" not in gzip.decompress(data).decode()
