"""Hold-out sources against real local HTTP servers, and parsing in the bounded child process.

The servers record every request they get, so "refused" means the operator never connected,
and "token sent only to the pinned host" is checked on the server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from modelrollout.core.spec import ModelRolloutSpec, parse_spec
from modelrollout.holdout import Holdout
from modelrollout.holdout_source import ANNOTATION_TOKEN_HOST, MESSAGE_LIMIT, HoldoutError, Reach, fetch, load
from modelrollout.kube.api import NotFound

pytestmark = pytest.mark.integration
MIB = 2**20
SECRET_COL, SECRET_VAL = "SECRETCOL_k3y9", "TOPSECRET_v4lu3"


@dataclass
class Served:
    port: int
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization header)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def csv_rows(n: int, width: int = 100) -> bytes:
    """n rows of about `width` bytes: two features, a label and a slice column."""
    df = pd.DataFrame({"x": np.arange(n, dtype=np.float64), "pad": "p" * (width - 30), "label": np.arange(n) % 2,
                       "region": np.where(np.arange(n) % 3 == 0, "eu", "us")})
    return df.to_csv(index=False).encode()


SIX_MB = csv_rows(60_000, 125)
SECRET_CSV = f"{SECRET_COL},label,region\n{SECRET_VAL},yes,eu\n{SECRET_VAL}2,{SECRET_VAL},us\n".encode()


async def stream(request: web.Request, body: bytes, served: Served, piece: int = 1 << 15) -> web.StreamResponse:
    """The body in pieces with pauses, so it reaches the client over many reads."""
    resp = web.StreamResponse(headers={"Content-Type": "text/csv"})
    resp.content_length = len(body)
    await resp.prepare(request)
    for i in range(0, len(body), piece):
        await resp.write(body[i:i + piece])
        if i // piece % 16 == 0:
            await asyncio.sleep(0.001)
    return resp


def routes(served: Served) -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    async def claims_huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 10_000_000
        await resp.prepare(request)
        await resp.write(b"x,label\n")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(served.stop.wait(), 30)  # a slow sender: only a client that waits notices
        return resp

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            while served.sent < 256 * MIB:
                await resp.write(b"1,0\n" * 16384)
                served.sent += 65536
        return resp

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(served.url("/h.csv", "localhost"))

    return {
        "/h.csv": lambda r: stream(r, csv_rows(200), served),
        "/big.csv": lambda r: stream(r, SIX_MB, served),
        "/secret.csv": lambda r: stream(r, SECRET_CSV, served),
        "/claims-huge.csv": claims_huge, "/endless.csv": endless, "/redirect.csv": redirect,
    }


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Served]:
    served = Served(0)
    table = routes(served)

    async def handle(request: web.Request) -> web.StreamResponse:
        served.seen.append((request.path, request.headers.get("Authorization")))
        return await table[request.path](request)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    served.port = runner.addresses[0][1]
    try:
        yield served
    finally:
        served.stop.set()
        await runner.cleanup()


def rollout(task: str = "binary-classification", **holdout: Any) -> ModelRolloutSpec:
    if not holdout.keys() & {"url", "s3"}:
        holdout["configMapRef"] = {"name": "h", "key": "h"}
    return parse_spec({"targetRef": {"name": "m"}, "task": task, "serving": {"modelName": "m"},
                       "holdout": {"labelColumn": "label", **holdout},
                       "gates": [{"metric": "rmse" if task == "regression" else "f1", "max": 1.0}]})


async def no_config_map(ns: str, name: str, key: str) -> bytes:
    raise NotFound(name)


def secret_with(value: str, notes: Mapping[str, str]) -> Callable[[str, str, str], Awaitable[tuple[str, Any]]]:
    async def get(ns: str, name: str, key: str) -> tuple[str, Mapping[str, str]]:
        return value, notes
    return get


async def get_url(spec: ModelRolloutSpec, reach: Reach, notes: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    return await fetch(spec.holdout, "team-a", reach, config_map=no_config_map,
                       secret=secret_with("tok-123\n", notes or {}))


async def expect(reason: str, work: Awaitable[Any]) -> str:
    with pytest.raises(HoldoutError) as e:
        await work
    assert e.value.reason == reason, str(e.value)
    assert len(str(e.value)) <= MESSAGE_LIMIT
    return str(e.value)


def only(served: Served) -> Reach:
    return Reach(url_hosts=frozenset({f"127.0.0.1:{served.port}"}))


# --- reaching hosts -----------------------------------------------------------------------
def test_host_not_on_the_list_is_refused_and_never_contacted() -> None:
    async def go() -> None:
        async with serving() as s:
            reach = Reach(url_hosts=frozenset({f"127.0.0.1:{s.port + 1}", "data.example.com"}))
            msg = await expect("HoldoutRefused", get_url(rollout(url={"url": s.url("/h.csv")}), reach))
            assert "operator.holdoutUrlHosts" in msg
            assert s.seen == []
    asyncio.run(go())


def test_listed_name_resolving_to_loopback_is_refused_the_listed_address_is_not() -> None:
    """Rule: a listed name may reach no loopback, link-local, unspecified, multicast or metadata
    address; the admin who wants one lists the address itself."""
    async def go() -> None:
        async with serving() as s:
            reach = Reach(url_hosts=frozenset({f"localhost:{s.port}"}))
            msg = await expect("HoldoutRefused", get_url(rollout(url={"url": s.url("/h.csv", "localhost")}), reach))
            assert "resolves to a loopback address" in msg
            assert s.seen == []
            data, _ = await get_url(rollout(url={"url": s.url("/h.csv")}), only(s))
            assert data == csv_rows(200) and s.seen == [("/h.csv", None)]
    asyncio.run(go())


def test_redirect_is_refused_and_not_followed() -> None:
    async def go() -> None:
        async with serving() as s:
            reach = Reach(url_hosts=frozenset({f"127.0.0.1:{s.port}", f"localhost:{s.port}"}))
            msg = await expect("HoldoutRefused", get_url(rollout(url={"url": s.url("/redirect.csv")}), reach))
            assert "redirect (HTTP 302)" in msg
            assert s.seen == [("/redirect.csv", None)]
    asyncio.run(go())


# --- reading the body ---------------------------------------------------------------------
def test_six_megabyte_body_is_read_whole_and_every_row_scored() -> None:
    """The regression test for the truncation bug: 60,000 rows arrive as 60,000 rows."""
    async def go() -> Holdout:
        async with serving() as s:
            spec = rollout(url={"url": s.url("/big.csv")}, sliceColumns=["region"])
            data, name = await get_url(spec, only(s))
            assert data == SIX_MB and len(data) > 6 * 10**6
            return await load(data, name, spec, only(s), echo_columns=False)
    hold = asyncio.run(go())
    assert hold.rows == 60_000 and list(hold.features.columns) == ["x", "pad"]
    assert hold.slices["region"][:4] == ["eu", "us", "us", "eu"]


def test_content_length_over_max_size_is_refused_before_reading() -> None:
    async def go() -> None:
        async with serving() as s:
            t = time.monotonic()
            msg = await expect("HoldoutTooLarge", get_url(rollout(url={"url": s.url("/claims-huge.csv")},
                                                                  maxSize="1Mi"), only(s)))
            assert time.monotonic() - t < 5  # the server holds the body back for 30 s
            assert "Content-Length of 10000000 bytes" in msg and "spec.holdout.maxSize (1048576 bytes)" in msg
    asyncio.run(go())


def test_body_shorter_than_its_content_length_is_an_error() -> None:
    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: 100000\r\n\r\n")
        writer.write(csv_rows(1000)[:50_000])
        await writer.drain()
        writer.close()

    async def go() -> None:
        server = await asyncio.start_server(liar, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reach = Reach(url_hosts=frozenset({f"127.0.0.1:{port}"}))
            msg = await expect("HoldoutInvalid", get_url(rollout(url={"url": f"http://127.0.0.1:{port}/h.csv"}),
                                                         reach))
            assert "ended before the whole body arrived" in msg
    asyncio.run(go())


def test_chunked_body_over_max_size_stops_reading() -> None:
    async def go() -> None:
        async with serving() as s:
            msg = await expect("HoldoutTooLarge", get_url(rollout(url={"url": s.url("/endless.csv")},
                                                                  maxSize="2Mi"), only(s)))
            assert "more than 2097152 bytes (reading stopped there)" in msg
            await asyncio.sleep(0.2)
            assert s.sent < 64 * MIB  # it would send 256 MiB to a client that kept reading
    asyncio.run(go())


# --- bearer tokens ------------------------------------------------------------------------
def test_token_goes_only_to_the_host_the_secret_pins() -> None:
    async def go() -> None:
        async with serving() as s:
            spec = rollout(url={"url": s.url("/h.csv"), "secretRef": {"name": "dl", "key": "token"}})
            for notes in ({}, {ANNOTATION_TOKEN_HOST: "data.example.com"},
                          {ANNOTATION_TOKEN_HOST: f"127.0.0.1:{s.port + 1}"}):
                msg = await expect("HoldoutRefused", get_url(spec, only(s), notes))
                assert "Secret dl" in msg and ANNOTATION_TOKEN_HOST in msg and "tok-123" not in msg
            assert s.seen == []
            await get_url(spec, only(s), {ANNOTATION_TOKEN_HOST: f"127.0.0.1:{s.port}"})
            await get_url(spec, only(s), {ANNOTATION_TOKEN_HOST: "data.example.com, 127.0.0.1"})  # any port
            assert s.seen == [("/h.csv", "Bearer tok-123")] * 2
    asyncio.run(go())


def test_url_messages_never_quote_the_header_or_values() -> None:
    """Whoever wrote the rollout may not be able to read the URL's data: errors give counts."""
    async def go() -> list[str]:
        async with serving() as s:
            data, name = await get_url(rollout(url={"url": s.url("/secret.csv")}), only(s))
            long = data.replace(SECRET_VAL.encode() + b"2", SECRET_VAL.encode() * 5000)  # a 75,000-char cell
            bad = data + f"{SECRET_VAL},1,eu,{SECRET_COL}\n".encode()  # a row with a field too many
            cases = [(data, rollout(labelColumn="nope", url={"url": s.url("/h.csv")})),
                     (data, rollout("regression", url={"url": s.url("/h.csv")})),
                     (data, rollout("regression", url={"url": s.url("/h.csv")}, featureColumns=["region"],
                                    sliceColumns=["nope"])),
                     (long, rollout(url={"url": s.url("/h.csv")})), (bad, rollout(url={"url": s.url("/h.csv")}))]
            msgs = [await expect(reason, load(d, name, spec, only(s), echo_columns=False)) for (d, spec), reason in
                    zip(cases, ["HoldoutInvalid", "HoldoutInvalid", "HoldoutInvalid", "HoldoutTooLarge",
                                "HoldoutInvalid"], strict=True)]
            return msgs
    msgs = asyncio.run(go())
    for m in msgs:
        assert SECRET_COL not in m and SECRET_VAL not in m, m
    assert "label column 'nope' not found; the data has 3 columns" in msgs[0]
    assert "2 of 2 values in column 'label' are not numbers" in msgs[1]
    assert "column 1 of 3 has a value of 75000 characters" in msgs[3]
    assert "expected 3 fields in line 4, saw 4" in msgs[4]


