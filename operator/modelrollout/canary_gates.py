"""The Prometheus provider of the canary's live gates: confined to the rollout's namespace, safe
against any answer.

A gate query is written by the tenant but runs with the operator's Prometheus access, so each
selector must carry `namespace="<ns>"` (checked on the AST of promql-parser, a port of
Prometheus' own grammar: a regex can be fooled by strings, comments and nesting). Every other
outcome (refusal, error, odd result type, broken server) is a measurement that cannot pass, never
an exception that would leave the canary serving. core/canary.py judges the answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp

from modelrollout.core import canary as analysis
from modelrollout.core.canary import Sample
from modelrollout.core.spec import PromQLGate

MAX_MESSAGE = 300
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


async def _query(s: aiohttp.ClientSession, url: str, name: str, query: str, namespace: str,
                 timeout: float) -> Sample:
    """One query's answer; refusals and failures become a Sample's error, never an exception."""
    refused = _scope(name, query, namespace)
    if refused is not None:
        return Sample(refused=refused.removeprefix(f"{name}: "))
    # Prometheus stops evaluating at `timeout`; the client waits a little longer to read its answer
    params = {"query": query, "timeout": f"{max(1, round(timeout * 1000))}ms"}
    status = 0
    try:
        async with s.get(url + "/api/v1/query", params=params,
                         timeout=aiohttp.ClientTimeout(total=timeout + 2)) as r:
            status, body = r.status, bytearray()
            async for chunk in r.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_ANSWER:
                    return Sample(problem=f"the answer is larger than {MAX_ANSWER >> 20} MiB")
        answer = json.loads(body)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, RecursionError) as e:
        return Sample(error=f"Prometheus query failed ({type(e).__name__}{f', HTTP {status}' if status else ''})")
    return analysis.sample(answer)


async def measure(prometheus_url: str | None, gates: Sequence[PromQLGate], due: Sequence[int], namespace: str,
                  since: float, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """One measurement of each due gate (queries run concurrently), judged by core/canary.py."""
    at = datetime.now(UTC)

    async def one(s: aiohttp.ClientSession | None, i: int) -> dict[str, Any]:
        g, name = gates[i], analysis.label(i, gates[i])
        if not prometheus_url:
            samples = {"canary": Sample(refused=NO_PROMETHEUS)}
        elif not namespace:  # `namespace=""` would select every series without the label
            samples = {"canary": Sample(refused="no namespace to confine the queries to")}
        else:
            assert s is not None
            url = prometheus_url.rstrip("/")
            found = await asyncio.gather(*(_query(s, url, name, q, namespace, timeout)
                                           for q in analysis.queries(g).values()))
            samples = dict(zip(analysis.queries(g), found, strict=True))
        return analysis.judge(i, g, samples, at, since)

    if not prometheus_url:
        return [await one(None, i) for i in due]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout + 5)) as s:
        return list(await asyncio.gather(*(one(s, i) for i in due)))
