"""Where the operator gets a rollout's hold-out set, and how it parses it without risking itself.

Whoever may create a ModelRollout in a namespace picks the source, so each one is bounded:
URLs reach only hosts the operator's admin listed (and never a loopback, link-local or
metadata address behind a listed name); a Secret's token goes only to the host its owner
pinned; PVC paths stay inside the rollout namespace's claim folder; bytes are counted against
spec.holdout.maxSize as they arrive. Parsing runs in a child process under a memory cap
(holdout_parse.py). Messages give counts and the names the spec wrote, never data.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from modelrollout.core.sources import Source
from modelrollout.core.spec import ModelRolloutSpec
from modelrollout.holdout import Bounds, Holdout
from modelrollout.holdout_http import (
    ANNOTATION_TOKEN_HOST,
    HOSTS_HELM_VALUE,
    SecretGetter,
    TooLarge,
    checked_url,
    download,
    pinned_secret,
    special,
    split_host,
)
from modelrollout.holdout_parse import MESSAGE_LIMIT, MIB, HoldoutError, ParseJob, parse
from modelrollout.holdout_s3 import fetch_s3

__all__ = ["ANNOTATION_TOKEN_HOST", "HOSTS_HELM_VALUE", "MESSAGE_LIMIT", "HoldoutError", "Reach", "fetch", "load",
           "load_reference",
           "special"]

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class Reach:
    """Operator-level limits on hold-outs, set by the operator's admin (the Helm chart sets the env)."""

    url_hosts: frozenset[str] = frozenset()  # "host" (any port) or "host:port"; empty: no URLs at all
    pvc_root: Path = Path("/mnt/holdout")  # <root>/<namespace>/<claimName>/<path>
    memory_budget: int = 512 * MIB  # what parsing may allocate (holdout.cap_memory); files may be half of it
    max_cells: int = 20_000_000  # rows x columns after parsing
    max_cell_chars: int = 65_536  # longest text cell in any column
    max_slice_chars: int = 256  # longest value of a slice column
    connect_timeout: float = 10.0
    url_timeout: float = 300.0  # the whole download
    parse_timeout: float = 600.0

    def __post_init__(self) -> None:
        for entry in self.url_hosts:
            split_host(entry)  # a bad entry fails at start-up, not at the first rollout

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Reach:
        e = os.environ if env is None else env

        def num(var: str, default: float) -> float:
            try:
                v = float(e.get(var, default))
            except ValueError:
                raise ValueError(f"{var}={e[var]!r} is not a number") from None
            if v <= 0:
                raise ValueError(f"{var} must be positive")
            return v

        hosts = frozenset(h.strip() for h in e.get("MODELROLLOUT_HOLDOUT_URL_HOSTS", "").split(",") if h.strip())
        return cls(
            url_hosts=hosts,
            pvc_root=Path(e.get("MODELROLLOUT_PVC_ROOT", "/mnt/holdout")),
            memory_budget=int(num("MODELROLLOUT_HOLDOUT_MEMORY_MIB", 512) * MIB),
            max_cells=int(num("MODELROLLOUT_HOLDOUT_MAX_CELLS", 20_000_000)),
            max_cell_chars=int(num("MODELROLLOUT_HOLDOUT_MAX_CELL_CHARS", 65_536)),
            max_slice_chars=int(num("MODELROLLOUT_HOLDOUT_MAX_SLICE_CHARS", 256)),
            connect_timeout=num("MODELROLLOUT_HOLDOUT_CONNECT_TIMEOUT_SECONDS", 10),
            url_timeout=num("MODELROLLOUT_HOLDOUT_URL_TIMEOUT_SECONDS", 300),
            parse_timeout=num("MODELROLLOUT_HOLDOUT_PARSE_TIMEOUT_SECONDS", 600),
        )

    @property
    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.url_timeout, connect=self.connect_timeout,
                                     sock_connect=self.connect_timeout, sock_read=max(30.0, self.connect_timeout))

    @property
    def bounds(self) -> Bounds:
        return Bounds(self.max_cells, self.max_cell_chars, self.max_slice_chars, self.memory_budget)


ConfigMapGetter = Callable[[str, str, str], Awaitable[bytes]]


