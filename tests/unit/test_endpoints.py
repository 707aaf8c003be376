"""The endpoints' HTTP behaviour and limits, in process on 127.0.0.1, and --metrics-addr parsing."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidecar import logs
from sidecar.config import parse_addr
from sidecar.errors import ConfigError
from sidecar.metrics import EndpointLimits, Endpoints, Metrics

Serve = Callable[..., tuple[Endpoints, int]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(**endpoint_kwargs)``: Endpoints on 127.0.0.1:0, stopped after the test."""
    started: list[Endpoints] = []

    def start(**kwargs: Any) -> tuple[Endpoints, int]:
        kwargs.setdefault("healthy", lambda: True)
        kwargs.setdefault("ready", lambda: True)
        endpoints = Endpoints(Metrics(), **kwargs)
        host, port = endpoints.start("127.0.0.1", 0)
        assert host == "127.0.0.1"
        started.append(endpoints)
        return endpoints, port

    yield start
    for endpoints in started:
        endpoints.stop()


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """ztr's JSON log records, captured for the test; the logger's handlers put back after."""
    saved = (list(logs.log.handlers), logs.log.level, logs.log.propagate)
    stream = io.StringIO()
    logs.setup("json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logs.log.handlers[:], logs.log.level, logs.log.propagate = saved[0], saved[1], saved[2]


def exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send ``raw`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def request(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def server_closed(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closes ``sock`` (EOF or reset), or None within ``timeout``."""
    started = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - started


# -- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "healthy", "ready", "status", "body"), [
    ("GET", "/healthz", True, False, 200, b"ok\n"),
    ("GET", "/healthz", False, True, 503, b"not ready\n"),
    ("GET", "/readyz", True, True, 200, b"ok\n"),
    ("GET", "/readyz?verbose", True, False, 503, b"not ready\n"),
    ("HEAD", "/healthz", True, True, 200, b""),
    ("GET", "/nowhere", True, True, 404, b"not found\n"),
    ("POST", "/healthz", True, True, 405, b"method not allowed\n"),
    ("DELETE", "/metrics", True, True, 405, b"method not allowed\n"),
    ("GET", "/refresh", True, True, 405, b"method not allowed\n"),
])
def test_endpoints_request_answered_by_path_and_method(
    serve: Serve, method: str, path: str, healthy: bool, ready: bool, status: int, body: bytes,
) -> None:
    _, port = serve(healthy=lambda: healthy, ready=lambda: ready, refresh=lambda: (200, {}))
    got_status, headers, got_body = request(port, method, path)
    assert (got_status, got_body) == (status, body)
    if status == 405:
        assert headers["Allow"] == ("POST" if path == "/refresh" else "GET, HEAD")


def test_endpoints_metrics_page_is_prometheus_text(serve: Serve) -> None:
    endpoints, port = serve()
    endpoints.metrics.refresh_total.labels("success").inc()
    status, headers, body = request(port, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert b'ztr_refresh_total{result="success"} 1.0' in body


def test_endpoints_refresh_answers_handler_status_and_json(serve: Serve) -> None:
    _, port = serve(refresh=lambda: (502, {"ok": False, "error": "AccessDenied", "exit_code": 77}))
    status, headers, body = request(port, "POST", "/refresh")
    assert status == 502
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"ok": False, "error": "AccessDenied", "exit_code": 77}


def test_endpoints_refresh_without_handler_is_not_found(serve: Serve) -> None:
    _, port = serve()
    assert request(port, "POST", "/refresh")[0] == 404


def test_endpoints_keep_alive_serves_requests_in_turn_on_one_connection(serve: Serve) -> None:
    _, port = serve()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for path in ("/healthz", "/readyz", "/metrics", "/healthz"):
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            assert not response.will_close
    finally:
        connection.close()


def test_endpoints_pipelined_requests_answered_in_order(serve: Serve) -> None:
    _, port = serve(healthy=lambda: False)
    reply = exchange(port, b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert reply.index(b"200 OK") < reply.index(b"503 Service Unavailable")


def test_endpoints_handler_failure_is_500_and_one_log_line(
    serve: Serve, log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    _, port = serve(healthy=broken)
    for _ in range(5):
        assert request(port, "GET", "/healthz")[0] == 500
    assert request(port, "GET", "/readyz")[0] == 200
    failures = [r for r in log_lines() if r["msg"] == "Endpoint handler failed"]
    assert [(r["path"], r["error"]) for r in failures] == [("/healthz", "RuntimeError")]


def test_endpoints_refresh_failure_is_500_and_the_next_refresh_runs(serve: Serve) -> None:
    calls = []

    def refresh() -> tuple[int, dict[str, Any]]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first one fails")
        return 200, {"ok": True}

    _, port = serve(refresh=refresh)
    assert request(port, "POST", "/refresh")[0] == 500
    assert request(port, "POST", "/refresh")[0] == 200
    assert len(calls) == 2


def test_endpoints_refresh_while_one_runs_is_429_at_once(serve: Serve) -> None:
    release = threading.Event()

    def refresh() -> tuple[int, dict[str, Any]]:
        release.wait(10)
        return 200, {"ok": True}

    _, port = serve(refresh=refresh)
    first = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        first.sendall(b"POST /refresh HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        deadline = time.monotonic() + 5
        while True:  # the first one is running once a second one is refused
            status, headers, _ = request(port, "POST", "/refresh")
            if status == 429 or time.monotonic() > deadline:
                break
        assert status == 429
        assert headers["Retry-After"] == "1"
        release.set()
        assert first.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        release.set()
        first.close()


# -- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + b"X-Many: m\r\n" * 64 + b"\r\n", 431),
    (b"GET /" + b"p" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431),
    (b"POST /refresh HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n", 413),
    (b"POST /refresh HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"200\r\n" + b"c" * 512 + b"\r\n" + b"200\r\n" + b"c" * 512 + b"\r\n" + b"1\r\nc\r\n0\r\n\r\n", 413),
    (b"garbage\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 requires Host
])
def test_endpoints_request_over_a_limit_answered_then_closed(
    serve: Serve, raw: bytes, status: int,
) -> None:
    _, port = serve(refresh=lambda: (200, {}))
    reply = exchange(port, raw)  # returns once the server has closed the connection
    assert status_of(reply) == status
    assert b"\r\nConnection: close\r\n" in reply.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def test_endpoints_headers_at_the_limits_accepted(serve: Serve) -> None:
    _, port = serve(refresh=lambda: (200, {}))
    headers = b"Host: a\r\n" + b"X-Many: m\r\n" * 62 + b"Connection: close\r\n"  # 64 lines
    assert status_of(exchange(port, b"GET /healthz HTTP/1.1\r\n" + headers + b"\r\n")) == 200
    body = b"POST /refresh HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 1024\r\n\r\n"
    assert status_of(exchange(port, body + b"x" * 1024)) == 200


def test_endpoints_trickled_request_cut_at_the_whole_request_deadline(serve: Serve) -> None:
    _, port = serve(limits=EndpointLimits(request_deadline_seconds=0.5))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
        closed = False
        while time.monotonic() - started < 3 and not closed:
            try:
                sock.sendall(b"X")  # a byte every 50 ms: no single read ever waits long
            except OSError:
                closed = True
            closed = closed or server_closed(sock, 0.05) is not None
        elapsed = time.monotonic() - started
    assert closed, "a trickled request was never cut"
    assert 0.4 <= elapsed <= 1.5, elapsed


def test_endpoints_idle_keep_alive_connection_closed_at_the_deadline(serve: Serve) -> None:
    _, port = serve(limits=EndpointLimits(request_deadline_seconds=0.5))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        elapsed = server_closed(sock, 3)
    assert elapsed is not None, "an idle connection was kept past the deadline"
    assert elapsed <= 1.5, elapsed


def test_endpoints_reply_not_taken_cut_at_the_deadline(serve: Serve) -> None:
    """A client that asks and never reads: once the socket buffers are full, the reply has
    the deadline to be taken, then the connection is closed with replies still owed."""
    _, port = serve(limits=EndpointLimits(request_deadline_seconds=0.5))
    asked = 2000
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n" * asked)
        time.sleep(2)  # the client that does not read: the subject of the test
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 20):
                data += chunk
    answered = data.count(b"HTTP/1.1 200 OK")
    assert 0 < answered < asked, answered


def test_endpoints_at_the_connection_limit_newcomer_served_oldest_closed(serve: Serve) -> None:
    _, port = serve(limits=EndpointLimits(max_connections=3))
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        for sock in held[1:]:  # the newer two are busy mid-request, so not idle for longest
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        status, _, _ = request(port, "GET", "/healthz")
        assert status == 200
        assert server_closed(held[0], 5) is not None, "the longest-waiting connection was kept"
        held[1].sendall(b"Host: a\r\n\r\n")
        assert held[1].recv(100).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize(("nofile", "cap"), [
    (1024, 100), (64, 32), (1, 1), (resource.RLIM_INFINITY, 100), (10**6, 100),
])
def test_endpoint_limits_connection_cap_is_half_the_open_files_limit(nofile: int, cap: int) -> None:
    assert EndpointLimits().connection_cap(nofile) == cap


# -- start and stop ---------------------------------------------------------------------------


def test_endpoints_start_on_a_taken_port_raises_oserror(serve: Serve) -> None:
    _, port = serve()
    with pytest.raises(OSError, match="in use"):
        Endpoints(Metrics(), healthy=lambda: True, ready=lambda: True).start("127.0.0.1", port)


def test_endpoints_start_on_an_unknown_host_raises_oserror() -> None:
    with pytest.raises(socket.gaierror):  # an OSError, as commands.py expects
        Endpoints(Metrics(), healthy=lambda: True, ready=lambda: True).start("no-such-host.invalid", 0)


def test_endpoints_stop_returns_at_once_then_the_port_closes(serve: Serve) -> None:
    endpoints, port = serve()
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        started = time.monotonic()
        endpoints.stop()
        assert time.monotonic() - started < 0.1
        assert server_closed(idle, 5) is not None
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting after stop()"
            time.sleep(0.02)
        while [t for t in threading.enumerate() if t.name == "ztr-http"]:
            assert time.monotonic() < deadline, "the server's thread outlived stop()"
            time.sleep(0.02)
    finally:
        idle.close()
    endpoints.stop()  # twice is harmless


# -- --metrics-addr ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "parsed"), [
    ("127.0.0.1:9102", ("127.0.0.1", 9102)),
    ("0.0.0.0:9102", ("0.0.0.0", 9102)),
    (":9102", ("0.0.0.0", 9102)),
    ("localhost:0", ("localhost", 0)),
    ("[::]:9102", ("::", 9102)),
    ("[::1]:9102", ("::1", 9102)),
    ("[fe80::1%eth0]:9102", ("fe80::1%eth0", 9102)),
    (" [2001:db8::7]:65535 ", ("2001:db8::7", 65535)),
    ("off", None),
    ("OFF", None),
])
def test_parse_addr_accepts_host_port_ipv6_and_off(raw: str, parsed: tuple[str, int] | None) -> None:
    assert parse_addr(raw, "--metrics-addr") == parsed


@pytest.mark.parametrize(("raw", "hint"), [
    ("::1:9102", "in brackets"),
    ("[::1]", "HOST:PORT"),
    ("[::1]9102", "HOST:PORT"),
    ("[]:9102", "not an IPv6 address"),
    ("[127.0.0.1]:9102", "not an IPv6 address"),
    ("[::1:9102", "not an IPv6 address"),
    ("::1]:9102", "not an IPv6 address"),
    ("[nope]:9102", "not an IPv6 address"),
    ("127.0.0.1:99999", "HOST:PORT"),
    ("127.0.0.1:", "HOST:PORT"),
    ("127.0.0.1:\u0663", "HOST:PORT"),  # an Arabic-Indic digit is a digit to str.isdigit
    ("9102", "HOST:PORT"),
])
def test_parse_addr_rejects_ambiguous_or_malformed(raw: str, hint: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-addr") as caught:
        parse_addr(raw, "--metrics-addr")
    assert hint in str(caught.value)


def test_endpoints_listen_on_an_ipv6_address_from_parse_addr() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as check:
            check.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    parsed = parse_addr("[::1]:0", "--metrics-addr")
    assert parsed is not None
    endpoints = Endpoints(Metrics(), healthy=lambda: True, ready=lambda: True)
    host, port = endpoints.start(*parsed)
    try:
        assert host == "::1"
        with contextlib.closing(http.client.HTTPConnection("::1", port, timeout=5)) as connection:
            connection.request("GET", "/healthz")
            assert connection.getresponse().status == 200
    finally:
        endpoints.stop()
