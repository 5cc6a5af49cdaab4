"""The SSRF guard of http.request: which addresses a workflow may reach, checked at connect time.

A workflow author controls the URL, so without a guard any user could make the worker call
cloud metadata services, the database or an admin port on the private network. Checking the
URL's host is not enough (``0x7f.1``, ``2130706433``, DNS names that resolve to 10.x, DNS
rebinding between check and use), so the check is made on the address the socket is about to
connect to, after ``getaddrinfo``, inside the urllib3 connection. Every connection is checked,
so redirects and retries are too, and there is no window between the check and the connect.

``JOBSPRINT_HTTP_ALLOW`` (Settings.http_allow) names the hosts or CIDRs that may be reached
although they are private, e.g. an internal API or the test server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family, create_connection

from app.config import ConfigError
from app.engine.errors import NodeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_net = ipaddress.ip_network

# Checked in order, so the most telling reason wins (169.254.169.254 is "metadata", not
# "link-local"). Anything else that is not globally routable is refused as "non-public".
_V4_FORBIDDEN: tuple[tuple[IPNetwork, str], ...] = (
    (_net("169.254.169.254/32"), "cloud metadata address"),
    (_net("100.100.100.200/32"), "cloud metadata address"),
    (_net("0.0.0.0/8"), "unspecified address"),
    (_net("127.0.0.0/8"), "loopback address"),
    (_net("10.0.0.0/8"), "private address"),
    (_net("172.16.0.0/12"), "private address"),
    (_net("192.168.0.0/16"), "private address"),
    (_net("169.254.0.0/16"), "link-local address"),
    (_net("100.64.0.0/10"), "carrier-grade NAT address"),
    (_net("224.0.0.0/4"), "multicast address"),
    (_net("240.0.0.0/4"), "reserved address"),
)
_V6_FORBIDDEN: tuple[tuple[IPNetwork, str], ...] = (
    (_net("fd00:ec2::254/128"), "cloud metadata address"),
    (_net("::/128"), "unspecified address"),
    (_net("::1/128"), "loopback address"),
    (_net("fe80::/10"), "link-local address"),
    (_net("fc00::/7"), "private address"),
    (_net("fec0::/10"), "site-local address"),
    (_net("ff00::/8"), "multicast address"),
)
# IPv6 forms that carry an IPv4 address in their last 32 bits (mapped, SIIT-translated,
# IPv4-compatible, NAT64) or in bits 16-48 (6to4): judged by the IPv4 address they carry.
_V4_IN_LOW_BITS = (_net("::ffff:0:0/96"), _net("::ffff:0:0:0/96"), _net("::/96"),
                   _net("64:ff9b::/96"))
_SIX_TO_FOUR = _net("2002::/16")
# RFC 8215 local-use NAT64: the IPv4 part may sit anywhere, so it cannot be judged.
_LOCAL_NAT64 = _net("64:ff9b:1::/48")
_UNSPECIFIED_AND_LOOPBACK_V6 = _net("::/127")  # inside ::/96, but not IPv4-compatible


class AddressRefused(NodeError):
    """The guard refused to connect. A NodeError, so it reaches the user as it is, and not an
    OSError, so neither urllib3 nor requests wraps it or retries it."""

    def __init__(self, host: str, ip: str, reason: str) -> None:
        super().__init__(f"http.request refused {host} ({ip}): {reason}; "
                         "add it to JOBSPRINT_HTTP_ALLOW to allow it")
        self.host, self.ip, self.reason = host, ip, reason


@dataclass(frozen=True, slots=True)
class AllowList:
    """Host names (exact, case-insensitive) and networks that may be reached although private."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """From ``Settings.http_allow``: each entry an IP, a CIDR or a host name. A malformed
        CIDR stops start-up rather than silently allowing nothing (or too much)."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry or ":" in entry:
                    raise ConfigError(
                        f"JOBSPRINT_HTTP_ALLOW: {raw.strip()!r} is not a valid IP or CIDR"
                    ) from None
                hosts.add(_normal_host(entry))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, ip: IPAddress) -> bool:
        if _normal_host(host) in self.hosts:
            return True
        candidates = [ip]
        if (embedded := embedded_ipv4(ip)) is not None:
            candidates.append(embedded)
        return any(a in net for a in candidates for net in self.networks
                   if a.version == net.version)


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, when it is one of the embedding forms."""
    if ip.version != 6:
        return None
    if ip not in _UNSPECIFIED_AND_LOOPBACK_V6 and any(ip in net for net in _V4_IN_LOW_BITS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    if ip in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFF_FFFF)
    return None


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why the guard refuses ``ip`` (ignoring the allow list), or None when it is public."""
    table = _V4_FORBIDDEN if ip.version == 4 else _V6_FORBIDDEN
    for net, reason in table:
        if ip in net:
            return reason
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        inner = forbidden_reason(embedded)
        return None if inner is None else f"{inner} embedded in IPv6"
    if ip.version == 6 and ip in _LOCAL_NAT64:
        return "local-use NAT64 address"
    if ip.is_reserved:
        return "reserved address"
    if not ip.is_global:
        return "non-public address"
    return None


def check_address(ip: str | IPAddress, host: str, allow: AllowList) -> None:
    """Raise AddressRefused unless ``ip`` (which ``host`` resolved to) may be reached. An
    IPv6 zone as getaddrinfo gives it (``fe80::1%eth0``) is ignored."""
    text = ip.split("%", 1)[0] if isinstance(ip, str) else str(ip)
    address = ipaddress.ip_address(text)
    reason = forbidden_reason(address)
    if reason is not None and not allow.allows(host, address):
        raise AddressRefused(_normal_host(host), text, reason)


class _GuardedConnectionMixin:
    """Replaces urllib3's ``_new_conn``: resolve, check every address, then connect to a
    checked address by number. ``self.host`` keeps the name, so the Host header, TLS SNI and
    certificate check are about the name the user gave."""

    allow: AllowList
    _dns_host: str
    host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any

    def __init__(self, *args: Any, allow: AllowList, **kwargs: Any) -> None:
        self.allow = allow
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        name = self._dns_host.strip("[]")
        try:
            infos = socket.getaddrinfo(name, self.port, allowed_gai_family(), socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        # All before any: a name resolving to one public and one private address is refused
        # whatever order the resolver returns them in.
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            check_address(address, self.host, self.allow)
        error: OSError | None = None
        for address in addresses:
            try:
                sock = create_connection((address, self.port), self.timeout,
                                         source_address=self.source_address,
                                         socket_options=self.socket_options)
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. "
                          f"(connect timeout={self.timeout})") from exc
            except OSError as exc:
                error = exc
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        raise NewConnectionError(  # type: ignore[arg-type]
            self, f"Failed to establish a new connection: {error}") from error


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose every connection goes through the guard. Mount it on both
    ``http://`` and ``https://`` and turn ``trust_env`` off: through a proxy the guard would
    check the proxy's address, not the target's, so proxies are not supported."""

    def __init__(self, allow: AllowList, **kwargs: Any) -> None:
        self.allow = allow
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        # The pool passes unknown keyword arguments on to each connection it makes.
        self.poolmanager.pool_classes_by_scheme = {
            "http": functools.partial(_GuardedHTTPConnectionPool, allow=self.allow),
            "https": functools.partial(_GuardedHTTPSConnectionPool, allow=self.allow),
        }

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise NodeError("http.request: proxies are not supported")
