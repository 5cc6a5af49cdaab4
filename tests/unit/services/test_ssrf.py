"""The SSRF guard: the address table, the allow list, and the check inside the connection.

No test here sends a packet to anything but 127.0.0.1: made-up host names resolve through a
stubbed ``getaddrinfo``, and a socket guard fails any connect to a non-loopback address.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import ConfigError
from app.services.http_port import RequestsHttpPort
from app.services.ssrf import AddressRefused, AllowList, check_address, forbidden_reason

NOBODY = AllowList()

REFUSED = [
    ("127.0.0.1", "loopback address"),
    ("127.255.255.254", "loopback address"),
    ("10.0.0.5", "private address"),
    ("172.16.0.1", "private address"),
    ("172.31.255.255", "private address"),
    ("192.168.1.1", "private address"),
    ("169.254.1.1", "link-local address"),
    ("169.254.169.254", "cloud metadata address"),
    ("100.100.100.200", "cloud metadata address"),
    ("100.64.0.1", "carrier-grade NAT address"),
    ("100.127.255.255", "carrier-grade NAT address"),
    ("0.0.0.0", "unspecified address"),
    ("0.1.2.3", "unspecified address"),
    ("224.0.0.1", "multicast address"),
    ("239.255.255.250", "multicast address"),
    ("240.0.0.1", "reserved address"),
    ("255.255.255.255", "reserved address"),
    ("192.0.2.10", "non-public address"),  # documentation
    ("198.18.0.1", "non-public address"),  # benchmarking
    ("::1", "loopback address"),
    ("::", "unspecified address"),
    ("fe80::1", "link-local address"),
    ("fe80::1%eth0", "link-local address"),
    ("fc00::1", "private address"),
    ("fd12:3456::1", "private address"),
    ("fd00:ec2::254", "cloud metadata address"),
    ("ff02::1", "multicast address"),
    ("fec0::1", "site-local address"),
    ("2001:db8::1", "non-public address"),
    ("64:ff9b:1::a00:1", "local-use NAT64 address"),
    # IPv4-mapped, SIIT-translated, IPv4-compatible, 6to4 and NAT64 forms of forbidden IPv4
    ("::ffff:127.0.0.1", "loopback address embedded in IPv6"),
    ("::ffff:7f00:1", "loopback address embedded in IPv6"),
    ("::ffff:10.0.0.1", "private address embedded in IPv6"),
    ("::ffff:169.254.169.254", "cloud metadata address embedded in IPv6"),
    ("::ffff:0:127.0.0.1", "loopback address embedded in IPv6"),
    ("::127.0.0.1", "loopback address embedded in IPv6"),
    ("::10.1.2.3", "private address embedded in IPv6"),
    ("::0.0.0.2", "unspecified address embedded in IPv6"),
    ("2002:7f00:1::1", "loopback address embedded in IPv6"),
    ("2002:a9fe:a9fe::", "cloud metadata address embedded in IPv6"),
    ("64:ff9b::7f00:1", "loopback address embedded in IPv6"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata address embedded in IPv6"),
    ("64:ff9b::100.64.0.1", "carrier-grade NAT address embedded in IPv6"),
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "100.128.0.1", "172.32.0.1", "11.0.0.1",
          "2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8",
          "2002:808:808::1", "64:ff9b::808:808"]


@pytest.mark.parametrize(("ip", "reason"), REFUSED)
def test_forbidden_addresses_are_refused_with_their_reason(ip, reason):
    with pytest.raises(AddressRefused) as refused:
        check_address(ip, "api.example.com", NOBODY)
    assert refused.value.reason == reason


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_pass(ip):
    check_address(ip, "api.example.com", NOBODY)
    assert forbidden_reason(ipaddress.ip_address(ip)) is None


def test_refusal_names_host_address_and_the_setting():
    with pytest.raises(AddressRefused) as refused:
        check_address("127.0.0.1", "Localhost.", NOBODY)
    assert str(refused.value) == ("http.request refused localhost (127.0.0.1): loopback address; "
                                  "add it to JOBSPRINT_HTTP_ALLOW to allow it")


def test_allow_list_parses_hosts_addresses_and_networks():
    allow = AllowList.parse([" Internal.Example.COM ", "127.0.0.1", "10.0.0.0/8", "",
                             "fd00::/8", "[::1]", "192.168.1.7/24"])
    assert allow.hosts == frozenset({"internal.example.com"})
    assert [str(n) for n in allow.networks] == ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8",
                                               "::1/128", "192.168.1.0/24"]


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "fe80::zz", "300.1.2.3/8", "10.0.0.0/x"])
def test_allow_list_rejects_malformed_networks(entry):
    with pytest.raises(ConfigError, match="JOBSPRINT_HTTP_ALLOW"):
        AllowList.parse([entry])


@pytest.mark.parametrize(("allowed", "ip", "host"), [
    (["internal.example.com"], "10.1.2.3", "internal.example.com"),
    (["internal.example.com"], "10.1.2.3", "INTERNAL.Example.com."),
    (["internal.example.com"], "169.254.169.254", "internal.example.com"),
    (["127.0.0.1"], "127.0.0.1", "localhost"),
    (["10.0.0.0/8"], "10.200.3.4", "anything.example"),
    (["10.0.0.0/8"], "::ffff:10.200.3.4", "anything.example"),
    (["127.0.0.0/8"], "::ffff:127.0.0.1", "anything.example"),
    (["::1"], "::1", "localhost"),
    (["fd00::/8"], "fd00:ec2::254", "metadata.example"),
    (["169.254.169.254"], "169.254.169.254", "metadata.example"),
])
def test_allow_list_lets_named_hosts_and_addresses_through(allowed, ip, host):
    check_address(ip, host, AllowList.parse(allowed))


@pytest.mark.parametrize(("allowed", "ip", "host"), [
    (["internal.example.com"], "10.1.2.3", "other.example.com"),
    (["internal.example.com"], "10.1.2.3", "sub.internal.example.com"),
    (["internal.example.com"], "10.1.2.3", "internal.example.com.evil.test"),
    (["127.0.0.1"], "127.0.0.2", "localhost"),
    (["127.0.0.1"], "::1", "localhost"),
    (["10.0.0.0/8"], "172.16.0.1", "anything.example"),
    (["10.0.0.0/8"], "169.254.169.254", "anything.example"),
    (["fd00::/8"], "fc00::1", "anything.example"),
])
def test_allow_list_allows_nothing_more(allowed, ip, host):
    with pytest.raises(AddressRefused):
        check_address(ip, host, AllowList.parse(allowed))


FORBIDDEN_V4_NETWORKS = [ipaddress.IPv4Network(n) for n in
                         ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                          "169.254.0.0/16")]
forbidden_v4 = st.sampled_from(FORBIDDEN_V4_NETWORKS).flatmap(
    lambda net: st.integers(int(net.network_address), int(net.broadcast_address))
).map(ipaddress.IPv4Address)


@settings(max_examples=300, deadline=None)
@given(forbidden_v4)
def test_any_private_ipv4_and_its_mapped_form_is_refused(ip):
    for form in (str(ip), f"::ffff:{ip}", str(ipaddress.IPv6Address(0xFFFF << 32 | int(ip)))):
        with pytest.raises(AddressRefused):
            check_address(form, "host.example", NOBODY)


# --- the guard inside the connection -------------------------------------------------------

class BlockedConnect(Exception):
    """Raised by the socket guard instead of letting a test reach a non-loopback address."""


FAKE_DNS = {
    "evil.test": ["10.0.0.5"],
    "metadata.test": ["169.254.169.254"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "v6metadata.test": ["fd00:ec2::254"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],
    "mixed.test": ["93.184.216.34", "10.0.0.5"],
    "public.test": ["93.184.216.34"],
    "intranet.test": ["127.0.0.1"],
}


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_loopback


@pytest.fixture(autouse=True)
def network(monkeypatch) -> Iterator[dict[str, list]]:
    """Stub the resolver for FAKE_DNS names and record every connect, refusing all but
    loopback ones, so a guard that let something through fails the test without traffic."""
    seen: dict[str, list] = {"resolved": [], "connects": []}
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        seen["resolved"].append(host)
        if host not in FAKE_DNS:
            return real_getaddrinfo(host, port, family, type, proto, flags)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)) if ":" in ip
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in FAKE_DNS[host]]

    def connect(sock, address):
        seen["connects"].append(address[0])
        if not _is_loopback(address[0]):
            raise BlockedConnect(address[0])
        return real_connect(sock, address)

    def create_connection(address, *args, **kwargs):
        seen["connects"].append(address[0])
        raise BlockedConnect(address[0])

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    yield seen


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", "http://" + self.path.removeprefix("/redirect/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = f"host={self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def get(port: RequestsHttpPort, url: str) -> dict:
    return port.request(method="GET", url=url, query={}, headers={}, body_type="none",
                        json=None, form={}, raw=None, timeout_s=5, follow_redirects=True,
                        max_response_bytes=10_000, idempotency_key="e:n:1", credential_id=None,
                        deadline=None)


@pytest.mark.parametrize(("host", "reason"), [
    ("evil.test", "private address"),
    ("metadata.test", "cloud metadata address"),
    ("mapped.test", "loopback address embedded in IPv6"),
    ("v6metadata.test", "cloud metadata address"),
    ("nat64.test", "cloud metadata address embedded in IPv6"),
    ("mixed.test", "private address"),
])
def test_names_resolving_to_forbidden_addresses_are_refused_before_any_connect(
        network, host, reason):
    with pytest.raises(AddressRefused) as refused:
        get(RequestsHttpPort(NOBODY), f"http://{host}/latest/meta-data/")
    assert refused.value.reason == reason
    assert network["connects"] == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0177.0.0.1",
                                  "0x7f.1", "127.1", "[::ffff:127.0.0.1]", "[::1]"])
def test_every_spelling_of_loopback_is_refused(network, server_port, host):
    with pytest.raises(AddressRefused, match="loopback address"):
        get(RequestsHttpPort(NOBODY), f"http://{host}:{server_port}/")
    assert network["connects"] == []


def test_public_address_is_connected_to_by_the_number_that_was_checked(network):
    with pytest.raises(BlockedConnect):
        get(RequestsHttpPort(NOBODY), "http://public.test/")
    assert network["connects"] == ["93.184.216.34"]
    assert network["resolved"].count("public.test") == 1


def test_allowed_name_connects_and_keeps_its_host_header(network, server_port):
    result = get(RequestsHttpPort(AllowList.parse(["intranet.test"])),
                 f"http://intranet.test:{server_port}/")
    assert result["body"] == f"host=intranet.test:{server_port}"
    assert network["connects"] == ["127.0.0.1"]


def test_redirect_to_a_private_address_is_refused_without_connecting(network, server_port):
    port = RequestsHttpPort(AllowList.parse(["127.0.0.1"]))
    with pytest.raises(AddressRefused) as refused:
        get(port, f"http://127.0.0.1:{server_port}/redirect/evil.test:{server_port}/admin")
    assert (refused.value.host, refused.value.ip) == ("evil.test", "10.0.0.5")
    assert network["connects"] == ["127.0.0.1"]


def test_proxy_settings_from_the_environment_are_ignored(network, server_port, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("http_proxy", "http://10.9.9.9:3128")
    result = get(RequestsHttpPort(AllowList.parse(["127.0.0.1"])),
                 f"http://127.0.0.1:{server_port}/")
    assert result["status"] == 200
    assert network["connects"] == ["127.0.0.1"]
