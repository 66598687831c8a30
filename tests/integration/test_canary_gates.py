"""Canary live gates against Debian's real Prometheus, scraping a real prometheus_client exporter.

Two tenants' series share one Prometheus, as in a shared cluster: the gates of namespace "a" must
never read namespace "b", must judge every series they get, must compare the canary with
production in relative gates, and must never pass (nor raise) on whatever Prometheus or a broken
server answers.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from modelrollout import canary_gates
from modelrollout.canary_gates import NO_PROMETHEUS, measure
from modelrollout.core import canary as analysis
from modelrollout.core.spec import PromQLGate
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

SCOPE = 'the query must select only namespace="a"'
SHAPE = "the query must return an instant vector or a scalar"


def _query(url: str, q: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url + "/api/v1/query?" + urllib.parse.urlencode({"query": q}), timeout=5) as r:
        return list(json.loads(r.read())["data"]["result"])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus (1 s scrapes) over an exporter with two namespaces, once every series has 2 samples."""
    registry = CollectorRegistry()
    errors = Gauge("errors_ratio", "share of failed requests", ["namespace", "pod"], registry=registry)
    errors.labels("a", "p1").set(0.001)
    errors.labels("a", "p2").set(0.5)
    errors.labels("b", "").set(0.0)
    Gauge("idle_ratio", "zero, to divide by", ["namespace"], registry=registry).labels("a").set(0)
    variants = Gauge("request_error_ratio", "per variant", ["namespace", "variant"], registry=registry)
    variants.labels("a", "canary").set(0.05)  # the canary fails 5 % of requests, production none
    variants.labels("a", "production").set(0.0)
    exporter_port = free_port()
    exporter, _ = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    folder: Path = tmp_path_factory.mktemp("canary-prometheus")
    cfg = {"global": {"scrape_interval": "1s"},
           "scrape_configs": [{"job_name": "models", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}]}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    url = f"http://127.0.0.1:{free_port()}"
    with open(folder / "log", "wb") as log:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address={url.removeprefix('http://')}"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:  # two samples of each series, so that rate() has data too
            try:
                if len(_query(url, "count_over_time({__name__=~\".*_ratio\"}[1m]) >= 2")) == 6:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (folder / "log").read_text()[-2000:]
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        exporter.shutdown()


async def check(url: str | None, gates: list[PromQLGate], namespace: str, timeout: float = 10.0) -> list[str]:
    """One measurement of every gate; the messages of those that did not pass."""
    taken = await measure(url, gates, range(len(gates)), namespace, 0.0, timeout=timeout)
    assert all((m["verdict"] == "Pass") == (m["verdict"] not in ("Fail", "Inconclusive", "Error")) for m in taken)
    return [m["message"] for m in taken if m["verdict"] != "Pass"]


def run(url: str | None, query: str, *, min: float | None = None, max: float | None = None,
        namespace: str = "a", **kw: Any) -> list[str]:
    gate = PromQLGate(name="g", query=query, min=min, max=max)
    return asyncio.run(check(url, [gate], namespace, **kw))


def verdict(url: str, **gate: Any) -> dict[str, Any]:
    [m] = asyncio.run(measure(url, [PromQLGate(name="g", **gate)], [0], "a", 0.0))
    return m


def test_scoped_queries_pass_or_fail_on_their_bounds(prometheus: str) -> None:
    assert run(prometheus, 'max(errors_ratio{namespace="a"})', max=0.6) == []
    assert run(prometheus, 'errors_ratio{namespace="a",pod="p1"}', min=0, max=0.01) == []
    assert run(prometheus, 'max(errors_ratio{namespace="a"})', max=0.1) == [
        "g: value 0.5000 is above the maximum 0.1000"]
    # namespace "b" is all zeros: its own gate passes where "a"'s fails, so scoping is not by accident
    assert run(prometheus, 'max(errors_ratio{namespace="b"})', max=0.1, namespace="b") == []


def test_every_series_of_a_vector_is_checked(prometheus: str) -> None:
    """The old check read result[0] only: a bad second series passed."""
    [msg] = run(prometheus, 'errors_ratio{namespace="a"}', max=0.01)
    assert msg.startswith("g: 1 of 2 series out of bounds; worst {")
    assert msg.endswith("}: value 0.5000 is above the maximum 0.0100")
    assert 'pod="p2"' in msg and 'namespace="a"' in msg and "p1" not in msg
    [msg] = run(prometheus, 'errors_ratio{namespace="a"}', min=0.01)
    assert "1 of 2 series" in msg and "value 0.0010 is below the minimum 0.0100" in msg and 'pod="p1"' in msg
    [msg] = run(prometheus, 'errors_ratio{namespace="a"}', min=0.6)
    assert "2 of 2 series" in msg and "value 0.0010" in msg
    # the worst series is what status records
    m = verdict(prometheus, query='errors_ratio{namespace="a"}', max=0.01)
    assert (m["verdict"], m["value"], m["threshold"], m["bound"]) == ("Fail", 0.5, 0.01, "max")