async def fetch(h: Source, namespace: str, reach: Reach, *, config_map: ConfigMapGetter,
                secret: SecretGetter) -> tuple[bytes, str]:
    """The hold-out's bytes and a name for messages (its extension tells the format).

    `config_map` and `secret` raise modelrollout.kube.api.NotFound (a LookupError) for a
    missing object or key; `secret` returns the value and the Secret's annotations.
    """
    limit = min(int(h.max_size), reach.memory_budget // 2)  # parsing needs the file's size again, at least
    if h.config_map_ref is not None:
        ref = h.config_map_ref
        try:
            data = await config_map(namespace, ref.name, ref.key)
        except LookupError as e:
            raise HoldoutError(str(e), "HoldoutNotFound") from None
        name = f"configmap/{ref.name}/{ref.key}"
        _check_size(len(data), limit, h, reach, name)
        return data, name
    if h.url is not None:
        return await _fetch_url(h, namespace, reach, secret, limit)
    if h.pvc is not None:
        return await asyncio.to_thread(_read_pvc, h, namespace, reach, limit)
    if h.s3 is not None:
        return await fetch_s3(h.s3, namespace, secret, hosts=reach.url_hosts, timeout=reach.client_timeout,
                              limit=limit, sizer=lambda shown: _sizer(limit, h, reach, shown))
    raise HoldoutError("spec.holdout.file is for the CLI; the operator reads configMapRef, url, pvc or s3",
                       "HoldoutInvalid")


def _check_size(n: int, limit: int, h: Source, reach: Reach, name: str, what: str = "") -> None:
    if n > limit:
        bound = (f"spec.holdout.maxSize ({int(h.max_size)} bytes)" if limit == int(h.max_size) else
                 f"{limit} bytes, half the operator's hold-out memory budget of {reach.memory_budget // MIB} MiB")
        raise HoldoutError(f"{name}: {what or f'{n} bytes'} is more than {bound}", "HoldoutTooLarge")


def _sizer(limit: int, h: Source, reach: Reach, name: str) -> TooLarge:
    return lambda n, what: _check_size(n, limit, h, reach, name, what)


async def _fetch_url(h: Source, ns: str, reach: Reach, secret: SecretGetter, limit: int) -> tuple[bytes, str]:
    assert h.url is not None
    url, shown, host, port = checked_url(h.url.url, "spec.holdout.url", reach.url_hosts)
    headers: dict[str, str] = {}
    if h.url.secret_ref is not None:
        headers["Authorization"] = "Bearer " + await _token(h, ns, secret, host, port)
    return await download(url, shown, headers, limit=limit, too_large=_sizer(limit, h, reach, shown),
                          timeout=reach.client_timeout), shown


async def _token(h: Source, ns: str, secret: SecretGetter, host: str, port: int | None) -> str:
    assert h.url is not None and h.url.secret_ref is not None
    ref = h.url.secret_ref
    token = (await pinned_secret(secret, ns, ref.name, ref.key, host, port, "the hold-out URL")).strip()
    if not token or any(not (" " <= c <= "~") for c in token):
        raise HoldoutError(f"Secret {ref.name} key {ref.key!r} is not a bearer token (empty, or characters an "
                           f"HTTP header cannot carry)", "HoldoutInvalid")
    return token


# --- PVC ----------------------------------------------------------------------------------
def _read_pvc(h: Source, ns: str, reach: Reach, limit: int) -> tuple[bytes, str]:
    """A regular file inside <root>/<namespace>/<claim>, checked after symlinks and again on the open fd."""
    assert h.pvc is not None
    claim, rel = h.pvc.claim_name, h.pvc.path
    name = f"pvc/{claim}/{rel}"
    if not _DNS1123.match(claim) or not _DNS1123.match(ns):
        raise HoldoutError(f"{name}: spec.holdout.pvc.claimName is not a valid claim name", "HoldoutInvalid")
    if rel.startswith("/") or "\0" in rel:
        raise HoldoutError(f"{name}: spec.holdout.pvc.path must be a path inside the claim", "HoldoutRefused")
    try:
        base = (reach.pvc_root / ns / claim).resolve(strict=True)
    except OSError:
        raise HoldoutError(f"{name}: claim {claim} of namespace {ns} is not mounted in the operator",
                           "HoldoutNotFound") from None
    outside = HoldoutError(f"{name}: the path leads out of the claim's folder", "HoldoutRefused")
    if not Path(os.path.normpath(base / rel)).is_relative_to(base):  # before any lookup: no probing outside
        raise outside
    try:
        target = (base / rel).resolve(strict=True)
    except FileNotFoundError:
        raise HoldoutError(f"{name}: no such file", "HoldoutNotFound") from None
    except (OSError, RuntimeError) as e:  # a symlink loop, a file used as a folder
        raise HoldoutError(f"{name}: cannot follow the path ({type(e).__name__})", "HoldoutInvalid") from None
    if not target.is_relative_to(base):
        raise outside
    if not stat.S_ISREG(os.stat(target, follow_symlinks=False).st_mode):  # before opening a device or FIFO
        raise HoldoutError(f"{name}: not a regular file", "HoldoutRefused")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:  # swapped for a symlink since the check, or gone
        raise HoldoutError(f"{name}: cannot open ({type(e).__name__})", "HoldoutRefused") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HoldoutError(f"{name}: not a regular file", "HoldoutRefused")
        proc = Path(f"/proc/self/fd/{fd}")
        if proc.exists() and not Path(os.readlink(proc)).is_relative_to(base):  # a folder swapped since resolve
            raise outside
        _check_size(st.st_size, limit, h, reach, name)
        chunks, n = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - n)):
            chunks.append(chunk)
            n += len(chunk)
            _check_size(n, limit, h, reach, name, "the file, which grew while read,")
        return b"".join(chunks), name
    finally:
        os.close(fd)


async def load(data: bytes, name: str, spec: ModelRolloutSpec, reach: Reach, *, echo_columns: bool) -> Holdout:
    """Parse and check the hold-out in a spawned child under the memory budget; one parse at a time.

    `echo_columns`: whether messages may name the file's own columns (False for URL sources,
    whose header the rollout's author may not have been able to read).
    """
    h = spec.holdout
    job = ParseJob(name, h.format, spec.task, h.label_column, h.feature_columns, list(h.slice_columns), h.max_rows,
                   h.seed, echo_columns, reach.bounds, reach.memory_budget, h.sha256)
    return await parse(data, job, reach.parse_timeout)


async def load_reference(data: bytes, name: str, spec: ModelRolloutSpec, holdout: Holdout, reach: Reach, *,
                         echo_columns: bool) -> Holdout:
    """Parse the reference set in a child under the memory budget, as the hold-out (its feature columns only)."""
    assert spec.drift is not None
    r = spec.drift.reference_ref
    job = ParseJob(name, r.format, spec.task, "", [str(c) for c in holdout.features.columns], [], r.max_rows, r.seed,
                   echo_columns, reach.bounds, reach.memory_budget, r.sha256)
    return await parse(data, job, reach.parse_timeout)
