"""Metrics objects (on an injected registry) and the HTTP endpoints: /metrics, /healthz,
/readyz and POST /refresh. Served from daemon threads so a slow or stuck client never delays
the refresh loop or signal handling."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

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


class Endpoints:
    """The HTTP server. ``healthy``, ``ready`` and ``refresh`` are injected callables."""

    def __init__(self, metrics: Metrics, *, healthy: Probe, ready: Probe,
                 refresh: RefreshHandler | None = None) -> None:
        self.metrics = metrics
        self.healthy = healthy
        self.ready = ready
        self.refresh = refresh
        self.server: ThreadingHTTPServer | None = None

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and serve in a daemon thread; returns the bound address (port 0 picks one)."""
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client holds only its own thread, and not for long
            server_version = "ztr"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # access logs would drown the JSON log; Prometheus scrapes every 15s

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _probe(self, ok: bool) -> None:
                self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain")

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(endpoints.metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._probe(endpoints.healthy())
                elif path == "/readyz":
                    self._probe(endpoints.ready())
                else:
                    self._send(404, b"not found\n", "text/plain")

            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != "/refresh" or endpoints.refresh is None:
                    self._send(404, b"not found\n", "text/plain")
                    return
                status, body = endpoints.refresh()
                self._send(status, json.dumps(body).encode() + b"\n", "application/json")

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        self.server = server
        thread = threading.Thread(target=server.serve_forever, name="ztr-http", daemon=True)
        thread.start()
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        """Stop serving without waiting: ``shutdown()`` blocks until serve_forever's next poll
        (up to 0.5 s), which would delay ztr's exit after the app's. The thread is a daemon."""
        server, self.server = self.server, None
        if server is None:
            return

        def close() -> None:
            server.shutdown()
            server.server_close()

        threading.Thread(target=close, name="ztr-http-stop", daemon=True).start()