def test_a_relative_gate_catches_a_canary_worse_than_production(prometheus: str) -> None:
    query = 'sum(request_error_ratio{namespace="a",variant="{{variant}}"})'
    m = verdict(prometheus, query=query, max_increase=0.01)
    assert (m["verdict"], m["value"], m["productionValue"], m["bound"]) == ("Fail", 0.05, 0.0, "maxIncrease")
    assert m["message"] == "g: value increases by 0.0500 against production (0 → 0.0500); at most 0.0100 allowed"
    m = verdict(prometheus, query=query, max_increase_percent=50)
    assert m["verdict"] == "Fail" and "production is 0 and the canary is 0.05" in m["message"]
    assert verdict(prometheus, query=query, max_increase=0.1)["verdict"] == "Pass"
    # one series per variant, or the comparison is undefined
    m = verdict(prometheus, query='request_error_ratio{namespace="a"} + 0 * '
                                  'scalar(sum(request_error_ratio{namespace="a",variant="{{variant}}"}))',
                max_increase=1)
    assert m["verdict"] == "Inconclusive" and "one series per variant" in m["message"]


@pytest.mark.parametrize(("on_no_data", "expected"), [("Inconclusive", "Inconclusive"), ("Fail", "Fail")])
def test_no_data_follows_the_gates_policy(prometheus: str, on_no_data: str, expected: str) -> None:
    for q in ('errors_ratio{namespace="a",pod="nope"}', 'idle_ratio{namespace="a"} / idle_ratio{namespace="a"}',
              'scalar(idle_ratio{namespace="a"} / idle_ratio{namespace="a"})'):
        m = verdict(prometheus, query=q, max=1, on_no_data=on_no_data)
        assert (m["verdict"], m["message"]) == (expected, "g: no data (an empty result or NaN)"), q


@pytest.mark.parametrize(("query", "missing"), [
    ("errors_ratio", 1),
    ('errors_ratio{namespace=~".*"}', 1),
    ('errors_ratio{namespace!="x"}', 1),
    ('errors_ratio{namespace="b"}', 1),
    ('{__name__=~".+"}', 1),
    ('errors_ratio{namespace="a"} / errors_ratio', 1),
    ('errors_ratio{namespace="a"} + on() group_left sum(errors_ratio{namespace!="a"})', 1),
    ('topk(scalar(count(errors_ratio)), errors_ratio{namespace="a"})', 1),  # a selector in an aggregation parameter
    ("max_over_time((errors_ratio + idle_ratio)[1m:1s])", 2),  # subquery
    ('absent(errors_ratio{namespace="b"})', 1),
    ('errors_ratio{pod="p1"} # namespace="a"', 1),  # a comment is not a matcher
    ('errors_ratio{pod="namespace=\\"a\\""}', 1),  # nor is a label value that looks like one
    ('errors_ratio{namespace="a" or pod="p1"}', 1),  # newer PromQL's `or` in a selector: each side must hold
    ('info(errors_ratio{namespace="a"})', 1),  # newer PromQL's info() selects target_info by itself
])
def test_unscoped_queries_are_refused(prometheus: str, query: str, missing: int) -> None:
    [msg] = run(prometheus, query, max=1)
    assert msg == f"g: {SCOPE} ({missing} selector(s) without it)"


def test_refused_queries_never_reach_prometheus() -> None:
    async def go() -> None:
        async with fake({}) as (url, seen):
            gates = [PromQLGate(query="errors_ratio", max=1), PromQLGate(query="sum(x{namespace=~'a'})", max=1)]
            assert await check(url, gates, "a") == [
                f"promotion.gates[0]: {SCOPE} (1 selector(s) without it)",
                f"promotion.gates[1]: {SCOPE} (1 selector(s) without it)"]
            assert seen == []
    asyncio.run(go())


def test_matrix_selectors_and_subqueries_inside_functions_are_accepted(prometheus: str) -> None:
    assert run(prometheus, 'sum(rate(errors_ratio{namespace="a"}[1m]))', max=1) == []
    assert run(prometheus, 'max_over_time(max(errors_ratio{namespace="a"})[1m:1s])', max=0.6) == []
    assert run(prometheus, 'errors_ratio{namespace="a",pod="p2"} / on(namespace) idle_ratio{namespace="a"}',
               min=0) == []  # 0.5/0 = +Inf: compared like a number


