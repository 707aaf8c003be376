"""Metrics objects (on an injected registry) and the HTTP endpoints: /metrics, /healthz,
/readyz and POST /refresh, served by one event-loop thread within the limits of EndpointLimits."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import resource
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from . import logs

NAMESPACE = "ztr"


class Metrics:
    """Every ztr metric. Labels carry variable names, version ids, operations and outcomes,
    never values."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r, ns = self.registry, NAMESPACE
        self.refresh_total = Counter("refresh", "Refresh cycles by result.", ["result"],
                                     namespace=ns, registry=r)
        self.api_calls_total = Counter(
            "api_calls", "Secrets Manager HTTP requests by operation and result (what AWS bills).",
            ["operation", "result"], namespace=ns, registry=r)
        self.fetch_duration_seconds = Histogram(
            "fetch_duration_seconds", "Duration of a whole load or refresh.", namespace=ns,
            registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.last_success_timestamp_seconds = Gauge(
            "last_success_timestamp_seconds", "Unix time of the last successful load or refresh.",
            namespace=ns, registry=r)
        self.secrets_loaded = Gauge("secrets_loaded", "Variables currently loaded.",
                                    namespace=ns, registry=r)
        self.secret_changes_total = Counter("secret_changes", "Detected value changes by variable.",
                                            ["name"], namespace=ns, registry=r)
        self.secret_version_info = Gauge("secret_version_info",
                                         "The version id each variable comes from (always 1).",
                                         ["name", "version_id"], namespace=ns, registry=r)
        self.stale = Gauge("stale", "1 when no refresh has succeeded within --max-stale.",
                           namespace=ns, registry=r)
        self.child_restarts_total = Counter("child_restarts", "Restarts of the app after a change.",
                                            namespace=ns, registry=r)
        self.child_up = Gauge("child_up", "1 while the supervised app runs.", namespace=ns,
                              registry=r)
        self.verify_failures_total = Counter("verify_failures", "--verify commands that failed.",
                                             namespace=ns, registry=r)
        self.secret_check_failures_total = Counter(
            "secret_check_failures", "Refresh checks of one secret that failed (last good value kept).",
            ["secret"], namespace=ns, registry=r)
        self.events_received_total = Counter(
            "events_received", "Secrets Manager events read from SQS, by result.", ["result"],
            namespace=ns, registry=r)
        self.events_up = Gauge("events_up", "1 while the event stream is connected (--events-*).",
                               namespace=ns, registry=r)
        self.event_reaction_latency_seconds = Histogram(
            "event_reaction_latency_seconds",
            "From SQS taking an event in to ztr applying the change it announced.", namespace=ns,
            registry=r, buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300))
        self.reaction_failures_total = Counter(
            "reaction_failures", "Reactions to a change that could not happen, by reason.",
            ["reason"], namespace=ns, registry=r)
        self._versions: dict[str, str] = {}
        for result in ("success", "error"):
            self.refresh_total.labels(result)

    def record_call(self, operation: str, result: str) -> None:
        self.api_calls_total.labels(operation, result).inc()

    def set_versions(self, versions: Mapping[str, str]) -> None:
        """Replace the version-info series: one per variable, the old version's removed."""
        for name, version_id in self._versions.items():
            if versions.get(name) != version_id:
                self.secret_version_info.remove(name, version_id)
        for name, version_id in versions.items():
            self.secret_version_info.labels(name, version_id).set(1)
        self._versions = dict(versions)
        self.secrets_loaded.set(len(versions))


Probe = Callable[[], bool]
RefreshHandler = Callable[[], tuple[int, dict[str, Any]]]

_READ_BYTES = 4096  # one read from a client; with h11's buffer, what a connection holds
_LINGER_SECONDS = 1.0  # after an error reply, read what the client still sends so the reply
_LINGER_BYTES = 65536  # is not lost to a reset; bounded in time and bytes
_LOG_EVERY_SECONDS = 60.0  # one line per kind of trouble a minute, however hard it is pushed


