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
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from modelrollout.core.spec import Holdout as HoldoutSpec
from modelrollout.core.spec import ModelRolloutSpec
from modelrollout.holdout import Bounds, Holdout
from modelrollout.holdout_parse import MESSAGE_LIMIT, MIB, HoldoutError, ParseJob, parse

__all__ = ["MESSAGE_LIMIT", "HoldoutError", "Reach", "fetch", "load"]

ANNOTATION_TOKEN_HOST = "modelrollout.dev/token-host"
HOSTS_HELM_VALUE = "operator.holdoutUrlHosts"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HOSTNAME = re.compile(r"^[a-z0-9_]([-a-z0-9_.]*[a-z0-9_])?$")
_METADATA = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


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
            _split(entry)  # a bad entry fails at start-up, not at the first rollout

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
    def bounds(self) -> Bounds:
        return Bounds(self.max_cells, self.max_cell_chars, self.max_slice_chars, self.memory_budget)


ConfigMapGetter = Callable[[str, str, str], Awaitable[bytes]]
SecretGetter = Callable[[str, str, str], Awaitable[tuple[str, Mapping[str, str]]]]


async def fetch(h: HoldoutSpec, namespace: str, reach: Reach, *, config_map: ConfigMapGetter,
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
    raise HoldoutError("spec.holdout.file is for the CLI; the operator reads configMapRef, url or pvc",
                       "HoldoutInvalid")


def _check_size(n: int, limit: int, h: HoldoutSpec, reach: Reach, name: str, what: str = "") -> None:
    if n > limit:
        bound = (f"spec.holdout.maxSize ({int(h.max_size)} bytes)" if limit == int(h.max_size) else
                 f"{limit} bytes, half the operator's hold-out memory budget of {reach.memory_budget // MIB} MiB")
        raise HoldoutError(f"{name}: {what or f'{n} bytes'} is more than {bound}", "HoldoutTooLarge")


# --- URLs ---------------------------------------------------------------------------------
def _canon(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _split(entry: str) -> tuple[str, int | None]:
    """ "host", "host:port", "[v6]" or "[v6]:port" -> (canonical host, port or None for any)."""
    e = entry.strip()
    host, port = e, ""
    if e.startswith("["):
        host, _, rest = e[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"hold-out host {entry!r}: expected [address]:port")
        port = rest[1:]
    elif e.count(":") == 1:
        host, port = e.split(":")
    host = _canon(host)
    if (not _HOSTNAME.match(host) and ":" not in host) or (":" in host and not _is_ip(host)) or \
            (port and not port.isdigit()) or not (port == "" or 0 < int(port) < 65536):
        raise ValueError(f"hold-out host {entry!r}: expected host or host:port")
    return host, int(port) if port else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _listed(entries: Iterable[str], host: str, port: int | None) -> bool:
    for entry in entries:
        try:
            h, p = _split(entry)
        except ValueError:
            continue
        if h == host and p in (None, port):
            return True
    return False


def special(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What makes an address one a tenant must not reach through a listed name, or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if inner is not None:
            return special(inner)
    checks = (("cloud metadata", ip in _METADATA), ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
              ("unspecified", ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK)),
              ("multicast", ip.is_multicast), ("reserved", ip.is_reserved),
              ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local))
    return next((kind for kind, hit in checks if hit), None)


class _CheckedResolver(AbstractResolver):
    """Resolves once and refuses the name if any address is special; aiohttp then connects to
    exactly these addresses, so a second, different DNS answer never gets used."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for r in found:
            kind = special(ipaddress.ip_address(r["host"].split("%")[0]))
            if kind:
                raise HoldoutError(f"host {host} resolves to a {kind} address, which a listed name may not reach; "
                                   f"the operator's admin can list that address itself in {HOSTS_HELM_VALUE}",
                                   "HoldoutRefused")
        return found

    async def close(self) -> None:
        await self._inner.close()


async def _fetch_url(h: HoldoutSpec, ns: str, reach: Reach, secret: SecretGetter, limit: int) -> tuple[bytes, str]:
    assert h.url is not None
    try:
        url = URL(h.url.url)
        port = url.port
    except ValueError:
        raise HoldoutError("spec.holdout.url is not a valid URL", "HoldoutInvalid") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise HoldoutError("spec.holdout.url must be an http or https URL with a host", "HoldoutInvalid")
    shown = str(url.with_user(None).with_query(None).with_fragment(None))
    host = _canon(url.host)
    if not reach.url_hosts:
        raise HoldoutError(f"{shown}: this operator fetches no hold-out URLs; its admin must list the host in the "
                           f"Helm value {HOSTS_HELM_VALUE}", "HoldoutRefused")
    if not _listed(reach.url_hosts, host, port):
        raise HoldoutError(f"{shown}: {host}:{port} is not on the operator's list of hold-out hosts; its admin "
                           f"must add it to the Helm value {HOSTS_HELM_VALUE}", "HoldoutRefused")
    headers = {"Accept-Encoding": "identity"}
    if h.url.secret_ref is not None:
        headers["Authorization"] = "Bearer " + await _token(h, ns, secret, host, port)
    timeout = aiohttp.ClientTimeout(total=reach.url_timeout, connect=reach.connect_timeout,
                                    sock_connect=reach.connect_timeout, sock_read=max(30.0, reach.connect_timeout))
    connector = aiohttp.TCPConnector(resolver=_CheckedResolver(), use_dns_cache=False, limit=1)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                         auto_decompress=False) as s, \
                s.get(url, headers=headers, allow_redirects=False) as r:
            return await _body(r, shown, limit, h, reach), shown
    except aiohttp.ClientPayloadError:
        raise HoldoutError(f"{shown}: the connection ended before the whole body arrived", "HoldoutInvalid") from None
    except TimeoutError:
        raise HoldoutError(f"{shown}: no complete answer within {reach.url_timeout:g}s", "HoldoutNotFound") from None
    except aiohttp.ClientError as e:
        why = f": {e.os_error.strerror}" if isinstance(e, aiohttp.ClientConnectorError) else ""
        raise HoldoutError(f"{shown}: cannot fetch ({type(e).__name__}{why})", "HoldoutNotFound") from None


async def _token(h: HoldoutSpec, ns: str, secret: SecretGetter, host: str, port: int | None) -> str:
    """The Secret's value, if its owner pinned this host with the token-host annotation."""
    assert h.url is not None and h.url.secret_ref is not None
    ref = h.url.secret_ref
    try:
        value, notes = await secret(ns, ref.name, ref.key)
    except LookupError:
        raise HoldoutError(f"Secret {ref.name} (key {ref.key!r}) for the hold-out URL was not found",
                           "HoldoutNotFound") from None
    pins = (notes or {}).get(ANNOTATION_TOKEN_HOST, "")
    if not _listed(pins.split(","), host, port):
        raise HoldoutError(f"Secret {ref.name} is sent only to the host its annotation {ANNOTATION_TOKEN_HOST} "
                           f"names, and that is not {host}:{port}; the Secret's owner must set it", "HoldoutRefused")
    token = value.strip()
    if not token or any(not (" " <= c <= "~") for c in token):
        raise HoldoutError(f"Secret {ref.name} key {ref.key!r} is not a bearer token (empty, or characters an "
                           f"HTTP header cannot carry)", "HoldoutInvalid")
    return token


async def _body(r: aiohttp.ClientResponse, shown: str, limit: int, h: HoldoutSpec, reach: Reach) -> bytes:
    """Every byte to EOF, or an error: never a silently shortened hold-out."""
    if 300 <= r.status < 400:
        raise HoldoutError(f"{shown} answered a redirect (HTTP {r.status}); redirects are not followed, give the "
                           f"final URL", "HoldoutRefused")
    if r.status != 200:
        raise HoldoutError(f"{shown} answered HTTP {r.status}", "HoldoutNotFound")
    if r.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
        raise HoldoutError(f"{shown}: answered with a compressed body although the operator asks for identity",
                           "HoldoutInvalid")
    length = r.content_length
    if length is not None:
        _check_size(length, limit, h, reach, shown, f"its Content-Length of {length} bytes")
    chunks, n = [], 0
    async for chunk in r.content.iter_chunked(1 << 16):
        chunks.append(chunk)
        n += len(chunk)
        _check_size(n, limit, h, reach, shown, f"a body of more than {limit} bytes (reading stopped there)")
    if length is not None and n != length:
        raise HoldoutError(f"{shown}: the body has {n} bytes, its Content-Length says {length}", "HoldoutInvalid")
    return b"".join(chunks)


# --- PVC ----------------------------------------------------------------------------------
def _read_pvc(h: HoldoutSpec, ns: str, reach: Reach, limit: int) -> tuple[bytes, str]:
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
