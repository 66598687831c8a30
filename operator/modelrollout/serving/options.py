"""The options of `modelrollout serve`, with the limits that keep one server safe on a shared cluster.

No heavy imports here: the CLI builds its parser from this module without loading the server.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

MIB = 2**20


@dataclass(frozen=True)
class Limits:
    """What one client can hold of the server; the defaults suit a pod with a few cores and a few GiB.

    max_inflight: inference requests admitted at once (body read, decoded, predicted). One more waits
        up to `queue_wait` seconds for a slot, then gets 503 with Retry-After; its body is not read
        meanwhile, so bodies in memory stay under max_inflight x max_body_bytes.
    max_body_bytes: a bigger body gets 413 (aiohttp's client_max_size).
    body_timeout: seconds for the whole body to arrive once the request is admitted, else 408. A client
        trickling its body holds a slot that long at most, so max_inflight such clients delay others by it.
    idle_timeout: seconds a connection may go without a complete request. It is aiohttp's keep-alive
        timer, which starts when the connection opens and is not reset by a trickle of header bytes,
        so it also drops a client that never finishes its headers. Keep it above the idle timeout of
        clients and proxies that pool connections (aiohttp's client: 15 s, most proxies: 60 s).
    """

    max_inflight: int = 64
    max_body_bytes: int = 64 * MIB
    body_timeout: float = 30.0
    idle_timeout: float = 75.0
    queue_wait: float = 2.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Limits:
        """The limits from parsed options; an option a caller's parser lacks takes its default."""
        default = cls()
        return cls(**{f.name: getattr(args, f.name, getattr(default, f.name)) for f in fields(cls)})


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{v} is not a positive integer")
    return n


def _seconds(v: str) -> float:
    s = float(v)
    if not 0 <= s < float("inf"):
        raise argparse.ArgumentTypeError(f"{v} is not a number of seconds")
    return s


def _positive_seconds(v: str) -> float:
    """0 would not mean "at once" to aiohttp's keep-alive timer but "never", so it is refused."""
    s = _seconds(v)
    if s == 0:
        raise argparse.ArgumentTypeError(f"{v}: the timeout must be above 0")
    return s


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of `modelrollout serve`, so the CLI and the tests parse them the same way."""
    d = Limits()
    p.add_argument("model", help="model file (.skops by default)")
    p.add_argument("--name", default="model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickle/joblib file: loading one runs code from the file, so only for "
                        "files you made yourself")
    p.add_argument("--max-inflight", type=_positive_int, default=d.max_inflight,
                   help=f"inference requests processed at once; more wait --queue-wait, then get 503 "
                        f"(default {d.max_inflight})")
    p.add_argument("--queue-wait", type=_seconds, default=d.queue_wait,
                   help=f"seconds a request waits for a free slot before 503 (default {d.queue_wait:g})")
    p.add_argument("--max-body-bytes", type=_positive_int, default=d.max_body_bytes,
                   help=f"a bigger request body gets 413 (default {d.max_body_bytes})")
    p.add_argument("--body-timeout", type=_positive_seconds, default=d.body_timeout,
                   help=f"seconds to receive a request body, else 408 (default {d.body_timeout:g})")
    p.add_argument("--idle-timeout", type=_positive_seconds, default=d.idle_timeout,
                   help=f"seconds a connection may stay open without a complete request, headers "
                        f"included (default {d.idle_timeout:g})")