@dataclass(frozen=True)
class EndpointLimits:
    """What the endpoints' clients, hostile or not, can take from ztr (README: "Limits and
    guarantees"). A connection costs a file descriptor and a few KiB, never a thread."""

    max_connections: int = 100
    """Connections held at once, and never more than half the open-file limit. One more
    closes the connection that has waited longest on its client, so a probe always gets in."""
    request_deadline_seconds: float = 10.0
    """For a whole request to arrive (counted from the accept or the previous response, not
    per read), and again for its response to be taken; past it the connection is closed."""
    max_header_bytes: int = 8192
    """Request line and headers together; beyond it 431 and close."""
    max_headers: int = 64
    """Header lines; beyond it 431 and close."""
    max_body_bytes: int = 1024
    """Request body (POST /refresh needs none); beyond it 413 and close."""
    accept_retry_seconds: float = 1.0
    """Pause in accepting after accept() fails (out of file descriptors): no busy loop."""

    def connection_cap(self, open_files_limit: int | None = None) -> int:
        """``max_connections``, lowered to half the soft RLIMIT_NOFILE so that the rest of the
        process (AWS calls, output files, the app's pipes) keeps descriptors to work with."""
        if open_files_limit is None:
            open_files_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_files_limit == resource.RLIM_INFINITY or open_files_limit < 0:
            return self.max_connections
        return max(1, min(self.max_connections, open_files_limit // 2))


class _Reply:
    """A whole response, built before any of it is sent."""

    __slots__ = ("body", "close", "content_type", "headers", "status")

    def __init__(self, status: int, body: bytes, content_type: str = "text/plain",
                 headers: tuple[tuple[str, str], ...] = (), close: bool = False) -> None:
        self.status, self.body, self.content_type = status, body, content_type
        self.headers, self.close = headers, close

    @classmethod
    def text(cls, status: int, text: str, **extra: Any) -> _Reply:
        return cls(status, text.encode() + b"\n", **extra)

    @classmethod
    def json(cls, status: int, body: Mapping[str, Any], **extra: Any) -> _Reply:
        return cls(status, json.dumps(body).encode() + b"\n", "application/json", **extra)

    def encode(self, conn: h11.Connection, head: bool) -> bytes:
        headers = [("Content-Type", self.content_type), ("Content-Length", str(len(self.body))),
                   *self.headers]
        if self.close:
            headers.append(("Connection", "close"))
        parts = [conn.send(h11.Response(status_code=self.status, headers=headers,
                                        reason=HTTPStatus(self.status).phrase))]
        if not head:
            parts.append(conn.send(h11.Data(data=self.body)))
        parts.append(conn.send(h11.EndOfMessage()))
        return b"".join(part or b"" for part in parts)


def _error_reply(status: int) -> _Reply:
    return _Reply.text(status, HTTPStatus(status).phrase.lower(), close=True)


class _OverLimitError(Exception):
    """A request over a limit: answered with ``status`` and the connection closed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Client:
    __slots__ = ("busy", "sock", "waiting_since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.waiting_since = time.monotonic()  # since when we wait on it: its request, its read
        self.busy = False  # a handler works for it (a refresh): not a candidate for closing


class _Throttle:
    """At most one log line per message per interval, saying how many were held back."""

    def __init__(self, interval_seconds: float = _LOG_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def emit(self, log: Callable[..., None], msg: str, **fields: Any) -> None:
        now = self.clock()
        last = self._last.get(msg)
        if last is not None and now - last < self.interval_seconds:
            self._held[msg] = self._held.get(msg, 0) + 1
            return
        self._last[msg] = now
        held = self._held.pop(msg, 0)
        log(msg, **fields, **({"similar_not_logged": held} if held else {}))


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket; ``::`` takes IPv4 connections too. Raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _readable(loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
    """Wait until a connection can be accepted. Not ``loop.sock_accept``: on Python 3.11 a
    cancelled sock_accept can still accept a connection and drop it unclosed
    (python/cpython#153761), which is how stop() ends the accept loop."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(listener.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(listener.fileno())


def _run(loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass  # stop()
    except Exception as exc:  # noqa: BLE001 - a bug here: one line, not a thread traceback
        logs.error("Endpoints stopped on an unexpected error", error=type(exc).__name__)
    finally:
        loop.close()


class Endpoints:
    """The HTTP server: one asyncio loop in a daemon thread serves every connection, and a
    refresh runs in a thread of its own, one at a time. ``healthy``, ``ready`` and ``refresh``
    are injected callables; the first two must not block."""

    def __init__(self, metrics: Metrics, *, healthy: Probe, ready: Probe,
                 refresh: RefreshHandler | None = None,
                 limits: EndpointLimits | None = None) -> None:
        self.metrics = metrics
        self.healthy = healthy
        self.ready = ready
        self.refresh = refresh
        self.limits = limits if limits is not None else EndpointLimits()
        self._routes: dict[bytes, Callable[[], _Reply]] = {
            b"/metrics": self._metrics_page,
            b"/healthz": lambda: self._probe(self.healthy()),
            b"/readyz": lambda: self._probe(self.ready()),
        }
        self._clients: dict[asyncio.Task[None], _Client] = {}
        self._refreshing = False
        self._cap = self.limits.max_connections
        self._log = _Throttle()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and serve in a daemon thread; returns the bound address (port 0 picks one).
        Raises OSError when the address cannot be bound."""
        listener = _listen(host, port)
        try:
            loop = asyncio.new_event_loop()
        except BaseException:
            listener.close()
            raise
        loop.set_exception_handler(self._loop_error)
        self._cap = self.limits.connection_cap()
        self._loop, self._task = loop, loop.create_task(self._serve(listener))
        threading.Thread(target=_run, args=(loop, self._task), name="ztr-http", daemon=True).start()
        bound = listener.getsockname()
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        """Stop serving without waiting: the loop closes the listener and every connection on
        its next turn. A refresh already running finishes in its own (daemon) thread."""
        loop, task, self._loop, self._task = self._loop, self._task, None, None
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(task.cancel)

    # -- accepting -----------------------------------------------------------------------------

    async def _serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    await _readable(loop, listener)
                    continue
                except OSError as exc:
                    await self._accept_failed(exc)
                    continue
                sock.setblocking(False)
                self._admit(loop, sock)
                # Let connections closed by _admit release their descriptors before the next
                # accept (a loop of accepts that succeed never yields to the event loop).
                await asyncio.sleep(0)
        finally:
            listener.close()
            clients = list(self._clients)
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)

    async def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
            return  # that client left before it was taken; the next one may be waiting
        # Out of descriptors (EMFILE, ENFILE) or memory: the listener stays readable, so trying
        # again at once would spin. Pause; the connections already open go on being served.
        self._log.emit(logs.warning, "Endpoints cannot accept connections; pausing",
                       error=exc.strerror or type(exc).__name__,
                       retry_seconds=self.limits.accept_retry_seconds)
        await asyncio.sleep(self.limits.accept_retry_seconds)

    def _admit(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        if len(self._clients) >= self._cap:
            waiting = [(client.waiting_since, task) for task, client in self._clients.items()
                       if not client.busy]
            if not waiting:
                sock.close()
                return
            oldest = min(waiting, key=lambda pair: pair[0])[1]
            self._clients.pop(oldest)
            oldest.cancel()
            self._log.emit(logs.warning, "Endpoints at their connection limit; closing the "
                           "connections that waited longest", limit=self._cap)
        client = _Client(sock)
        task = loop.create_task(self._converse(client))
        self._clients[task] = client
        task.add_done_callback(lambda done: self._clients.pop(done, None))

    # -- one connection ------------------------------------------------------------------------

    async def _converse(self, client: _Client) -> None:
        """Requests and replies on one connection until it closes, fails a limit, or is closed."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        try:
            while True:
                client.waiting_since = time.monotonic()
                try:
                    async with asyncio.timeout(self.limits.request_deadline_seconds):
                        request = await self._receive(conn, client.sock)
                except h11.RemoteProtocolError as exc:
                    await self._refuse(conn, client, exc.error_status_hint)
                    return
                except _OverLimitError as exc:
                    await self._refuse(conn, client, exc.status)
                    return
                if request is None:
                    return
                client.busy = True
                try:
                    reply = await self._answer(request)
                finally:
                    client.busy = False
                await self._send(conn, client, reply, head=request.method == b"HEAD")
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # HTTP/1.0, "Connection: close", or a reply that closes
                conn.start_next_cycle()
        except (OSError, TimeoutError, asyncio.CancelledError, h11.ProtocolError):
            pass  # reset, past its deadline, closed for a newer client, or shutting down
        finally:
            client.sock.close()

    async def _receive(self, conn: h11.Connection, sock: socket.socket) -> h11.Request | None:
        """The next whole request (its body read and dropped), or None when the client closed."""
        request = await self._next_event(conn, sock)
        if not isinstance(request, h11.Request):
            return None
        # h11 bounds what it buffers of an unfinished head; a head that arrived whole in one
        # read is measured here (as parsed: a few bytes of spacing may go uncounted).
        size = len(request.method) + len(request.target) + 12 + sum(
            len(name) + len(value) + 4 for name, value in request.headers)
        if size > self.limits.max_header_bytes or len(request.headers) > self.limits.max_headers:
            raise _OverLimitError(431)
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.limits.max_body_bytes:
                raise _OverLimitError(413)
        received = 0
        while True:
            event = await self._next_event(conn, sock)
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > self.limits.max_body_bytes:
                    raise _OverLimitError(413)
            elif isinstance(event, h11.EndOfMessage):
                return request
            else:
                return None

    async def _next_event(self, conn: h11.Connection, sock: socket.socket) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            event = conn.next_event()  # raises RemoteProtocolError, 431 past max_header_bytes
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await loop.sock_recv(sock, _READ_BYTES))

    async def _send(self, conn: h11.Connection, client: _Client, reply: _Reply,
                    head: bool = False) -> None:
        client.waiting_since = time.monotonic()
        data = reply.encode(conn, head)
        async with asyncio.timeout(self.limits.request_deadline_seconds):
            await asyncio.get_running_loop().sock_sendall(client.sock, data)

    async def _refuse(self, conn: h11.Connection, client: _Client, status: int) -> None:
        """Answer a request over a limit, then read (and drop) what the client still sends for
        a moment, so that closing does not reset the connection before the answer is read."""
        try:
            await self._send(conn, client, _error_reply(status))
        except h11.LocalProtocolError:
            return  # too early or too late in the exchange for a reply
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_WR)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LINGER_SECONDS):
                drained = 0
                while drained < _LINGER_BYTES:
                    data = await loop.sock_recv(client.sock, _READ_BYTES)
                    if not data:
                        break
                    drained += len(data)

    # -- answers -------------------------------------------------------------------------------

    async def _answer(self, request: h11.Request) -> _Reply:
        path = request.target.split(b"?", 1)[0]
        try:
            if path == b"/refresh" and self.refresh is not None:
                if request.method != b"POST":
                    return _Reply.text(405, "method not allowed", headers=(("Allow", "POST"),))
                return await self._refresh(self.refresh)
            route = self._routes.get(path)
            if route is None:
                return _Reply.text(404, "not found")
            if request.method not in (b"GET", b"HEAD"):
                return _Reply.text(405, "method not allowed", headers=(("Allow", "GET, HEAD"),))
            return route()
        except Exception as exc:  # noqa: BLE001 - a handler's bug: one line and a 500
            self._log.emit(logs.error, "Endpoint handler failed", path=path.decode("latin-1"),
                           error=type(exc).__name__)
            return _Reply.text(500, "internal error")

    def _metrics_page(self) -> _Reply:
        return _Reply(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)

    @staticmethod
    def _probe(ok: bool) -> _Reply:
        return _Reply.text(200, "ok") if ok else _Reply.text(503, "not ready")

    async def _refresh(self, refresh: RefreshHandler) -> _Reply:
        """Run ``refresh`` in a thread of its own; while it runs, other POSTs get 429 at once,
        so a flood of them holds neither threads nor AWS calls."""
        if self._refreshing:
            return _Reply.json(429, {"ok": False, "error": "a refresh is already running"},
                               headers=(("Retry-After", "1"),))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, dict[str, Any]]] = loop.create_future()

        def settle(outcome: tuple[int, dict[str, Any]] | Exception) -> None:
            self._refreshing = False
            if done.done():
                return  # its client was closed meanwhile
            if isinstance(outcome, Exception):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)

        def work() -> None:
            outcome: tuple[int, dict[str, Any]] | Exception
            try:
                outcome = refresh()
            except Exception as exc:  # noqa: BLE001 - answered as a 500 by _answer
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop has ended: nobody is waiting
                loop.call_soon_threadsafe(settle, outcome)

        self._refreshing = True
        try:
            threading.Thread(target=work, name="ztr-http-refresh", daemon=True).start()
        except RuntimeError:  # no thread could be started
            self._refreshing = False
            return _Reply.json(503, {"ok": False, "error": "cannot start a refresh now"})
        status, body = await done
        return _Reply.json(status, body)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's own reports: one log line, never a traceback on stderr."""
        exc = context.get("exception")
        self._log.emit(logs.error, "Endpoints: unexpected error",
                       error=type(exc).__name__ if exc is not None else str(context.get("message")))