def test_scalar_results_are_checked(prometheus: str) -> None:
    assert run(prometheus, 'scalar(sum(errors_ratio{namespace="a"}))', max=1) == []
    assert run(prometheus, 'scalar(sum(errors_ratio{namespace="a"}))', max=0.1) == [
        "g: value 0.5010 is above the maximum 0.1000"]
    assert run(prometheus, "vector(1)", max=2) == []  # no selector: nothing to confine


def test_infinity_is_compared_like_a_number(prometheus: str) -> None:
    ratio = 'sum(errors_ratio{namespace="a"}) / sum(idle_ratio{namespace="a"})'
    assert run(prometheus, ratio, max=1) == ["g: value inf is above the maximum 1"]
    assert run(prometheus, f"-{ratio}", min=0) == ["g: value -inf is below the minimum 0"]


@pytest.mark.parametrize(("query", "expected"), [
    ('errors_ratio{namespace="a"}[1m]', f"g: {SHAPE}, got matrix"),
    ('"a string"', f"g: {SHAPE}, got string"),
    ('errors_ratio{namespace="a",pod="nope"}', "g: no data (an empty result or NaN)"),
    ('idle_ratio{namespace="a"} / idle_ratio{namespace="a"}', "g: no data (an empty result or NaN)"),
    ('scalar(idle_ratio{namespace="a"} / idle_ratio{namespace="a"})', "g: no data (an empty result or NaN)"),
])
def test_results_that_cannot_be_judged_are_inconclusive(prometheus: str, query: str, expected: str) -> None:
    assert run(prometheus, query, max=1) == [expected]
    assert verdict(prometheus, query=query, max=1)["verdict"] == "Inconclusive"


def test_prometheus_errors_are_failures_with_their_error_type(prometheus: str) -> None:
    # accepted by the parser, refused by Prometheus when it runs: two series get the same labels
    [msg] = run(prometheus, 'label_replace(errors_ratio{namespace="a"}, "pod", "same", "", "")', max=1)
    assert msg.startswith("g: Prometheus refused the query (execution: ") and "same labelset" in msg
    [msg] = run(prometheus, 'errors_ratio{namespace="a" or namespace="a"}', max=1)  # newer syntax than 2.42's
    assert msg.startswith("g: Prometheus refused the query (bad_data: ")
    [msg] = run(prometheus, 'sum(errors_ratio{namespace="a"}', max=1)  # caught before Prometheus
    assert msg.startswith("g: the query is not valid PromQL (")


def test_prometheus_stops_a_slow_query_at_the_timeout(prometheus: str) -> None:
    """This 1 ms-step subquery takes Prometheus ~0.6 s, far below its own default limit (2 min):
    a `timeout` error proves Prometheus applied the gate's timeout."""
    [msg] = run(prometheus, 'max_over_time(abs(errors_ratio{namespace="a"})[1h:1ms])', max=1, timeout=0.1)
    assert msg == "g: Prometheus refused the query (timeout: query timed out in expression evaluation)"


def test_unreachable_or_unconfigured_prometheus_fails() -> None:
    assert run(f"http://127.0.0.1:{free_port()}", 'x{namespace="a"}', max=1) == [
        "g: Prometheus query failed (ClientConnectorError)"]
    assert run(None, 'x{namespace="a"}', max=1) == [f"g: {NO_PROMETHEUS}"]
    assert run("", 'x{namespace="a"}', max=1) == [f"g: {NO_PROMETHEUS}"]
    assert "MODELROLLOUT_PROMETHEUS_URL" in NO_PROMETHEUS
    assert asyncio.run(check(None, [], "a")) == []
    assert run("http://127.0.0.1:1", 'x{namespace=""}', max=1, namespace="") == [
        "g: no namespace to confine the queries to"]


def test_a_query_the_parser_cannot_take_is_refused_not_crashed() -> None:
    """The Rust parser overflows its stack near 5000 nesting levels (a segfault): length is capped first."""
    deep = "(" * 10_000 + 'x{namespace="a"}' + ")" * 10_000
    assert run("http://127.0.0.1:1", deep, max=1) == ["g: the query is longer than 1000 characters"]


def test_without_the_parser_gates_are_inconclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "promql_parser", None)  # as if not installed: the import fails
    assert run("http://127.0.0.1:1", 'x{namespace="a"}', max=1) == [
        "g: inconclusive, the namespace check could not run (ModuleNotFoundError)"]


