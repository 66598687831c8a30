"""HTTP(S) downloads of hold-outs a tenant named: only hosts the operator's admin listed, never a
special address behind a listed name, every byte counted as it arrives, redirects refused.

URL and S3 sources both end here (an S3 object is fetched by a presigned URL), so the checks
are written once.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from modelrollout.holdout_parse import HoldoutError

ANNOTATION_TOKEN_HOST = "modelrollout.dev/token-host"
HOSTS_HELM_VALUE = "operator.holdoutUrlHosts"
_HOSTNAME = re.compile(r"^[a-z0-9_]([-a-z0-9_.]*[a-z0-9_])?$")
_METADATA = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
TooLarge = Callable[[int, str], None]  # (bytes so far, how they were counted) -> raises HoldoutTooLarge
SecretGetter = Callable[[str, str, str], Awaitable[tuple[str, Mapping[str, str]]]]


def canon(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def split_host(entry: str) -> tuple[str, int | None]:
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
    host = canon(host)
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


def listed(entries: Iterable[str], host: str, port: int | None) -> bool:
    for entry in entries:
        try:
            h, p = split_host(entry)
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




def checked_url(raw: str, field: str, hosts: frozenset[str]) -> tuple[URL, str, str, int | None]:
    """(URL, how messages show it, canonical host, port), or HoldoutError if the admin did not list it."""
    try:
        url = URL(raw)
        port = url.port
    except ValueError:
        raise HoldoutError(f"{field} is not a valid URL", "HoldoutInvalid") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise HoldoutError(f"{field} must be an http or https URL with a host", "HoldoutInvalid")
    shown = str(url.with_user(None).with_query(None).with_fragment(None))
    host = canon(url.host)
    if not hosts:
        raise HoldoutError(f"{shown}: this operator fetches no hold-out URLs; its admin must list the host in the "
                           f"Helm value {HOSTS_HELM_VALUE}", "HoldoutRefused")
    if not listed(hosts, host, port):
        raise HoldoutError(f"{shown}: {host}:{port} is not on the operator's list of hold-out hosts; its admin "
                           f"must add it to the Helm value {HOSTS_HELM_VALUE}", "HoldoutRefused")
    return url, shown, host, port


async def download(url: URL, shown: str, headers: Mapping[str, str], *, limit: int, too_large: TooLarge,
                   timeout: aiohttp.ClientTimeout, statuses: Mapping[int, str] | None = None) -> bytes:
    """GET `url` to EOF through the checked resolver; `statuses` words known error answers."""
    connector = aiohttp.TCPConnector(resolver=_CheckedResolver(), use_dns_cache=False, limit=1)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                         auto_decompress=False) as s, \
                s.get(url, headers={"Accept-Encoding": "identity", **headers}, allow_redirects=False) as r:
            return await _body(r, shown, limit, too_large, statuses or {})
    except aiohttp.ClientPayloadError:
        raise HoldoutError(f"{shown}: the connection ended before the whole body arrived", "HoldoutInvalid") from None
    except TimeoutError:
        raise HoldoutError(f"{shown}: no complete answer within {timeout.total:g}s", "HoldoutNotFound") from None
    except aiohttp.ClientError as e:
        why = f": {e.os_error.strerror}" if isinstance(e, aiohttp.ClientConnectorError) else ""
        raise HoldoutError(f"{shown}: cannot fetch ({type(e).__name__}{why})", "HoldoutNotFound") from None


async def _body(r: aiohttp.ClientResponse, shown: str, limit: int, too_large: TooLarge,
                statuses: Mapping[int, str]) -> bytes:
    """Every byte to EOF, or an error: never a silently shortened hold-out."""
    if 300 <= r.status < 400:
        raise HoldoutError(f"{shown} answered a redirect (HTTP {r.status}); redirects are not followed, give the "
                           f"final URL", "HoldoutRefused")
    if r.status != 200:
        said = f" ({statuses[r.status]})" if r.status in statuses else ""
        raise HoldoutError(f"{shown} answered HTTP {r.status}{said}", "HoldoutNotFound")
    if r.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
        raise HoldoutError(f"{shown}: answered with a compressed body although the operator asks for identity",
                           "HoldoutInvalid")
    length = r.content_length
    if length is not None:
        too_large(length, f"its Content-Length of {length} bytes")
    chunks, n = [], 0
    async for chunk in r.content.iter_chunked(1 << 16):
        chunks.append(chunk)
        n += len(chunk)
        too_large(n, f"a body of more than {limit} bytes (reading stopped there)")
    if length is not None and n != length:
        raise HoldoutError(f"{shown}: the body has {n} bytes, its Content-Length says {length}", "HoldoutInvalid")
    return b"".join(chunks)


async def pinned_secret(secret: SecretGetter, ns: str, name: str, key: str, host: str, port: int | None,
                        what: str) -> str:
    """A Secret key's value, if the Secret's owner pinned this host with the token-host annotation:
    whoever writes the rollout cannot send another team's credentials to a host of their choosing."""
    try:
        value, notes = await secret(ns, name, key)
    except LookupError:
        raise HoldoutError(f"Secret {name} (key {key!r}) for {what} was not found", "HoldoutNotFound") from None
    pins = (notes or {}).get(ANNOTATION_TOKEN_HOST, "")
    if not listed(pins.split(","), host, port):
        raise HoldoutError(f"Secret {name} is sent only to the host its annotation {ANNOTATION_TOKEN_HOST} "
                           f"names, and that is not {host}:{port}; the Secret's owner must set it", "HoldoutRefused")
    return value
