"""Which addresses the http connector may reach, enforced where connections are made.

Table configs come from users, so a URL in one (its ``base_url``, a redirect, a next
link, a resumed cursor) must not reach the worker's own network: loopback, private
ranges, link-local (cloud metadata at 169.254.169.254), shared CGNAT space, the IETF
protocol block 192.0.0.0/24 (Oracle Cloud metadata at 192.0.0.192), documentation and
benchmarking ranges, unique-local and site-local IPv6, multicast, reserved and
unspecified addresses, and the IPv6 forms that embed one of those (IPv4-mapped, 6to4,
Teredo, NAT64). Only globally routable addresses are
allowed, plus the networks an operator opens on purpose
(``SPINNER_HTTP_ALLOWED_NETWORKS``).

The check runs inside the HTTP client's network backend: every new connection resolves
its host once, checks every address the resolver answered, and connects to one of
those checked addresses. No second lookup happens between the check and the connect,
so a DNS answer that changes between them (DNS rebinding) cannot slip through, and
every request path (the first URL, each redirect hop, each next link) passes through
the same gate. TLS still verifies the certificate against the host name, as httpcore
passes the URL's host as the server name when it starts TLS.

The clients hold no cookies either (:func:`cookie_free_jar`): one pooled client reads
the tables of every organization, and a cookie one source set (a session that one
organization's credentials opened) would otherwise go back with the requests of every
other table on that host.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Sequence
from http.cookiejar import Cookie, CookieJar, CookiePolicy
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

import httpcore
import httpx

from spinner_jobs.core.errors import SourceAddressRefusedError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses``: the name lookup a guarded connection makes."""

_NAT64 = ip_network("64:ff9b::/96")
_ALLOW_HINT = "add its network to SPINNER_HTTP_ALLOWED_NETWORKS to allow it on purpose"


class AddressPolicy:
    """Public addresses, plus the networks opened on purpose."""

    def __init__(self, allowed_networks: Iterable[IPNetwork | str] = ()) -> None:
        """Create the policy.

        Args:
            allowed_networks: networks reachable even though they are not public, e.g.
                ``127.0.0.0/8`` for a source on the same machine.

        """
        self.allowed = tuple(
            net if isinstance(net, IPv4Network | IPv6Network) else ip_network(net)
            for net in allowed_networks
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached, or ``None`` when it may."""
        if any(address in net for net in self.allowed):
            return None
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            # An IPv6 form of an IPv4 address reaches that IPv4 address.
            why = self.refusal(embedded)
            if why is not None:
                return f"{why}, embedded in {address}"
            if isinstance(address, IPv6Address) and (
                address.ipv4_mapped is not None or address in _NAT64
            ):
                return None
        kind = _kind(address)
        return None if kind is None else f"{address} is {kind}"

    def check(self, host: str, addresses: Iterable[IPAddress]) -> None:
        """Raise unless every address ``host`` resolved to may be reached.

        Raises:
            SourceAddressRefusedError: one of them may not.

        """
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                shown = f"host {host!r} resolves to {why}" if host != str(address) else why
                raise SourceAddressRefusedError(
                    f"{shown}: connectors reach public addresses only; {_ALLOW_HINT}"
                )


def _embedded_ipv4(address: IPAddress) -> IPv4Address | None:
    if not isinstance(address, IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _kind(address: IPAddress) -> str | None:
    """Name the non-public kind of ``address``; ``None`` for a public unicast one."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_multicast:
        return "a multicast address"
    # The ranges named here first: their kind is clearer than Python's flags, and
    # some (192.0.0.0/24, fec0::/10) are "global" to Python 3.11's ``ipaddress``
    # although the IANA registries mark them not globally reachable.
    for network, kind in _NON_PUBLIC[address.version]:
        if address in network:
            return kind
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "a reserved address"
    return None


def _networks(*entries: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ip_network(cidr), kind) for cidr, kind in entries)


# The IANA special-purpose registries' ranges that are not globally reachable (and
# deprecated ones), by IP version, checked before Python's flags.
_NON_PUBLIC: dict[int, tuple[tuple[IPNetwork, str], ...]] = {
    4: _networks(
        ("0.0.0.0/8", "a 'this network' address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a shared (CGNAT) address"),
        ("172.16.0.0/12", "a private address"),
        (
            "192.0.0.0/24",
            "an IETF protocol address (Oracle Cloud metadata lives there)",
        ),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a deprecated 6to4 relay address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("240.0.0.0/4", "a reserved address (broadcast included)"),
    ),
    6: _networks(
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("5f00::/16", "a segment-routing (SRv6) address"),
        ("fc00::/7", "a unique-local address"),
        ("fec0::/10", "a site-local address (deprecated)"),
    ),
}


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is a literal one (brackets allowed)."""
    try:
        return ip_address(host.strip("[]"))
    except ValueError:
        return None


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """Resolve ``host`` with the system resolver (``getaddrinfo``)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the policy allows."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        """Create the backend.

        Args:
            policy: which addresses may be reached.
            resolver: the name lookup (the system's by default).
            inner: the backend that opens the checked connections (anyio's by default).

        """
        self._policy = policy
        self._resolver = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - the backend interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve ``host``, check every answer, and connect to a checked address.

        Raises:
            SourceAddressRefusedError: an answer is not allowed (nothing is connected).
            httpcore.ConnectError: the name does not resolve or no address answers.

        """
        literal = literal_address(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            addresses = await self._resolve(host, port, timeout)
        self._policy.check(host, addresses)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None  # the resolver answered at least one address
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - the backend interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refuse: table sources are reached over TCP only."""
        raise SourceAddressRefusedError("unix sockets are not a source; use an http(s) URL")

    async def sleep(self, seconds: float) -> None:
        """Sleep as the inner backend does."""
        await self._inner.sleep(seconds)

    async def _resolve(
        self,
        host: str,
        port: int,
        timeout: float | None,  # noqa: ASYNC109
    ) -> list[IPAddress]:
        try:
            async with asyncio.timeout(timeout):
                answers = await self._resolver(host, port)
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from None
        addresses: list[IPAddress] = []
        for answer in answers:
            # Drop an IPv6 zone ("fe80::1%eth0"); the address alone is what is judged.
            address = ip_address(answer.split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: no address")
        return addresses


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool whose connections pass the guard.

    Proxies are not used (a proxy would make the connections the guard cannot see).
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        limits: httpx.Limits,
        resolver: Resolver = system_resolver,
    ) -> None:
        """Create the transport.

        Args:
            policy: which addresses may be reached.
            limits: pool limits.
            resolver: the name lookup (the system's by default).

        """
        super().__init__(limits=limits, trust_env=False)
        # httpx builds its pool without a network-backend parameter; the pool is
        # rebuilt with the same limits and the guarded backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedNetworkBackend(policy, resolver=resolver),
        )


class _NoCookies(CookiePolicy):
    """A cookie policy that accepts no cookie and returns none."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: Cookie, request: urllib.request.Request) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: urllib.request.Request) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: urllib.request.Request) -> bool:
        return False

    def path_return_ok(self, path: str, request: urllib.request.Request) -> bool:
        return False


def cookie_free_jar() -> CookieJar:
    """A cookie jar for an ``httpx`` client that never stores or sends a cookie."""
    return CookieJar(policy=_NoCookies())
