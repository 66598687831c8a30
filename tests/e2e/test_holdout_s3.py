"""A hold-out larger than any ConfigMap, from a real S3-compatible server, through the whole
operator path: Secret (pinned to the endpoint), presigned GET, bounded read, parse, score, decide."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import S3Server
from tests.e2e.conftest import Models, Scenario
from tests.e2e.test_operator import QUALITY

pytestmark = pytest.mark.e2e


def big_parquet(models: Models, rows: int = 90_000) -> bytes:
    """The e2e hold-out's rows, repeated with a little noise (so the file does not compress), as Parquet."""
    df = pd.read_csv(io.StringIO(models.holdout_csv))
    rng = np.random.default_rng(3)
    big = df.iloc[rng.integers(0, len(df), rows)].reset_index(drop=True)
    feats = [c for c in big.columns if c != "label"]
    big[feats] = big[feats] * (1 + rng.normal(0, 0.002, (rows, len(feats))))
    out = io.BytesIO()
    big.to_parquet(out, index=False)
    return out.getvalue()


def test_a_twenty_megabyte_parquet_holdout_in_s3_is_fetched_pinned_and_scored(
        scenario: Scenario, models: Models, s3_server: S3Server) -> None:
    data = big_parquet(models)
    assert len(data) >= 20 * 10**6  # more than twenty times what a ConfigMap holds
    digest = hashlib.sha256(data).hexdigest()
    bucket = f"holdouts-{scenario.ns}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="churn/2026-12.parquet", Body=data)
    scenario.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s3-keys", "namespace": scenario.ns,
                     "annotations": {"modelrollout.dev/token-host": f"127.0.0.1:{s3_server.port}"}},
        "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}}))
    cand, base = scenario.op.serve(models.good), scenario.op.serve(models.production)
    scenario.rollout("s3", cand, base, QUALITY, holdout={
        "s3": {"uri": f"s3://{bucket}/churn/2026-12.parquet", "endpoint": s3_server.endpoint,
               "secretRef": {"name": "s3-keys"}},
        "labelColumn": "label", "maxRows": 3000, "sha256": digest})
    st = scenario.wait_phase("s3", {"Promoted", "RolledBack", "Failed"}, timeout=240)
    assert st["phase"] == "Promoted", st.get("message")
    assert st["holdout"]["sha256"] == digest and st["holdout"]["bytes"] == len(data)
    assert st["holdout"]["rows"] == 90_000 and st["holdout"]["rowsUsed"] == 3000 and st["holdout"]["columns"] == 31
    assert st["candidate"]["metrics"]["f1"] >= 0.9
