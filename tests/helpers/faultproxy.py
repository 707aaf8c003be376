"""A fault-injecting HTTP reverse proxy in front of the moto server (stdlib only).

Tests point ztr at ``proxy.url`` instead of moto, count the API calls that pass through
(by ``X-Amz-Target`` operation) and make the next N calls fail the way AWS can and moto
cannot: throttling, 5xx, a reset connection, a truncated or malformed body, a slow answer,
access denied. Point ztr at it with ``AWS_ENDPOINT_URL_SECRETS_MANAGER=proxy.url``.

The root conftest registers this module as a plugin (``pytest_plugins``), so any test can
ask for the ``fault_proxy`` fixture by name.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

FAULT_KINDS = ("throttle", "500", "reset", "truncated", "slow", "malformed", "denied",
               "decrypt", "invalid", "notfound", "deleted")
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length",
})
_ERROR_BODIES = {
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "500": (500, "InternalServiceError", "An error occurred on the server side."),
    "denied": (400, "AccessDeniedException",
               "User: arn:aws:iam::123456789012:role/app is not authorized to perform this action"),
    "decrypt": (400, "DecryptionFailure",
                "Secrets Manager can't decrypt the protected secret text using the provided KMS key."),
    "invalid": (400, "InvalidParameterException", "You provided an invalid value for a parameter."),
    "notfound": (400, "ResourceNotFoundException", "Secrets Manager can't find the specified secret."),
    "deleted": (400, "InvalidRequestException",
                "You can't perform this operation on the secret because it was marked for deletion."),
}


@dataclass
class _Fault:
    remaining: int
    kind: str
    operations: frozenset[str] | None

    def applies_to(self, operation: str) -> bool:
        return self.remaining > 0 and (self.operations is None or operation in self.operations)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    proxy: FaultProxy

    def verify_request(self, request: object, client_address: object) -> bool:
        # Down: the connection is accepted and closed at once, before a byte is read.
        return not self.proxy.down


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects from AWS
    # Headers and body go out in separate writes: with Nagle on, each answer waited ~40 ms for
    # the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if proxy.down:
            self._abort()
            return
        target = self.headers.get("X-Amz-Target", "")
        operation = target.rpartition(".")[2] if target else ""
        kind = proxy._record(operation)
        if proxy.latency_seconds:
            proxy._stopping.wait(proxy.latency_seconds)
        if kind is None:
            self._forward(body)
        elif kind == "reset":
            self._abort(partial=b"HTTP/1.1 20")  # the status line never completes
        elif kind == "truncated":
            # The headers promise a body that never fully arrives.
            self._abort(partial=b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\n"
                                b"Content-Length: 400\r\n\r\n{\"Name\": \"trunc")
        elif kind == "slow":
            proxy._stopping.wait(proxy.slow_seconds)
            self._abort()
        elif kind == "malformed":
            self._reply(200, b"<html>this is not JSON</html>", "application/x-amz-json-1.1")
        else:
            status, code, message = _ERROR_BODIES[kind]
            payload = json.dumps({"__type": code, "message": message}).encode()
            self._reply(status, payload, "application/x-amz-json-1.1")

    def _forward(self, body: bytes) -> None:
        upstream = self.server.proxy._upstream
        conn = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port or 80,
                                          timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() not in ("server", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self._abort()
        finally:
            conn.close()

    def _reply(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("x-amzn-RequestId", "00000000-fault-proxy")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _abort(self, partial: bytes = b"") -> None:
        """Close the connection: after a few bytes of a response, or before any."""
        try:
            if partial:
                self.wfile.write(partial)
                self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True


class FaultProxy:
    """A reverse proxy on 127.0.0.1:0 that counts calls and injects faults on demand."""

    def __init__(self, upstream: str) -> None:
        self._upstream = urllib.parse.urlsplit(upstream)
        self.url = ""
        self.latency_seconds = 0.0
        self.slow_seconds = 15.0  # longer than ztr's read timeout (at most 10 s)
        self.down = False
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def calls(self, operation: str | None = None) -> int:
        """Requests seen (faulted ones included), for one operation or all."""
        with self._lock:
            return self._counts[operation] if operation else sum(self._counts.values())

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    def fail_next(self, n: int, kind: str, operations: set[str] | None = None) -> None:
        """Make the next ``n`` requests (for ``operations``, or any) fail as ``kind``:

        throttle (400 ThrottlingException), 500 (InternalServiceError), reset (the status line
        never completes), truncated (headers, then half a body), slow (no answer for
        ``slow_seconds``), malformed (200, not JSON), denied (AccessDeniedException), decrypt
        (DecryptionFailure), invalid (InvalidParameterException), notfound
        (ResourceNotFoundException), deleted (InvalidRequestException: marked for deletion).
        Faults queue in call order; each request takes the first one that applies to it.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
        with self._lock:
            self._faults.append(_Fault(n, kind, frozenset(operations) if operations else None))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_down(self, down: bool) -> None:
        """True: every connection is closed as soon as it is accepted (unreachable endpoint)."""
        self.down = down

    def _record(self, operation: str) -> str | None:
        """Count one request; return the fault it should suffer, if any."""
        with self._lock:
            self._counts[operation] += 1
            for fault in self._faults:
                if fault.applies_to(operation):
                    fault.remaining -= 1
                    return fault.kind
        return None


@pytest.fixture
def fault_proxy(endpoint: str) -> Iterator[FaultProxy]:
    """A started FaultProxy in front of this test's (freshly reset) moto server."""
    proxy = FaultProxy(endpoint)
    proxy.start()
    yield proxy
    proxy.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until true or ``timeout``: synchronisation without a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
