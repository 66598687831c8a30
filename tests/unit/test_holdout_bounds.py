"""Hold-out sources without a network: the operator's limits, address rules, PVC confinement, and
messages that name counts instead of data. (HTTP servers and the parsing child: integration.)"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelrollout.core.figures import Task
from modelrollout.core.quality import DataError
from modelrollout.core.spec import Holdout as HoldoutSpec
from modelrollout.core.spec import PvcSource
from modelrollout.holdout import Bounds, DataTooLarge, prepare, read_table
from modelrollout.holdout_source import MESSAGE_LIMIT, HoldoutError, Reach, fetch, special
from modelrollout.kube.api import NotFound

BOUNDS = Bounds(max_cells=20_000_000, max_cell_chars=65_536, max_slice_chars=256, max_decoded_bytes=512 * 2**20)
SECRET_NAME, SECRET_VALUE = "SECRETCOL_k3y", "TOPSECRET_v4lue"


def spec(**holdout: Any) -> HoldoutSpec:
    return HoldoutSpec.model_validate({"labelColumn": "label", **holdout})


async def no_config_map(ns: str, name: str, key: str) -> bytes:
    raise NotFound(f"ConfigMap {ns}/{name} not found")


async def no_secret(ns: str, name: str, key: str) -> tuple[str, Mapping[str, str]]:
    raise AssertionError("no Secret may be read for a refused URL")


def get(h: HoldoutSpec, reach: Reach, ns: str = "team-a") -> tuple[bytes, str]:
    return asyncio.run(fetch(h, ns, reach, config_map=no_config_map, secret=no_secret))


def refused(h: HoldoutSpec, reach: Reach, reason: str, ns: str = "team-a") -> str:
    with pytest.raises(HoldoutError) as e:
        get(h, reach, ns)
    assert e.value.reason == reason, str(e.value)
    assert len(str(e.value)) <= MESSAGE_LIMIT
    return str(e.value)


# --- the operator's limits ----------------------------------------------------------------
def test_reach_from_env_defaults_and_values() -> None:
    r = Reach.from_env({})
    assert r == Reach() and r.url_hosts == frozenset() and r.pvc_root == Path("/mnt/holdout")
    assert r.memory_budget == 512 * 2**20
    r = Reach.from_env({"MODELROLLOUT_HOLDOUT_URL_HOSTS": " data.example.com, 10.0.0.5:8080,[::1]:9000 ,",
                        "MODELROLLOUT_PVC_ROOT": "/data", "MODELROLLOUT_HOLDOUT_MEMORY_MIB": "256",
                        "MODELROLLOUT_HOLDOUT_MAX_CELLS": "1000", "MODELROLLOUT_HOLDOUT_MAX_SLICE_CHARS": "64"})
    assert r.url_hosts == {"data.example.com", "10.0.0.5:8080", "[::1]:9000"}
    assert (r.pvc_root, r.memory_budget, r.max_cells, r.max_slice_chars) == (Path("/data"), 256 * 2**20, 1000, 64)
    with pytest.raises(ValueError, match="MODELROLLOUT_HOLDOUT_MEMORY_MIB"):
        Reach.from_env({"MODELROLLOUT_HOLDOUT_MEMORY_MIB": "lots"})
    with pytest.raises(ValueError, match="host or host:port"):
        Reach.from_env({"MODELROLLOUT_HOLDOUT_URL_HOSTS": "a:b:c:"})


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("0.1.2.3", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped IPv6
    ("64:ff9b::a9fe:a9fe", "link-local"), ("2002:7f00:1::", "loopback"),  # NAT64 and 6to4 around IPv4
    ("fd00:ec2::254", "cloud metadata"), ("8.8.8.8", None), ("10.1.2.3", None), ("2001:4860::8888", None),
    ("::ffff:8.8.8.8", None),
])
def test_special_addresses(address: str, kind: str | None) -> None:
    assert special(ipaddress.ip_address(address)) == kind


def test_urls_refused_when_the_admin_listed_no_host() -> None:
    msg = refused(spec(url={"url": "http://127.0.0.1:9/h.csv?token=abc"}), Reach(), "HoldoutRefused")
    assert "operator.holdoutUrlHosts" in msg and "token=abc" not in msg


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://data.example.com:8443/h.csv",
                                 "http://[::ffff:127.0.0.1]:80/h.csv", "https://2130706433/h.csv"])
def test_unlisted_hosts_refused_before_any_connection(url: str) -> None:
    reach = Reach(url_hosts=frozenset({"data.example.com:443", "127.0.0.1:80"}))
    msg = refused(spec(url={"url": url}), reach, "HoldoutRefused")
    assert "not on the operator's list" in msg and "operator.holdoutUrlHosts" in msg


# --- PVC ----------------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path: Path) -> Path:
    claim = tmp_path / "team-a" / "data"
    (claim / "sub").mkdir(parents=True)
    (claim / "sub" / "h.csv").write_text("x,label\n1,0\n2,1\n")
    (claim / "latest.csv").symlink_to("sub/h.csv")
    (tmp_path / "team-b" / "data").mkdir(parents=True)
    (tmp_path / "team-b" / "data" / "theirs.csv").write_text("x,label\n9,9\n")
    (tmp_path / "outside.csv").write_text("x,label\n7,7\n")
    (claim / "escape.csv").symlink_to(tmp_path / "outside.csv")
    (claim / "zero.csv").symlink_to("/dev/zero")
    (claim / "null.csv").symlink_to("/dev/null")
    os.mkfifo(claim / "fifo.csv")
    return tmp_path


def test_pvc_reads_inside_the_namespaced_claim(root: Path) -> None:
    reach = Reach(pvc_root=root)
    data, name = get(spec(pvc={"claimName": "data", "path": "sub/h.csv"}), reach)
    assert data == b"x,label\n1,0\n2,1\n" and name.endswith(".csv")
    assert get(spec(pvc={"claimName": "data", "path": "latest.csv"}), reach)[0] == data  # a symlink inside: fine


@pytest.mark.parametrize("path, reason", [
    ("../../outside.csv", "HoldoutRefused"), ("../../no/such/file.csv", "HoldoutRefused"),
    ("../../team-b/data/theirs.csv", "HoldoutRefused"),
    ("/etc/passwd", "HoldoutRefused"), ("escape.csv", "HoldoutRefused"), ("zero.csv", "HoldoutRefused"),
    ("null.csv", "HoldoutRefused"), ("fifo.csv", "HoldoutRefused"), ("sub", "HoldoutRefused"),
    ("missing.csv", "HoldoutNotFound"),
])
def test_pvc_paths_that_leave_the_claim_or_are_not_files_are_refused(root: Path, path: str, reason: str) -> None:
    msg = refused(spec(pvc={"claimName": "data", "path": path}), Reach(pvc_root=root), reason)
    assert "root:" not in msg  # nothing of /etc/passwd


def test_pvc_of_another_namespace_is_not_reachable(root: Path) -> None:
    # team-a names team-b's claim folder: it resolves under <root>/team-a/, where there is none
    refused(spec(pvc={"claimName": "data", "path": "theirs.csv"}), Reach(pvc_root=root), "HoldoutNotFound")
    # the spec refuses such a claim name; the reader does too, should an unchecked spec reach it
    dots = HoldoutSpec.model_construct(label_column="label", max_size=2.0**20,
                                       pvc=PvcSource.model_construct(claim_name="..", path="team-b/data/theirs.csv"))
    refused(dots, Reach(pvc_root=root), "HoldoutInvalid")


def test_pvc_size_checked_before_reading(root: Path) -> None:
    big = root / "team-a" / "data" / "big.csv"
    with big.open("wb") as f:
        f.truncate(3 * 2**20)  # sparse: its size says enough
    msg = refused(spec(pvc={"claimName": "data", "path": "big.csv"}, maxSize="1Mi"), Reach(pvc_root=root),
                  "HoldoutTooLarge")
    assert "spec.holdout.maxSize" in msg
    msg = refused(spec(pvc={"claimName": "data", "path": "big.csv"}), Reach(pvc_root=root, memory_budget=2**20),
                  "HoldoutTooLarge")
    assert "524288 bytes, half the operator's hold-out memory budget of 1 MiB" in msg


def test_config_map_missing_and_too_large() -> None:
    refused(spec(configMapRef={"name": "h", "key": "h.csv"}), Reach(), "HoldoutNotFound")

    async def big(ns: str, name: str, key: str) -> bytes:
        return b"x" * 2048

    with pytest.raises(HoldoutError) as e:
        asyncio.run(fetch(spec(configMapRef={"name": "h", "key": "h.csv"}, maxSize=1024), "team-a", Reach(),
                          config_map=big, secret=no_secret))
    assert e.value.reason == "HoldoutTooLarge"


# --- messages name counts, never data -----------------------------------------------------
def frame() -> pd.DataFrame:
    return pd.DataFrame({SECRET_NAME: [SECRET_VALUE, "b", "c"], "label": ["yes", SECRET_VALUE, "no"],
                         "region": ["eu", "us", "eu"]})


def test_prepare_without_echo_names_no_data_column_and_no_value() -> None:
    msgs = []
    cases: list[tuple[Task, str, list[str]]] = [("binary-classification", "nope", []), ("regression", "label", []),
                                                ("binary-classification", "label", ["nope"])]
    for task, label, slices in cases:
        with pytest.raises(DataError) as e:
            prepare(frame(), task=task, label_column=label, slice_columns=slices, echo_columns=False)
        msgs.append(str(e.value))
    assert "label column 'nope' not found; the data has 3 columns" in msgs[0]
    assert "3 of 3 values in column 'label' are not numbers" in msgs[1]
    assert all(SECRET_NAME not in m and SECRET_VALUE not in m for m in msgs), msgs
    hold = prepare(frame(), task="binary-classification", label_column="label", echo_columns=False)
    assert hold.summary["missing"] == {"#1": 0, "label": 0, "#3": 0}  # the summary goes to status too
    with pytest.raises(DataError, match=SECRET_NAME):  # the CLI reads the user's own file: names help there
        prepare(frame(), task="binary-classification", label_column="nope")


def test_bounds_name_spec_columns_and_number_the_others() -> None:
    df = frame()
    df[SECRET_NAME] = ["x" * 70_000, "b", "c"]
    with pytest.raises(DataTooLarge) as e:
        prepare(df, task="binary-classification", label_column="label", echo_columns=False, bounds=BOUNDS)
    assert "column 1 of 3 has a value of 70000 characters" in str(e.value) and SECRET_NAME not in str(e.value)
    df = frame()
    df["region"] = ["eu", "y" * 300, "us"]
    with pytest.raises(DataTooLarge, match="slice column 'region' has a value of 300 characters"):
        prepare(df, task="binary-classification", label_column="label", slice_columns=["region"],
                echo_columns=False, bounds=BOUNDS)
    wide = pd.DataFrame({"region": [f"{i:0200d}" for i in range(20_000)], "label": [0, 1] * 10_000, "x": 1.0})
    tight = Bounds(10**6, 1000, 256, 8 * 2**20)  # 20,000 rows x 200 chars x 4 bytes = 15 MiB of fixed-width text
    with pytest.raises(DataTooLarge, match="fixed-width"):
        prepare(wide, task="binary-classification", label_column="label", slice_columns=["region"], bounds=tight)
    hold = prepare(wide, task="binary-classification", label_column="label", slice_columns=["region"],
                   bounds=tight, max_rows=5000)  # sampled first: 5,000 rows fit
    assert hold.rows == 5000


@pytest.mark.parametrize("fmt, data", [
    ("csv", f"a,{SECRET_NAME}\n1,2\n3,{SECRET_VALUE},5,6\n".encode()),
    ("jsonl", f'{{"{SECRET_NAME}": 1}}\n{{"a": "{SECRET_VALUE}"\n'.encode()),
    ("jsonl", f'{{"{SECRET_NAME}": 1}}\n["{SECRET_VALUE}"]\n'.encode()),
    ("csv", f"a,{SECRET_NAME}\n1,\xff{SECRET_VALUE}\n".encode("latin-1")),
    ("parquet", b"PAR1" + SECRET_VALUE.encode() * 10 + b"PAR1"),
])
def test_parse_errors_give_type_and_position_not_text(fmt: str, data: bytes) -> None:
    with pytest.raises(DataError) as e:
        read_table(data, f"h.{fmt}", bounds=BOUNDS)
    msg = str(e.value)
    assert SECRET_NAME not in msg and SECRET_VALUE not in msg, msg
    assert re.search(r"line \d|byte \d", msg) or fmt == "parquet", msg


def parquet(table: pa.Table, **kw: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def repeated(text: str, n: int) -> pa.DictionaryArray:
    """One string n times, built as a dictionary so this process never holds n copies."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([text]))