# --- parsing in the child -----------------------------------------------------------------
def test_parquet_that_expands_is_refused_from_metadata_without_decoding() -> None:
    rng = np.random.default_rng(0)
    cell = "".join(rng.choice(list("abcdefghij"), 700 * 1024))
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(4000, dtype=np.int32)), pa.array([cell]))
    buf = io.BytesIO()
    table = pa.table({"region": column, "x": np.zeros(4000), "label": np.zeros(4000, dtype=np.int8)})
    pq.write_table(table, buf, compression="zstd", store_schema=False)  # as Spark writes: strings, not categories
    assert len(buf.getvalue()) < 800 * 1024  # fits a ConfigMap; pandas would decode 2.7 GiB of text (7 GiB peak)
    t = time.monotonic()
    with pytest.raises(HoldoutError) as e:
        asyncio.run(load(buf.getvalue(), "configmap/h/h.parquet", rollout(sliceColumns=["region"]), Reach(),
                         echo_columns=True))
    assert e.value.reason == "HoldoutTooLarge" and "text column 1 of 1 has a value of 716800 bytes" in str(e.value)
    assert time.monotonic() - t < 20 and cell[:40] not in str(e.value)


def test_huge_cell_in_a_slice_column_is_refused_by_name_without_its_text() -> None:
    rng = np.random.default_rng(1)
    cell = "".join(rng.choice(list("abcdefghij"), 700 * 1024))
    data = b"x,label,region\n" + b"".join(f"{i},{i % 2},{'eu' if i else cell}\n".encode() for i in range(60_000))
    with pytest.raises(HoldoutError) as e:
        asyncio.run(load(data, "configmap/h/h.csv", rollout(sliceColumns=["region"]), Reach(), echo_columns=True))
    assert e.value.reason == "HoldoutTooLarge"
    assert "column 'region' has a value of 716800 characters" in str(e.value) and cell[:40] not in str(e.value)


