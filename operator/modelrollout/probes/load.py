"""Load, latency and throughput against a model server, in a process of its own.

Closed loop: N workers, each sending its next request when the last one answered; the
highest sustainable throughput. Open loop: requests sent on a fixed schedule and latency
measured from the *intended* send time, so a server that stalls cannot hide its queue
(no coordinated omission). Latencies go into an HDR histogram (microseconds, 3 digits).
The load runs in its own process so it gets a core and never stalls the caller's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import ssl
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import httptools
from hdrh.histogram import HdrHistogram

_MAX_BODY = 1 << 20  # enough to check a response; the rest is not kept
# uvloop's loop.time() is libuv's millisecond clock, cached per loop turn: too coarse for latencies
clock = time.perf_counter
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


@dataclass(frozen=True)
class LoadConfig:
    url: str  # the full inference URL
    bodies: list[bytes]  # pre-encoded request bodies, cycled
    batch_size: int
    concurrency: int = 8
    duration: float = 10.0
    warmup: float = 1.0
    mode: Literal["closed", "open"] = "closed"
    rate: float | None = None  # requests per second, open loop
    timeout: float = 10.0
    max_requests: int | None = None  # stop after this many measured requests
    max_in_flight: int = 10000  # open loop: beyond this the generator counts "backlog" errors
    headers: dict[str, str] = field(default_factory=dict)
    expect_key: str = "outputs"  # a key every good response has


@dataclass
class LoadResult:
    batch_size: int
    mode: str
    concurrency: int
    duration_s: float
    requests: int
    errors: dict[str, int]
    throughput_rps: float
    rows_per_s: float
    latency_ms: dict[str, float]
    histogram: str = ""  # the latencies, HDR-encoded, so load windows can be pooled; not reported

    @property
    def error_rate_percent(self) -> float:
        total = self.requests + sum(self.errors.values())
        return 100.0 * sum(self.errors.values()) / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["histogram"]
        return {**d, "error_rate_percent": self.error_rate_percent}


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: pre-encoded request out, httptools-parsed response in.

    aiohttp's client costs several times more CPU per request than the model server it measures
    on a small machine; a bare protocol keeps the generator out of the measurement.
    """

    def __init__(self, expect: bytes) -> None:
        self.expect = expect
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[str | None] | None = None
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.finish("malformed")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.finish("disconnected")

    def on_body(self, chunk: bytes) -> None:
        if len(self.body) < _MAX_BODY:
            self.body += chunk

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status != 200:
            result: str | None = f"http_{status // 100}xx"
        elif self.expect in self.body[:4096]:
            result = None
        else:
            try:
                json.loads(self.body)
                result = "bad_response"
            except ValueError:
                result = "malformed"
        self.body.clear()
        if not self.parser.should_keep_alive():
            self.close()
        self.finish(result)

    def finish(self, result: str | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(result)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def send(self, request: bytes) -> str | None:
        """Send one request; None when it succeeded, else the error kind (the pool's watchdog times it out)."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        result = await self.waiter
        if result == "timeout":
            self.close()  # the answer may still come: never reuse the connection
        return result


class _Pool:
    """Idle connections to one server, opened on demand."""

    def __init__(self, url: str, headers: dict[str, str], expect: str) -> None:
        u = urlsplit(url)
        self.host, self.expect = u.hostname or "127.0.0.1", expect.encode()
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if u.scheme == "https" else None
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = (f"POST {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1\r\n"
                     f"Host: {u.netloc}\r\nContent-Type: application/json\r\n{extra}").encode()
        self.idle: list[_Connection] = []
        self.busy: dict[_Connection, float] = {}  # connection -> when its request was sent

    def request(self, body: bytes) -> bytes:
        return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def _protocol(self) -> _Connection:
        return _Connection(self.expect)

    async def _connection(self, timeout: float) -> _Connection | str:
        """An idle open connection, else a new one, else the error kind."""
        while self.idle:
            c = self.idle.pop()
            if c.transport is not None:
                return c
        try:
            _, conn = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                self._protocol, self.host, self.port, ssl=self.ssl), timeout)
        except TimeoutError:
            return "timeout"
        except OSError:
            return "connection"
        return conn

    async def send(self, request: bytes, timeout: float) -> str | None:
        conn = await self._connection(timeout)
        if isinstance(conn, str):
            return conn
        self.busy[conn] = clock()
        try:
            result = await conn.send(request)
        finally:
            del self.busy[conn]
        if conn.transport is not None:
            self.idle.append(conn)
        return result

    async def watchdog(self, timeout: float) -> None:
        """Time out requests from one periodic check: a timer per request costs the generator too much CPU."""
        while True:
            await asyncio.sleep(min(0.05, timeout / 4))
            late = clock() - timeout
            for conn, sent in list(self.busy.items()):
                if sent <= late:
                    conn.finish("timeout")

    def close(self) -> None:
        for c in self.idle:
            c.close()


def _histogram() -> HdrHistogram:
    return HdrHistogram(1, 3_600_000_000, 3)  # 1 µs to 1 h, 3 significant digits


def _latencies(hist: HdrHistogram) -> dict[str, float]:
    if not hist.get_total_count():
        return {}
    lat = {k: hist.get_value_at_percentile(p) / 1000 for k, p in PERCENTILES.items()}
    lat["max"] = hist.get_max_value() / 1000
    lat["mean"] = hist.get_mean_value() / 1000
    return lat


def pool(results: list[LoadResult]) -> LoadResult:
    """One result over several windows of the same load: latencies from the merged histograms."""
    hist = _histogram()
    for r in results:
        if r.histogram:
            hist.decode_and_add(r.histogram)
    ok, elapsed = sum(r.requests for r in results), max(1e-9, sum(r.duration_s for r in results))
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    first = results[0]
    return LoadResult(first.batch_size, first.mode, first.concurrency, elapsed, ok, dict(errors), ok / elapsed,
                      ok * first.batch_size / elapsed, _latencies(hist))


async def _run(cfg: LoadConfig) -> LoadResult:
    hist = _histogram()
    errors: Counter[str] = Counter()
    pool = _Pool(cfg.url, cfg.headers, cfg.expect_key)
    watchdog = asyncio.get_running_loop().create_task(pool.watchdog(cfg.timeout))
    requests = [pool.request(b) for b in cfg.bodies]
    start = clock()
    measure_from = start + cfg.warmup
    end = measure_from + cfg.duration
    n_bodies = len(requests)

    latencies = array("q")  # microseconds; into the histogram after the run, not while it competes for CPU
    limit = cfg.max_requests if cfg.max_requests is not None else float("inf")
    count = 0

    def done() -> bool:
        return clock() >= end or count >= limit

    def record(t_send: float, err: str | None) -> None:
        nonlocal count
        if t_send < measure_from:
            return
        count += 1
        if err is None:
            latencies.append(int((clock() - t_send) * 1e6))
        else:
            errors[err] += 1

    try:
        if cfg.mode == "closed":
            async def worker(w: int) -> None:
                i = w
                while not done():
                    t = clock()
                    record(t, await pool.send(requests[i % n_bodies], cfg.timeout))
                    i += cfg.concurrency

            await asyncio.gather(*(worker(w) for w in range(cfg.concurrency)))
        else:
            assert cfg.rate is not None
            in_flight: set[asyncio.Task[None]] = set()

            async def timed(intended: float, request: bytes) -> None:
                record(intended, await pool.send(request, cfg.timeout))

            i = 0
            while not done():
                intended = start + i / cfg.rate
                delay = intended - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(in_flight) >= cfg.max_in_flight:
                    if intended >= measure_from:
                        errors["backlog"] += 1
                else:
                    t = asyncio.create_task(timed(intended, requests[i % n_bodies]))
                    in_flight.add(t)
                    t.add_done_callback(in_flight.discard)
                i += 1
            if in_flight:
                await asyncio.wait(in_flight, timeout=cfg.timeout)
    finally:
        watchdog.cancel()
        pool.close()
    for v in latencies:
        hist.record_value(max(1, v))
    ok = len(latencies)
    elapsed = max(1e-9, min(clock(), end) - measure_from)
    encoded = hist.encode().decode() if ok else ""
    return LoadResult(cfg.batch_size, cfg.mode, cfg.concurrency, elapsed, ok, dict(errors),
                      ok / elapsed, ok * cfg.batch_size / elapsed, _latencies(hist), encoded)


def _serve(conn: Any) -> None:
    """The generator process: run each load it is sent, until it is sent None."""
    import uvloop  # a faster event loop: the generator must never be the bottleneck

    while (cfg := conn.recv()) is not None:
        try:
            conn.send(("ok", uvloop.run(_run(cfg))))
        except BaseException as e:  # report anything to the parent rather than die silently
            conn.send(("error", f"{type(e).__name__}: {e}"))
    conn.close()


class Generator:
    """A load-generator process kept for a series of loads (one run's windows): one process start for all,
    where a start costs about a second of a busy machine."""

    def __init__(self) -> None:
        self._proc: Any = None
        self._conn: Any = None

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run(self, cfg: LoadConfig) -> LoadResult:
        """Run one load and return its result (blocking)."""
        if self._proc is None or not self._proc.is_alive():
            ctx = mp.get_context("spawn")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
            self._proc.start()
            child.close()
        self._conn.send(cfg)
        limit = cfg.warmup + cfg.duration + cfg.timeout + 60
        if not self._conn.poll(limit):
            self.close()
            raise RuntimeError(f"load generator gave no result within {limit:.0f}s")
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"load generator failed: {value}")
        assert isinstance(value, LoadResult)
        return value

    async def run_async(self, cfg: LoadConfig) -> LoadResult:
        return await asyncio.to_thread(self.run, cfg)

    def close(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
        self._proc = None


def run_load(cfg: LoadConfig) -> LoadResult:
    """Run one load in a fresh process and return its result (blocking)."""
    with Generator() as g:
        return g.run(cfg)


def best_batch(results: list[LoadResult], p99_limit_ms: float | None) -> LoadResult | None:
    """The batch size with the most rows per second whose p99 still meets the latency limit."""
    ok = [r for r in results if r.requests and (p99_limit_ms is None or r.latency_ms.get("p99", 1e18) <= p99_limit_ms)]
    return max(ok, key=lambda r: r.rows_per_s, default=None)
