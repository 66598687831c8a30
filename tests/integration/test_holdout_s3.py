"""S3 hold-outs against a real S3-compatible server (S3Proxy on 127.0.0.1, SigV4 auth).

The operator signs with the rollout's Secret only, reaches only listed hosts, sends keys only
where the Secret's owner pinned them, and reads objects with the same bounds as URLs.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelrollout.holdout_source import ANNOTATION_TOKEN_HOST, Reach, fetch, load
from tests.conftest import S3Server
from tests.integration.test_holdout_source import expect, no_config_map, rollout

pytestmark = pytest.mark.integration
BUCKET = "team-a-data"


def parquet(rows: int) -> bytes:
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"x": rng.normal(size=rows), "y": rng.normal(size=rows), "label": rng.integers(0, 2, rows),
                       "region": np.where(np.arange(rows) % 3 == 0, "eu", "us")})
    out = io.BytesIO()
    df.to_parquet(out, index=False)
    return out.getvalue()


OBJECT = parquet(5_000)


@pytest.fixture(scope="module")
def store(s3_server: S3Server) -> S3Server:
    c = s3_server.client()
    c.create_bucket(Bucket=BUCKET)
    c.put_object(Bucket=BUCKET, Key="eval/holdout.parquet", Body=OBJECT)
    return s3_server


def keys_secret(store: S3Server, pins: str, *, secret_key: str | None = None,
                asked: list[tuple[str, str, str]] | None = None) -> Callable[[str, str, str], Awaitable[Any]]:
    data = {"AWS_ACCESS_KEY_ID": store.access_key, "AWS_SECRET_ACCESS_KEY": secret_key or store.secret_key}

    async def get(ns: str, name: str, key: str) -> tuple[str, Mapping[str, str]]:
        if asked is not None:
            asked.append((ns, name, key))
        if key not in data:
            raise LookupError(key)
        return data[key], {ANNOTATION_TOKEN_HOST: pins}
    return get


def s3_spec(store: S3Server, key: str = "eval/holdout.parquet", **more: Any) -> Any:
    return rollout(s3={"uri": f"s3://{BUCKET}/{key}", "endpoint": store.endpoint, "secretRef": {"name": "s3-keys"},
                       **more}, sliceColumns=["region"])


def listed(store: S3Server) -> Reach:
    return Reach(url_hosts=frozenset({f"127.0.0.1:{store.port}"}))


def test_an_object_is_read_whole_with_the_rollouts_keys_and_parsed(store: S3Server) -> None:
    spec = s3_spec(store)
    here = f"127.0.0.1:{store.port}"

    async def go() -> tuple[bytes, str, Any]:
        data, name = await fetch(spec.holdout, "team-a", listed(store), config_map=no_config_map,
                                 secret=keys_secret(store, here))
        return data, name, await load(data, name, spec, listed(store), echo_columns=False)
    data, name, hold = asyncio.run(go())
    assert data == OBJECT and name == f"s3://{BUCKET}/eval/holdout.parquet"
    assert hold.rows == 5_000 and list(hold.features.columns) == ["x", "y"]
    assert hold.fingerprint["bytes"] == len(OBJECT)


def test_an_unlisted_endpoint_is_refused_before_any_secret_is_read(store: S3Server) -> None:
    asked: list[tuple[str, str, str]] = []
    got = asyncio.run(expect("HoldoutRefused", fetch(
        s3_spec(store).holdout, "team-a", Reach(url_hosts=frozenset({"127.0.0.1:1"})), config_map=no_config_map,
        secret=keys_secret(store, f"127.0.0.1:{store.port}", asked=asked))))
    assert "operator.holdoutUrlHosts" in got and asked == []


def test_keys_go_only_to_the_host_the_secret_pins(store: S3Server) -> None:
    got = asyncio.run(expect("HoldoutRefused", fetch(
        s3_spec(store).holdout, "team-a", listed(store), config_map=no_config_map,
        secret=keys_secret(store, "s3.other-team.example"))))
    assert "modelrollout.dev/token-host" in got and store.secret_key not in got


def test_wrong_keys_missing_object_and_unsigned_reads_are_refused_by_the_server_and_said_so(store: S3Server) -> None:
    here = f"127.0.0.1:{store.port}"

    async def go() -> list[str]:
        wrong = await expect("HoldoutNotFound", fetch(s3_spec(store).holdout, "team-a", listed(store),
                                                      config_map=no_config_map,
                                                      secret=keys_secret(store, here, secret_key="0" * 40)))
        missing = await expect("HoldoutNotFound", fetch(s3_spec(store, "eval/none.parquet").holdout, "team-a",
                                                        listed(store), config_map=no_config_map,
                                                        secret=keys_secret(store, here)))
        unsigned = rollout(s3={"uri": f"s3://{BUCKET}/eval/holdout.parquet", "endpoint": store.endpoint})
        anon = await expect("HoldoutNotFound", fetch(unsigned.holdout, "team-a", listed(store),
                                                     config_map=no_config_map, secret=keys_secret(store, here)))
        return [wrong, missing, anon]
    wrong, missing, anon = asyncio.run(go())
    assert "HTTP 403 (access denied" in wrong and "0" * 40 not in wrong and "X-Amz-Signature" not in wrong
    assert "HTTP 404 (no such bucket or key)" in missing
    assert "HTTP 403" in anon


def test_an_object_over_max_size_is_refused_from_its_length(store: S3Server) -> None:
    got = asyncio.run(expect("HoldoutTooLarge", fetch(
        s3_spec(store).holdout.model_copy(update={"max_size": 1000.0}), "team-a", listed(store),
        config_map=no_config_map, secret=keys_secret(store, f"127.0.0.1:{store.port}"))))
    assert "Content-Length" in got and "spec.holdout.maxSize (1000 bytes)" in got


def test_a_key_name_the_secret_lacks_is_named_and_the_defaults_are_the_aws_names(store: S3Server) -> None:
    spec = s3_spec(store, secretRef={"name": "s3-keys", "accessKeyIdKey": "accessKey"})
    got = asyncio.run(expect("HoldoutNotFound", fetch(spec.holdout, "team-a", listed(store), config_map=no_config_map,
                                                      secret=keys_secret(store, f"127.0.0.1:{store.port}"))))
    assert "Secret s3-keys (key 'accessKey') for the S3 hold-out was not found" in got
    ref = s3_spec(store).holdout.s3.secret_ref
    assert (ref.access_key_id_key, ref.secret_access_key_key) == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
