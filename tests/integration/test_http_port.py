"""RequestsHttpPort against a real HTTP server on 127.0.0.1 (the only address ever contacted).

The server answers by path: /echo (the request as JSON), /text, /badjson, /status/<n>,
/flaky/<key>/<n> (503 n times, then 200), /busy/<key>/<retry-after> (429 once, then 200),
/bytes/<n> and /stream/<n> (n bytes, with and without Content-Length), /sleep/<s>,
/redirect?to=<path>, /loop. ``hits`` counts requests per path.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.engine.errors import NodeError
from app.services.http_port import RequestsHttpPort
from app.services.ssrf import AddressRefused, AllowList

TOKEN = "Bearer s3cr3t-t0ken-value"
QUERY_SECRET = "qu3ry-s3cr3t"


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()

    def hit(self, path: str) -> int:
        with self.lock:
            self.hits[path] += 1
            return self.hits[path]

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeout, size limit) is what some tests are about


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, body: bytes | str | dict = b"", content_type: str = "text/plain",
              headers: dict[str, str] | None = None, length: bool = True) -> None:
        if isinstance(body, dict):
            body, content_type = json.dumps(body), "application/json"
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        count = self.server.hit(url.path)
        size = int(self.headers.get("Content-Length") or 0)
        sent = self.rfile.read(size).decode() if size else None
        route = parts[0]
        if route == "echo":
            self.reply(200, {"method": self.command, "path": url.path,
                             "query": parse_qs(url.query),
                             "headers": {k.lower(): v for k, v in self.headers.items()},
                             "body": sent})
        elif route == "text":
            self.reply(200, "héllo wörld", "text/plain; charset=utf-8")
        elif route == "badjson":
            self.reply(200, "{not json", "application/json")
        elif route == "status":
            self.reply(int(parts[1]), {"error": "nope"})
        elif route == "flaky":
            self.reply(503 if count <= int(parts[2]) else 200, {"hit": count})
        elif route == "busy":
            retry_after = parts[2] if parts[2] != "date" else format_datetime(
                datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
            if count == 1:
                self.reply(429, {"error": "slow down"}, headers={"Retry-After": retry_after})
            else:
                self.reply(200, {"hit": count})
        elif route in {"bytes", "stream"}:
            self.reply(200, b"x" * int(parts[1]), length=route == "bytes")
        elif route == "sleep":
            time.sleep(float(parts[1]))
            self.reply(200, "awake")
        elif route == "redirect":
            self.reply(302, headers={"Location": parse_qs(url.query)["to"][0]})
        elif route == "loop":
            self.reply(302, headers={"Location": f"/loop/{count}"})
        else:
            self.reply(404, "no route")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    server = Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch) -> None:
    """Fail any test that would connect anywhere but loopback, before a packet leaves."""
    real_connect = socket.socket.connect

    def connect(sock, address):
        if not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            raise AssertionError(f"test tried to connect to {address[0]}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def port(sleeps) -> Iterator[RequestsHttpPort]:
    """Allowed to reach the test server; backoff waits are recorded, not slept."""
    port = RequestsHttpPort(AllowList.parse(["127.0.0.1"]), backoff_s=0.01, sleep=sleeps.append)
    yield port
    port.close()


def call(port: RequestsHttpPort, url: str, **params) -> dict:
    """port.request with the http.request node's defaults."""
    base = dict(method="GET", query={}, headers={}, body_type="none", json=None, form={},
                raw=None, timeout_s=5, follow_redirects=True, max_response_bytes=100_000,
                idempotency_key="exec-1:post:1", credential_id=None, deadline=None)
    return port.request(url=url, **{**base, **params})


