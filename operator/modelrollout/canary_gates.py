"""The canary's PromQL gates, confined to the rollout's namespace and safe against any answer.

A gate query is written by the tenant but runs with the operator's Prometheus access, so each
selector must carry `namespace="<ns>"` (checked on the AST of promql-parser, a port of
Prometheus' own grammar: a regex can be fooled by strings, comments and nesting). Every other
outcome (refusal, error, odd result type, broken server) is a failure message, never a pass and
never an exception that would leave the canary serving.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any

import aiohttp

from modelrollout.core.spec import PromQLGate

MAX_MESSAGE = 300
MAX_LABELS = 120
# The Rust parser recurses per nesting level and overflows the C stack (a segfault, not an
# exception) near 5000 levels; nesting is bounded by length, so this keeps a wide margin.
MAX_QUERY = 1000
MAX_ANSWER = 8 << 20  # bytes: a tenant's query must not make the operator buffer without bound
NO_PROMETHEUS = "promotion.gates are set but the operator has no Prometheus (MODELROLLOUT_PROMETHEUS_URL)"


def _cap(text: str, limit: int = MAX_MESSAGE) -> str:
    """One printable line of at most `limit` characters (messages go to status and events)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _unscoped(query: str, namespace: str) -> int:
    """How many selectors lack namespace="<namespace>"; raises if the query cannot be checked."""
    import promql_parser as p  # imported here so a missing parser fails the gates, not the operator

    count = 0

    def visit(node: Any) -> None:
        nonlocal count
        if isinstance(node, p.VectorSelector):
            groups = node.matchers.or_matchers or [node.matchers.matchers]  # `{a or b}`: each side must hold
            count += not all(any(m.op == p.MatchOp.Equal and m.name == "namespace" and m.value == namespace
                                 for m in group) for group in groups)
        elif isinstance(node, p.MatrixSelector):
            visit(node.vector_selector)
        elif isinstance(node, p.ParenExpr | p.UnaryExpr | p.SubqueryExpr):
            visit(node.expr)
        elif isinstance(node, p.BinaryExpr):
            visit(node.lhs)
            visit(node.rhs)
        elif isinstance(node, p.AggregateExpr):
            visit(node.expr)
            if node.param is not None:  # topk(scalar(x), ...) hides a selector here
                visit(node.param)
        elif isinstance(node, p.Call):
            count += node.func.name == "info"  # Prometheus 3's info() reads target_info, a selector no query names
            for arg in node.args:
                visit(arg)
        elif not isinstance(node, p.NumberLiteral | p.StringLiteral):
            raise TypeError(f"unknown PromQL node {type(node).__name__}")  # fail closed on a newer parser

    visit(p.parse(query))
    return count


def _scope(label: str, query: str, namespace: str) -> str | None:
    """Why the query may not run, or None when every selector is confined to the namespace."""
    if len(query) > MAX_QUERY:
        return f"{label}: the query is longer than {MAX_QUERY} characters"
    try:
        missing = _unscoped(query, namespace)
    except ValueError as e:  # the parser's syntax error: the tenant's own query, safe to echo
        return _cap(f"{label}: the query is not valid PromQL ({e})")
    except BaseException as e:  # a missing parser, a Rust panic (a BaseException): inconclusive, never a pass
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        return f"{label}: inconclusive, the namespace check could not run ({type(e).__name__})"
    if missing:
        return f'{label}: the query must select only namespace="{namespace}" ({missing} selector(s) without it)'
    return None


def _bound(v: float, g: PromQLGate) -> tuple[float, str] | None:
    """How far `v` is outside the gate, and which bound it breaks (±Inf compare like numbers)."""
    if g.min is not None and v < g.min:
        return g.min - v, f"below the minimum {g.min:g}"
    if g.max is not None and v > g.max:
        return v - g.max, f"above the maximum {g.max:g}"
    return None


def _judge(label: str, g: PromQLGate, answer: Any) -> str | None:
    """The failure for one decoded Prometheus answer; raises only on a malformed answer."""
    if not isinstance(answer, dict):
        raise TypeError("not a JSON object")
    if answer.get("status") != "success":
        kind, error = answer.get("errorType", "unknown"), answer.get("error", "")
        return f"{label}: Prometheus refused the query ({kind}: {error})"
    data = answer["data"]
    kind, result = data["resultType"], data["result"]
    if kind == "scalar":
        v = float(result[1])
        if math.isnan(v):
            return f"{label}: inconclusive, the query returned NaN"
        broken = _bound(v, g)
        return None if broken is None else f"{label}: {v:.4g} is {broken[1]}"
    if kind in ("matrix", "string"):
        return f"{label}: inconclusive, the query must return an instant vector or a scalar, got {kind}"
    if kind != "vector" or not isinstance(result, list):
        raise TypeError("unknown result type")
    if not result:
        return f"{label}: inconclusive, the query returned no data"
    values = [(float(s["value"][1]), s["metric"]) for s in result]
    failing = [(b, v, m) for v, m in values if (b := _bound(v, g)) is not None]
    if failing:
        (_, why), v, _ = max(failing, key=lambda f: f[0][0])
        first = ", ".join(f"{k}={json.dumps(str(val))}" for k, val in dict(failing[0][2]).items())
        return (f"{label}: {len(failing)} of {len(values)} series out of bounds, worst {v:.4g} is {why}; "
                f"first: {{{_cap(first, MAX_LABELS)}}}")
    nans = sum(math.isnan(v) for v, _ in values)
    return f"{label}: inconclusive, {nans} of {len(values)} series are NaN" if nans else None


async def _gate(s: aiohttp.ClientSession, url: str, i: int, g: PromQLGate, namespace: str,
                timeout: float) -> str | None:
    label = g.name or f"promotion.gates[{i}]"
    refused = _scope(label, g.query, namespace)
    if refused is not None:
        return refused
    # Prometheus stops evaluating at `timeout`; the client waits a little longer to read its answer
    params = {"query": g.query, "timeout": f"{max(1, round(timeout * 1000))}ms"}
    status = 0
    try:
        async with s.get(url + "/api/v1/query", params=params,
                         timeout=aiohttp.ClientTimeout(total=timeout + 2)) as r:
            status, body = r.status, bytearray()
            async for chunk in r.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_ANSWER:
                    return f"{label}: inconclusive, the answer is larger than {MAX_ANSWER >> 20} MiB"
        answer = json.loads(body)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, RecursionError) as e:
        return f"{label}: Prometheus query failed ({type(e).__name__}{f', HTTP {status}' if status else ''})"
    try:
        return _judge(label, g, answer)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        return f"{label}: inconclusive, Prometheus answered malformed data ({type(e).__name__})"


async def check(prometheus_url: str | None, gates: Sequence[PromQLGate], namespace: str, *,
                timeout: float = 10.0, session: aiohttp.ClientSession | None = None) -> list[str]:
    """Failure messages of the live gates (empty = all passed)."""
    if not gates:
        return []
    if not prometheus_url:
        return [NO_PROMETHEUS]
    if not namespace:  # `namespace=""` would select every series without the label
        return ["promotion.gates: no namespace to confine the queries to"]
    url = prometheus_url.rstrip("/")
    own = session is None
    s = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout + 5))
    try:
        found = await asyncio.gather(*(_gate(s, url, i, g, namespace, timeout) for i, g in enumerate(gates)))
    finally:
        if own:
            await s.close()
    return [_cap(f) for f in found if f is not None]
