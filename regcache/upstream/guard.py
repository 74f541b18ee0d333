"""Which registries and addresses regcache may reach: the defence against SSRF.

`ns` comes from clients, so without a guard anyone who can reach the cache could make it fetch
from any address it can reach: the cloud metadata service (169.254.169.254), a service bound
to loopback, an internal admin port. The guard refuses, with a 403:

- an `ns` that no `--allow-registry` glob matches;
- an `ns` that is an IP literal, unless an `--upstream` entry names it;
- a connection (to a registry, a redirect target or a token realm) whose host is a loopback,
  link-local or unspecified address, or a name resolving to one, unless an `--upstream` entry
  names that host (as its `ns` or in its URL).

A name is resolved here, checked, and curl is pinned to the checked addresses, so a DNS answer
that changes between the check and the connection (rebinding) cannot slip past. Through a
forward proxy the proxy resolves names; only IP literals are checked then.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from regcache.config import BUILTIN_UPSTREAMS, Settings
from regcache.errors import BadRequest, UpstreamError

Resolver = Callable[[str, int], Awaitable[list[str]]]
RESOLVE_TTL = 30.0
MAX_RESOLVED = 1024


def split_host(netloc: str) -> tuple[str, int | None]:
    """(host, port) of `host`, `host:port`, `[v6]` or `[v6]:port`; host lower-cased, unbracketed."""
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
    return host.lower(), int(port) if port.isdigit() else None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def is_internal(address: str) -> bool:
    """Loopback, link-local (metadata services) or unspecified: never reached unless named."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True  # not an address we understand: refuse rather than guess
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


class AddressGuard:
    def __init__(self, settings: Settings, resolve: Resolver = _getaddrinfo) -> None:
        self._patterns = settings.allow_registries
        # The entries an operator gave with --upstream (the built-in docker.io one is not).
        explicit = {ns: url for ns, url in settings.upstreams.items() if BUILTIN_UPSTREAMS.get(ns) != url}
        self._named_registries = frozenset(explicit)
        hosts = {split_host(ns)[0] for ns in explicit}
        hosts |= {(urllib.parse.urlsplit(url).hostname or "").lower() for url in explicit.values()}
        self._named_hosts = frozenset(hosts - {""})
        self._resolve = resolve
        self._resolved: OrderedDict[tuple[str, int], tuple[list[str], float]] = OrderedDict()

    def check_registry(self, registry: str) -> None:
        """At the edge, before the cache is asked: may this `ns` be served at all?"""
        host, port = split_host(registry)
        # A pattern without a port matches the host on any port.
        if not any(
            fnmatch.fnmatchcase(registry, pattern) or (port is not None and fnmatch.fnmatchcase(host, pattern))
            for pattern in self._patterns
        ):
            raise BadRequest("DENIED", f"registry {registry} is not allowed here (--allow-registry)", 403)
        if registry in self._named_registries:
            return
        if is_ip_literal(host):
            raise BadRequest(
                "DENIED", f"registry {registry} is an IP address; name it with --upstream to pull from it", 403
            )

    async def pin(self, registry: str, url: str, proxied: bool) -> list[str]:
        """curl RESOLVE entries for connecting to `url`; raises a 403 when its host is refused.

        Empty when the host is named by --upstream (the operator vouched for it) or when a
        proxy resolves it.
        """
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        if host in self._named_hosts:
            return []
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if is_ip_literal(host):
            if is_internal(host):
                raise self._refused(registry, host, host)
            return []
        if proxied:
            return []
        addresses = await self._lookup(registry, host, port)
        refused = [a for a in addresses if is_internal(a)]
        if refused:
            raise self._refused(registry, host, refused[0])
        shown = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
        return [f"{host}:{port}:{shown}"]

    async def _lookup(self, registry: str, host: str, port: int) -> list[str]:
        key = (host, port)
        cached = self._resolved.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise UpstreamError(registry, f"cannot resolve {host}: {exc.strerror or exc}") from None
        if not addresses:
            raise UpstreamError(registry, f"cannot resolve {host}: no addresses")
        self._resolved[key] = (addresses, time.monotonic() + RESOLVE_TTL)
        while len(self._resolved) > MAX_RESOLVED:
            self._resolved.popitem(last=False)
        return addresses

    @staticmethod
    def _refused(registry: str, host: str, address: str) -> BadRequest:
        return BadRequest(
            "DENIED",
            f"upstream {registry}: {host} is {address}, a loopback, link-local or unspecified address; "
            "refused unless an --upstream entry names it",
            403,
        )