def test_parse_over_the_memory_budget_is_too_large_and_the_operator_survives() -> None:
    # 40 MB of JSON Lines: a Python dict per row takes several times that once parsed
    row = '{"a": 1.5, "b": 2, "c": "x", "d": 4.25, "label": 1}\n'
    data = (row * (40 * 10**6 // len(row))).encode()
    me = psutil.Process()
    before = me.memory_info().rss
    reach = Reach(memory_budget=256 * MIB)
    with pytest.raises(HoldoutError) as e:
        asyncio.run(load(data, "pvc/data/h.jsonl", rollout(), reach, echo_columns=True))
    grew = me.memory_info().rss - before
    assert e.value.reason == "HoldoutTooLarge" and "memory budget of 256 MiB" in str(e.value)
    assert grew < 30 * MIB, f"the parent grew by {grew / MIB:.0f} MiB"
    hold = asyncio.run(load(data[: 100 * len(row)], "pvc/data/h.jsonl", rollout(), reach, echo_columns=True))
    assert hold.rows == 100  # the next parse works: nothing left locked or broken


def test_a_killed_or_overrunning_child_is_too_large_and_leaves_no_process() -> None:
    row = '{"a": 1.5, "b": 2, "c": "x", "d": 4.25, "label": 1}\n'
    data = (row * (40 * 10**6 // len(row))).encode()  # several seconds to parse on this machine

    def parsers() -> list[psutil.Process]:
        return [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]

    async def killed() -> str:
        task = asyncio.create_task(load(data, "h.jsonl", rollout(), Reach(), echo_columns=True))
        for _ in range(400):  # as the kernel's OOM killer would
            await asyncio.sleep(0.02)
            if kids := parsers():
                await asyncio.sleep(0.3)
                kids[0].kill()
                break
        return await expect("HoldoutTooLarge", task)

    assert "memory budget of 512 MiB" in asyncio.run(killed())
    msg = asyncio.run(expect("HoldoutTooLarge", load(data, "h.jsonl", rollout(), Reach(parse_timeout=0.5),
                                                     echo_columns=True)))
    assert "parsing took more than 0.5s" in msg
    assert parsers() == []


def test_a_pinned_digest_is_checked_in_the_parsing_child_and_the_fingerprint_comes_back() -> None:
    data = b"x,region,label\n" + b"".join(f"{i},{'eu' if i % 3 else 'us'},{i % 2}\n".encode() for i in range(500))
    digest = hashlib.sha256(data).hexdigest()
    hold = asyncio.run(load(data, "configmap/h/h.csv", rollout(sha256=digest, maxRows=100), Reach(),
                            echo_columns=True))
    fp = hold.fingerprint
    assert (fp["sha256"], fp["bytes"], fp["rows"], fp["rowsUsed"], fp["columns"]) == (digest, len(data), 500, 100, 3)
    changed = data.replace(b"eu", b"EU", 1)
    with pytest.raises(HoldoutError) as e:
        asyncio.run(load(changed, "configmap/h/h.csv", rollout(sha256=digest), Reach(), echo_columns=True))
    assert e.value.reason == "HoldoutChanged"
    assert f"pins {digest}, but the data read has sha256 {hashlib.sha256(changed).hexdigest()}" in str(e.value)