def at(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_get_sends_query_headers_and_idempotency_key(port, server):
    result = call(port, at(server, "/echo?fixed=1"), query={"q": "a b", "n": "2"},
                  headers={"X-Trace": "t-1", "idempotency-key": "user-chosen"})
    assert result["status"] == 200
    assert result["headers"]["content-type"] == "application/json"
    echo = result["body"]
    assert echo["method"] == "GET"
    assert echo["query"] == {"fixed": ["1"], "q": ["a b"], "n": ["2"]}
    assert echo["headers"]["x-trace"] == "t-1"
    assert echo["headers"]["idempotency-key"] == "exec-1:post:1"
    assert echo["body"] is None


@pytest.mark.parametrize(("body_type", "params", "content_type", "sent"), [
    ("json", {"json": {"total": 25.0, "tags": ["a"]}}, "application/json",
     '{"total": 25.0, "tags": ["a"]}'),
    ("form", {"form": {"email": "a@b.com", "n": "1 2"}}, "application/x-www-form-urlencoded",
     "email=a%40b.com&n=1+2"),
    ("raw", {"raw": "plain text ✓"}, "text/plain; charset=utf-8", "plain text ✓"),
    ("raw", {"raw": "<a/>", "headers": {"Content-Type": "application/xml"}}, "application/xml",
     "<a/>"),
    ("none", {"json": {"ignored": True}}, None, None),
])
def test_post_bodies(port, server, body_type, params, content_type, sent):
    echo = call(port, at(server, "/echo"), method="POST", body_type=body_type, **params)["body"]
    assert echo["method"] == "POST"
    assert echo["headers"].get("content-type") == content_type
    assert echo["body"] == sent


def test_json_body_is_parsed_and_anything_else_is_text(port, server):
    assert call(port, at(server, "/text"))["body"] == "héllo wörld"
    assert call(port, at(server, "/badjson"))["body"] == "{not json"
    assert call(port, at(server, "/status/200"))["body"] == {"error": "nope"}


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_4xx_is_a_result_not_an_error(port, server, sleeps, status):
    result = call(port, at(server, f"/status/{status}"))
    assert (result["status"], result["body"]) == (status, {"error": "nope"})
    assert server.hits[f"/status/{status}"] == 1
    assert sleeps == []


def test_503_then_200_is_retried(port, server, sleeps):
    result = call(port, at(server, "/flaky/a/2"))
    assert result == {"status": 200, "headers": result["headers"], "body": {"hit": 3}}
    assert server.hits["/flaky/a/2"] == 3
    assert len(sleeps) == 2 and 0.01 <= sleeps[0] < sleeps[1]  # exponential


def test_5xx_still_failing_after_three_attempts_is_an_error(port, server):
    with pytest.raises(NodeError, match=r"HTTP 503 after 3 attempts"):
        call(port, at(server, "/flaky/b/99"))
    assert server.hits["/flaky/b/99"] == 3


def test_429_waits_as_long_as_retry_after_says(port, server, sleeps):
    assert call(port, at(server, "/busy/a/1"))["status"] == 200
    assert sleeps == [1.0]
    assert server.hits["/busy/a/1"] == 2


def test_429_retry_after_as_an_http_date(port, server, sleeps):
    assert call(port, at(server, "/busy/b/date"))["status"] == 200
    assert len(sleeps) == 1 and 0.5 < sleeps[0] <= 2.0


def test_429_retry_after_really_waits(server):
    port = RequestsHttpPort(AllowList.parse(["127.0.0.1"]))
    started = time.monotonic()
    assert call(port, at(server, "/busy/c/1"))["status"] == 200
    assert time.monotonic() - started >= 1.0
    port.close()


def test_retry_after_past_the_deadline_gives_up_at_once(port, server, sleeps):
    deadline = datetime.now(UTC) + timedelta(seconds=0.5)
    with pytest.raises(NodeError, match=r"HTTP 429 after 1 attempt$"):
        call(port, at(server, "/busy/d/1"), deadline=deadline)
    assert sleeps == []
    assert server.hits["/busy/d/1"] == 1


def test_response_size_limit(port, server):
    assert len(call(port, at(server, "/bytes/1000"), max_response_bytes=1000)["body"]) == 1000
    for path in ("/bytes/200000", "/stream/200000"):
        with pytest.raises(NodeError, match="response larger than 1000 bytes"):
            call(port, at(server, path), max_response_bytes=1000)


def test_timeout(port, server):
    started = time.monotonic()
    with pytest.raises(NodeError, match=r"timed out after 0\.3 s"):
        call(port, at(server, "/sleep/2"), timeout_s=0.3)
    assert time.monotonic() - started < 1.5
    assert server.hits["/sleep/2"] == 1  # a read timeout is not retried


def test_deadline_shortens_the_timeout(port, server):
    started = time.monotonic()
    with pytest.raises(NodeError, match="timed out"):
        call(port, at(server, "/sleep/1.5"), timeout_s=30,
             deadline=datetime.now(UTC) + timedelta(seconds=0.3))
    assert time.monotonic() - started < 1.2


def test_deadline_already_passed_sends_nothing(port, server):
    with pytest.raises(NodeError, match="deadline passed"):
        call(port, at(server, "/echo/late"), deadline=datetime.now(UTC) - timedelta(seconds=1))
    assert server.hits["/echo/late"] == 0


def test_redirect_followed_or_not(port, server):
    followed = call(port, at(server, "/redirect?to=/echo/landed"))
    assert (followed["status"], followed["body"]["path"]) == (200, "/echo/landed")
    kept = call(port, at(server, "/redirect?to=/echo/landed"), follow_redirects=False)
    assert (kept["status"], kept["headers"]["location"]) == (302, "/echo/landed")
    with pytest.raises(NodeError, match="more than 5 redirects"):
        call(port, at(server, "/loop"))


def test_loopback_is_refused_without_an_allow_list(server):
    port = RequestsHttpPort(AllowList.parse([]))
    with pytest.raises(AddressRefused, match=r"refused 127\.0\.0\.1 \(127\.0\.0\.1\): loopback"):
        call(port, at(server, "/echo/refused"))
    assert server.hits["/echo/refused"] == 0


def test_connection_refused_is_retried_then_an_error(port, sleeps):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(NodeError, match="connection refused after 3 attempts"):
        call(port, f"http://127.0.0.1:{closed}/x")
    assert len(sleeps) == 2


def test_the_process_wide_port_never_takes_a_credential_id(port, server):
    """A run's port (credentials.HttpWithCredentials) resolves the credential; the shared
    port refuses an unresolved id rather than send the request without it."""
    with pytest.raises(NodeError, match="the credential was not resolved for this run"):
        call(port, at(server, "/echo/cred"), credential_id="c-1")
    assert server.hits["/echo/cred"] == 0


def test_errors_never_show_header_values_or_the_query(port, server):
    secret = {"headers": {"Authorization": TOKEN, "X-Api-Key": TOKEN},
              "query": {"api_key": QUERY_SECRET}}
    failures = [
        lambda: call(port, at(server, f"/flaky/s/99?token={QUERY_SECRET}"), **secret),
        lambda: call(port, at(server, f"/sleep/1?token={QUERY_SECRET}"), timeout_s=0.2, **secret),
        lambda: call(port, at(server, f"/stream/5000?token={QUERY_SECRET}"),
                     max_response_bytes=10, **secret),
        lambda: call(RequestsHttpPort(AllowList()), at(server, f"/x?token={QUERY_SECRET}"),
                     **secret),
        lambda: call(port, f"http://user:{QUERY_SECRET}@127.0.0.1:1/x?t={QUERY_SECRET}",
                     **secret),
    ]
    for fail in failures:
        with pytest.raises(NodeError) as error:
            fail()
        message = str(error.value)
        assert QUERY_SECRET not in message and "s3cr3t-t0ken" not in message, message
    assert str(error.value).startswith("http.request GET http://127.0.0.1:1/x: ")


def test_concurrent_requests_from_many_threads(port, server):
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: call(port, at(server, f"/echo/{i}")), range(32)))
    assert [r["body"]["path"] for r in results] == [f"/echo/{i}" for i in range(32)]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[Server, str]]:
    """The same server over TLS, with a self-signed certificate for the name ``localhost``
    only (not 127.0.0.1), and the path of that certificate to trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    server = Server()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, str(folder / "cert.pem")
    server.shutdown()
    server.server_close()


def test_tls_checks_the_certificate_against_the_name_not_the_address(tls_server):
    server, ca = tls_server

    def trusting_session() -> requests.Session:
        session = requests.Session()
        session.verify = ca
        return session

    number = server.server_address[1]
    port = RequestsHttpPort(AllowList.parse(["localhost", "127.0.0.1"]),
                            session_factory=trusting_session)
    result = call(port, f"https://localhost:{number}/echo/tls")
    assert result["body"]["headers"]["host"] == f"localhost:{number}"
    with pytest.raises(NodeError, match=r"TLS failed \(CERTIFICATE_VERIFY_FAILED\)"):
        call(port, f"https://127.0.0.1:{number}/echo/tls")
    with pytest.raises(AddressRefused, match="loopback"):
        call(RequestsHttpPort(AllowList(), session_factory=trusting_session),
             f"https://localhost:{number}/echo/refused")
    assert server.hits["/echo/refused"] == 0
    port.close()