def test_parquet_that_expands_is_refused_from_its_metadata() -> None:
    many = parquet(pa.table({"x": np.zeros(21_000_000, dtype=np.int8)}), compression="zstd")
    assert len(many) < 700 * 1024
    with pytest.raises(DataTooLarge, match="21000000 rows x 1 columns"):
        read_table(many, "h.parquet", bounds=BOUNDS)
    rng = np.random.default_rng(0)
    long = "".join(rng.choice(list("abcdefghij"), 700 * 1024))
    # no Arrow schema in it, as Spark writes them: a reader decodes the dictionary to plain strings
    bomb = parquet(pa.table({"s": repeated(long, 4000)}), compression="zstd", store_schema=False)
    assert len(bomb) < 800 * 1024  # a ConfigMap holds it; decoded it is 2.7 GiB
    with pytest.raises(DataTooLarge, match="text column 1 of 1 has a value of 716800 bytes"):
        read_table(bomb, "h.parquet", bounds=BOUNDS)
    wide = "".join(rng.choice(list("abcdefghij"), 60_000))  # under the cell limit, but 20,000 of them
    bomb = parquet(pa.table({"s": repeated(wide, 20_000)}), compression="zstd", store_schema=False)
    with pytest.raises(DataTooLarge, match="decode to 1144 MiB"):
        read_table(bomb, "h.parquet", bounds=BOUNDS)
    fine = parquet(pa.table({"s": ["a", "b"] * 10, "label": [0, 1] * 10}))
    assert read_table(fine, "h.parquet", bounds=BOUNDS).shape == (20, 2)


def test_npz_that_expands_is_refused_before_decoding() -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((2000, 1000)), label=np.zeros(2000))  # 15 MiB of zeros, 20 KiB zipped
    tight = Bounds(10**7, 1000, 256, 8 * 2**20)
    with pytest.raises(DataTooLarge, match="15 MiB uncompressed, more than the budget of 8 MiB"):
        read_table(buf.getvalue(), "h.npz", bounds=tight)