def test_messages_are_capped_and_labelled(prometheus: str) -> None:
    gates = [PromQLGate(name="n" * 1000, query='errors_ratio{namespace="a"}', max=0.01),
             PromQLGate(query='label_replace(errors_ratio{namespace="a"}, "pod", "' + "z" * 900 + '", "", "")', max=1)]
    msgs = asyncio.run(check(prometheus, gates, "a"))
    assert len(msgs) == 2 and all(len(m) <= analysis.MAX_MESSAGE for m in msgs)
    assert msgs[0].startswith("nnnn") and msgs[1].startswith("promotion.gates[1]: Prometheus refused the query")


# A real Prometheus cannot be made to answer garbage, HTML, a bare 500 or a wrong shape; these
# faults of a broken server or proxy are served by a tiny local aiohttp server instead.
JSON = "application/json"
BROKEN: dict[str, Callable[[], web.StreamResponse]] = {
    "ok": lambda: web.json_response({"status": "success", "data": {"resultType": "scalar", "result": [0, "0.5"]}}),
    "garbage": lambda: web.Response(text='{"status": "succ', content_type=JSON),
    "html": lambda: web.Response(text="<html><body>Bad gateway</body></html>", content_type="text/html"),
    "500": lambda: web.Response(status=500, text="internal error"),
    "list": lambda: web.json_response([1, 2]),
    "no-data": lambda: web.json_response({"status": "success"}),
    "value-shape": lambda: web.json_response(
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": "0.1"}]}}),
    "metric-shape": lambda: web.json_response(
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": [1], "value": [0, "9"]}]}}),
    "odd-type": lambda: web.json_response({"status": "success", "data": {"resultType": {"x": 1}, "result": []}}),
    "error-no-type": lambda: web.json_response({"status": "error", "error": "x" * 5000}, status=422),
    "deep": lambda: web.Response(text="[" * 100_000 + "]" * 100_000, content_type=JSON),
    "huge": lambda: web.Response(body=b" " * (canary_gates.MAX_ANSWER + 10), content_type=JSON),
}


@asynccontextmanager
async def fake(delay: dict[str, float]) -> AsyncIterator[tuple[str, list[str]]]:
    """Serves BROKEN at /<name>/api/v1/query (after `delay[name]` seconds); lists the paths asked."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.path.split("/")[1]
        seen.append(request.path_qs)
        await asyncio.sleep(delay.get(name, 0))
        return BROKEN.get(name, lambda: web.Response(status=404))()

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("name", "expected"), [
    ("garbage", "g: Prometheus query failed (JSONDecodeError, HTTP 200)"),
    ("html", "g: Prometheus query failed (JSONDecodeError, HTTP 200)"),
    ("500", "g: Prometheus query failed (JSONDecodeError, HTTP 500)"),
    ("list", "g: Prometheus answered malformed data (TypeError)"),
    ("no-data", "g: Prometheus answered malformed data (KeyError)"),
    ("value-shape", "g: Prometheus answered malformed data (ValueError)"),
    ("metric-shape", "g: Prometheus answered malformed data (TypeError)"),
    ("odd-type", "g: Prometheus answered malformed data (TypeError)"),
    ("deep", "g: Prometheus query failed (RecursionError, HTTP 200)"),
    ("huge", f"g: the answer is larger than {canary_gates.MAX_ANSWER >> 20} MiB"),
    ("slow", "g: Prometheus query failed (TimeoutError)"),
])
def test_a_broken_server_gives_failures_not_exceptions(name: str, expected: str) -> None:
    async def go() -> list[str]:
        async with fake({"slow": 3}) as (url, _):
            return await check(f"{url}/{name}", [PromQLGate(name="g", query='x{namespace="a"}', max=1)], "a",
                               timeout=0.1)
    assert asyncio.run(go()) == [expected]


def test_the_query_goes_with_a_prometheus_side_timeout() -> None:
    async def go() -> None:
        async with fake({}) as (url, seen):
            gate = PromQLGate(query='x{namespace="a"}', max=1)
            assert await check(f"{url}/ok/", [gate], "a", timeout=2.5) == []
            assert seen == ["/ok/api/v1/query?query=x%7Bnamespace%3D%22a%22%7D&timeout=2500ms"]
    asyncio.run(go())


def test_an_error_without_a_type_is_capped() -> None:
    async def go() -> list[str]:
        async with fake({}) as (url, _):
            return await check(f"{url}/error-no-type", [PromQLGate(name="g", query="vector(1)", max=1)], "a")
    [msg] = asyncio.run(go())
    assert msg.startswith("g: Prometheus refused the query (unknown: xxx") and len(msg) == analysis.MAX_MESSAGE
