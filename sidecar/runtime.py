"""The resident mode (``watch`` and a supervising ``run``): metrics, endpoints, the watcher
thread and the reactor, wired together around the first load."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import logs
from .errors import OutputError
from .loader import Loader, Snapshot
from .metrics import Endpoints, Metrics
from .outputs import Writer
from .reactor import Reactor
from .startup import write_all
from .watcher import Outcome, Watcher

if TYPE_CHECKING:
    from .signals import SignalInbox


class Runtime:
    """Owns the endpoints and the watcher thread. ``ready`` waits for the written outputs."""

    def __init__(self, metrics: Metrics, redactor: logs.Redactor, inbox: SignalInbox, *,
                 timeout_seconds: float) -> None:
        self.metrics = metrics
        self.redactor = redactor
        self.inbox = inbox
        self.timeout_seconds = timeout_seconds
        self.stop = threading.Event()
        self.watcher: Watcher | None = None
        self._endpoints: Endpoints | None = None
        self._thread: threading.Thread | None = None
        self.outputs_written = False

    # -- probes ----------------------------------------------------------------------------

    def ready(self) -> bool:
        """Ready after the first load has been written out, and while not stale."""
        return self.outputs_written and not (self.watcher is not None and self.watcher.stale)

    def healthy(self) -> bool:
        """The refresh loop is alive (or not started yet)."""
        return self.watcher is None or self.watcher.alive

    @property
    def watcher_died(self) -> bool:
        return self.watcher is not None and not self.watcher.alive and not self.stop.is_set()

    def start_endpoints(self, addr: tuple[str, int] | None, *, always_ready: bool = False) -> None:
        if addr is None:
            return
        self._endpoints = Endpoints(self.metrics, healthy=self.healthy,
                                    ready=(lambda: True) if always_ready else self.ready,
                                    refresh=self._refresh_now)
        try:
            host, port = self._endpoints.start(*addr)
        except OSError as exc:
            raise OutputError(f"--metrics-addr {addr[0]}:{addr[1]}: cannot listen "
                              f"({exc.strerror or exc})") from exc
        logs.info("Serving /metrics, /healthz, /readyz and POST /refresh", addr=f"{host}:{port}")

    def _refresh_now(self) -> tuple[int, dict[str, Any]]:
        if self.watcher is None:
            return 503, {"ok": False, "error": "not loaded yet"}
        outcome = self.watcher.trigger(timeout=self.timeout_seconds + 5)
        if outcome is None:
            return 504, {"ok": False, "error": "refresh did not finish in time"}
        body = {"ok": outcome.ok, "changed": outcome.changed, "versions": outcome.versions,
                "duration_seconds": round(outcome.duration_seconds, 4)}
        if not outcome.ok:
            body.update(error=outcome.error, exit_code=outcome.exit_code, failed=outcome.failed)
            return 502, body
        return 200, body

    # -- the watcher -------------------------------------------------------------------------

    def on_loaded(self, snapshot: Snapshot, duration: float) -> None:
        self.metrics.fetch_duration_seconds.observe(duration)
        self.metrics.last_success_timestamp_seconds.set(time.time())
        self.metrics.set_versions(snapshot.version_ids())

    def start_watcher(self, loader: Loader, snapshot: Snapshot, writers: list[Writer], *,
                      interval_seconds: float, max_stale_seconds: float,
                      reactor: Reactor | None,
                      on_exit: Callable[[], None] | None = None) -> Watcher:
        def on_update(new: Snapshot, changed: list[str]) -> None:
            if changed:
                self.redactor.update(new.secret_values())
            written = write_all(writers, new.values)
            # Always: a new version with the same content is still the version in use.
            self.metrics.set_versions(new.version_ids())
            if not changed:
                if written:
                    logs.warning("An output was missing or altered on disk; rewrote it",
                                 rewritten=written)
                return
            for name in changed:
                self.metrics.secret_changes_total.labels(name).inc()
            logs.info("Secret change detected", changed=changed, versions=new.version_ids(),
                      rewritten=written)

        def on_cycle(outcome: Outcome) -> None:
            self.metrics.fetch_duration_seconds.observe(outcome.duration_seconds)
            self.metrics.refresh_total.labels("success" if outcome.ok else "error").inc()
            for secret_id in outcome.failed:
                self.metrics.secret_check_failures_total.labels(secret_id).inc()
            if outcome.ok:
                self.metrics.last_success_timestamp_seconds.set(time.time())
                logs.debug("Refresh done", changed=outcome.changed,
                           duration_seconds=round(outcome.duration_seconds, 4))
            else:
                logs.warning("Refresh failed; keeping the last good values", error=outcome.error,
                             exit_code=outcome.exit_code, failed=sorted(outcome.failed),
                             consecutive_failures=watcher.failures)

        def watcher_exited() -> None:
            if on_exit is not None and not self.stop.is_set():
                on_exit()
            self.inbox.wake()

        watcher = Watcher(loader, snapshot, interval_seconds=interval_seconds,
                          max_stale_seconds=max_stale_seconds, reactor=reactor,
                          on_update=on_update, on_cycle=on_cycle, on_exit=watcher_exited,
                          stop=self.stop)
        self.watcher = watcher
        self.metrics.stale.set_function(lambda: float(watcher.stale))
        self._thread = threading.Thread(target=watcher.run, name="ztr-watcher", daemon=True)
        self._thread.start()
        return watcher

    def shutdown(self) -> None:
        self.stop.set()
        if self.watcher is not None:
            self.watcher.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._endpoints is not None:
            self._endpoints.stop()
