"""Model servers with faults, for tests: the reference app behind a fault-injecting middleware.

    python tests/integration/servers.py MODEL.skops PORT MODE [HOST]

MODE: ok | leak (keeps every request body) | flood (keeps 300 copies of each: a leak that fills a pod's
memory limit within seconds of load) | slow (one request at a time, 20 ms each) |
fat (holds 1 GiB) | auth (wants "Bearer s3cret") | 500 | hang | malformed | wrong_count | huge |
close (closes mid-response) | badmetrics (/metrics is not the text format) | zerometrics (/metrics says 0 bytes)
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from modelrollout.serving.server import load_model, make_app

KEPT: list[Any] = []


def fault(mode: str) -> Any:
    lock = asyncio.Lock()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/metrics" and mode == "badmetrics":
            return web.Response(text="process_resident_memory_bytes{oops 12\n# garbage\n")
        if request.path == "/metrics" and mode == "zerometrics":
            return web.Response(text="process_resident_memory_bytes 0\nprocess_cpu_seconds_total 0\n")
        if request.method != "POST":
            return await handler(request)
        if mode == "auth" and request.headers.get("Authorization") != "Bearer s3cret":
            return web.json_response({"error": "unauthorized"}, status=401)
        if mode == "leak":
            KEPT.append(await request.read() * 4)  # what a careless cache would do
        elif mode == "flood":
            KEPT.append(await request.read() * 300)
        elif mode == "slow":
            async with lock:
                await asyncio.sleep(0.02)
                return await handler(request)
        elif mode == "500":
            return web.json_response({"error": "model exploded"}, status=500)
        elif mode == "hang":
            await asyncio.sleep(3600)
        elif mode == "malformed":
            return web.Response(text="{not json", content_type="application/json")
        elif mode == "wrong_count":
            return web.json_response({"outputs": [{"name": "predict", "shape": [1], "datatype": "INT64",
                                                   "data": [1]}], "predictions": [1]})
        elif mode == "huge":
            return web.Response(body=b"[" + b"1," * (20 * 2**20) + b"1]", content_type="application/json")
        elif mode == "close":
            resp = web.StreamResponse(headers={"Content-Length": "100000", "Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(b'{"outputs": [')
            assert request.transport is not None
            request.transport.close()
            return resp
        return await handler(request)

    return middleware


def main() -> None:
    model_path, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "fat":
        KEPT.append(b"x" * 2**30)  # touched, so it is resident
    app = make_app(load_model(model_path), "m", middlewares=[fault(mode)])
    host = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"  # 0.0.0.0 in a pod
    web.run_app(app, host=host, port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
