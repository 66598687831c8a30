"""Load, latency, memory and leak probes against real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import psutil
import pytest

from modelrollout.probes.load import LoadConfig, run_load
from modelrollout.probes.resources import MIB, ProcessSource, PrometheusSource, leak_probe, watch
from modelrollout.serving.client import Endpoint, ModelClient
from tests.integration.conftest import Server, Trained, free_port

pytestmark = pytest.mark.integration


def body(trained: Trained, rows: int = 1) -> bytes:
    return json.dumps(Endpoint("http://x", "m").request_body(trained.X[:rows], proba=False)).encode()


def test_closed_loop_measures_throughput_and_percentiles(trained: Trained,
                                                          start_server: Callable[..., Server]) -> None:
    srv = start_server(trained.candidate)
    r = run_load(LoadConfig(url=srv.url + "/v2/models/m/infer", bodies=[body(trained, 8)], batch_size=8,
                            concurrency=4, duration=2, warmup=0.5))
    assert r.requests > 100 and r.errors == {}
    lat = r.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert r.rows_per_s == pytest.approx(8 * r.throughput_rps)
    assert r.throughput_rps == pytest.approx(r.requests / r.duration_s)


def test_open_loop_counts_queueing_that_closed_loop_hides(trained: Trained,
                                                          start_server: Callable[..., Server]) -> None:
    # one request at a time, 20 ms each: at most 50 requests per second
    srv = start_server(trained.candidate, mode="slow")
    url = srv.url + "/v2/models/m/infer"
    closed = run_load(LoadConfig(url=url, bodies=[body(trained)], batch_size=1, concurrency=1, duration=1.5,
                                 warmup=0.2))
    opened = run_load(LoadConfig(url=url, bodies=[body(trained)], batch_size=1, mode="open", rate=100,
                                 duration=1.5, warmup=0.2, timeout=30))
    assert closed.latency_ms["p99"] < 40  # the closed loop only ever sees the service time
    assert 20 <= closed.throughput_rps <= 51  # never above the capacity
    # sent at twice the capacity, the queue grows by 10 ms every request: from the intended
    # send time the late requests waited hundreds of milliseconds
    assert opened.latency_ms["p99"] > 300, opened.latency_ms


@pytest.mark.parametrize(("mode", "kind"), [("500", "http_5xx"), ("hang", "timeout"), ("close", "disconnected"),
                                            ("malformed", "malformed"), ("refused", "connection")])
def test_errors_are_counted_by_kind(trained: Trained, start_server: Callable[..., Server], mode: str,
                                    kind: str) -> None:
    url = f"http://127.0.0.1:{free_port()}" if mode == "refused" else start_server(trained.candidate, mode=mode).url
    r = run_load(LoadConfig(url=url + "/v2/models/m/infer", bodies=[body(trained)], batch_size=1,
                            concurrency=2, duration=1.5, warmup=0.2, timeout=0.5))
    assert r.requests == 0 and set(r.errors) == {kind} and r.errors[kind] >= 2, r.errors
    assert r.error_rate_percent == 100.0 and r.latency_ms == {}


def test_prometheus_source_agrees_with_psutil(trained: Trained, start_server: Callable[..., Server]) -> None:
    srv = start_server(trained.candidate)

    async def go() -> None:
        prom = await PrometheusSource(srv.url + "/metrics").sample()
        local = await ProcessSource(srv.pid).sample()
        assert prom.rss_bytes == pytest.approx(local.rss_bytes, rel=0.05)
        assert prom.cpu_seconds == pytest.approx(local.cpu_seconds, abs=0.5)

    asyncio.run(go())


def test_watch_reports_before_peak_after_and_cpu(trained: Trained, start_server: Callable[..., Server]) -> None:
    srv = start_server(trained.candidate)

    async def go() -> None:
        cfg = LoadConfig(url=srv.url + "/v2/models/m/infer", bodies=[body(trained, 32)], batch_size=32,
                         concurrency=4, duration=1.5, warmup=0.2)
        result, res = await watch(ProcessSource(srv.pid), asyncio.to_thread(run_load, cfg), interval=0.1)
        assert result.requests > 0
        assert res.samples >= 10
        assert res.peak_mib >= max(res.before_mib, res.after_mib)
        assert res.cpu_percent > 20  # the server was busy
        assert res.before_mib == pytest.approx(psutil.Process(srv.pid).memory_info().rss / MIB, rel=0.2)

    asyncio.run(go())


def _leak(trained: Trained, srv: Server) -> tuple[bool, float]:
    async def go() -> tuple[bool, float]:
        async with ModelClient(Endpoint(srv.url, "m")) as c:
            async def send(n: int) -> None:
                sem = asyncio.Semaphore(8)

                async def one() -> None:
                    async with sem:
                        await c.predict(trained.X[:1])

                await asyncio.gather(*(one() for _ in range(n)))

            rep = await leak_probe(PrometheusSource(srv.url + "/metrics"), send, requests=6000, steps=6,
                                   warmup_requests=500)
            return rep.suspected, rep.mib_per_10k_requests

    return asyncio.run(go())


def test_leak_is_flagged_and_a_clean_server_is_not(trained: Trained, start_server: Callable[..., Server]) -> None:
    leaky, slope = _leak(trained, start_server(trained.candidate, mode="leak"))
    assert leaky, slope
    assert slope > 5
    clean, slope = _leak(trained, start_server(trained.candidate))
    assert not clean, slope
