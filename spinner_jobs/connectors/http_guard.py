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

The check runs inside the HTTP client's connector (aiohttp): every new connection
resolves its host once (:class:`GuardedResolver`), checks every address the resolver
answered, and connects to one of those checked addresses. No second lookup happens
between the check and the connect, so a DNS answer that changes between them (DNS
rebinding) cannot slip through. The socket of every connection is opened by
:func:`guarded_socket_factory`, which checks the address it is given once more; that
covers URLs naming a literal address, which skip name resolution. Every request path
(the first URL, each redirect hop, each next link) passes through the same gate. TLS
still verifies the certificate against the host name: the connector passes the URL's
host as the server name when it starts TLS.

The clients hold no cookies either: one pooled client reads the tables of every
organization, and a cookie one source set (a session that one organization's
credentials opened) would otherwise go back with the requests of every other table on
that host. The connector's session has aiohttp's ``DummyCookieJar``; an ``httpx``
client (the webhook sender's) gets :func:`cookie_free_jar`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Sequence
from http.cookiejar import Cookie, CookieJar, CookiePolicy
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult

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
    """``host`` as an IP address when it is a literal one (brackets allowed).

    The legacy IPv4 forms the system's resolver reads as an address ("2130706433",
    "127.1", "0x7f000001") count too, so a config naming one is refused by address.
    """
    try:
        return ip_address(host.strip("[]"))
    except ValueError:
        pass
    if not host or not all(c in "0123456789abcdefxABCDEFX." for c in host):
        return None
    try:
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """Resolve ``host`` with the system resolver (``getaddrinfo``)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that answers only addresses the policy allows.

    It resolves a host once per new connection (the connector keeps no DNS cache),
    checks every address the lookup answered, and hands the connector exactly those
    addresses to connect to.
    """

    def __init__(self, policy: AddressPolicy, resolver: Resolver = system_resolver) -> None:
        """Create the resolver.

        Args:
            policy: which addresses may be reached.
            resolver: the name lookup (the system's by default).

        """
        self._policy = policy
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and check every answer.

        Raises:
            SourceAddressRefusedError: an answer is not allowed (nothing is connected).
            OSError: the name does not resolve (the connector reports it as a
                connection error, which a read retries).

        """
        try:
            answers = await self._resolver(host, port)
        except OSError as exc:
            raise OSError(f"cannot resolve {host!r}: {exc}") from None
        addresses: list[IPAddress] = []
        for answer in answers:
            # Drop an IPv6 zone ("fe80::1%eth0"); the address alone is what is judged.
            address = ip_address(answer.split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise OSError(f"cannot resolve {host!r}: no address")
        self._policy.check(host, addresses)
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET if address.version == 4 else socket.AF_INET6,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        """Nothing to release."""


def guarded_socket_factory(policy: AddressPolicy) -> Callable[[AddrInfoType], socket.socket]:
    """A socket factory that refuses to open a socket towards a refused address.

    The connector calls it with the address it is about to connect to, whether it came
    from :class:`GuardedResolver` or from a URL naming a literal address (which skips
    name resolution), so every connection passes this last check.
    """

    def factory(addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        address = ip_address(str(sockaddr[0]).split("%", 1)[0])
        policy.check(str(address), [address])
        return socket.socket(family=family, type=kind, proto=proto)

    return factory


def guarded_connector(
    policy: AddressPolicy,
    *,
    limit: int,
    resolver: Resolver = system_resolver,
    ssl_context: ssl.SSLContext | None = None,
) -> aiohttp.TCPConnector:
    """An aiohttp connection pool whose every connection passes the guard.

    Args:
        policy: which addresses may be reached.
        limit: most connections open at once.
        resolver: the name lookup of each new connection (the system's by default).
        ssl_context: how TLS is verified (the default: the system's trust store).

    """
    return aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=0,
        keepalive_timeout=30.0,
        use_dns_cache=False,  # every new connection resolves, and is checked, afresh
        resolver=GuardedResolver(policy, resolver),
        socket_factory=guarded_socket_factory(policy),
        ssl=ssl_context if ssl_context is not None else True,
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
