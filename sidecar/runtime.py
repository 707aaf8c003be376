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
from .startup import first_load, make_loader, make_writers, settle, write_all
from .watcher import Outcome, Watcher

if TYPE_CHECKING:
    from .config import Config
    from .events import Hint
    from .eventstream import EventStream
    from .signals import SignalInbox


_EVENTS_CLOSE_SECONDS = 5.0


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
        self._events: EventStream | None = None
        self._event_since: float | None = None  # when the oldest event not yet checked arrived
        self._event_lock = threading.Lock()
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
            host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            raise OutputError(f"--metrics-addr {host}:{addr[1]}: cannot listen "
                              f"({exc.strerror or exc})") from exc
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address in brackets
        logs.info("Serving /metrics, /healthz, /readyz and POST /refresh", addr=f"{shown}:{port}")

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
            with self._event_lock:
                since, self._event_since = self._event_since, None
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
            if since is not None:
                self.metrics.event_reaction_latency_seconds.observe(max(0.0, time.time() - since))
            logs.info("Secret change detected", changed=changed, versions=new.version_ids(),
                      rewritten=written, **({"after_event": True} if since is not None else {}))

        def on_cycle(outcome: Outcome) -> None:
            if not outcome.ok:
                with self._event_lock:  # a failed check: the event's latency is not measurable
                    self._event_since = None
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
                             consecutive_failures=watcher.failures, stale=watcher.stale_secrets())

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

    # -- push rotation -----------------------------------------------------------------------

    def start_events(self, *, region: str, secret_ids: list[str], prefix: str | None,
                     topic_arn: str | None, queue_url: str | None) -> None:
        """Read Secrets Manager's events (``--events-topic`` / ``--events-queue``) and check
        the secrets they name now. Failures only warn: polling stays the floor."""
        if topic_arn is None and queue_url is None:
            return
        from .events import Matcher, queue_region
        from .eventstream import EventStream, make_clients

        where = (queue_region(queue_url) if queue_url else None) or region
        sqs, sns = make_clients(where, topic_arn=topic_arn, record=self.metrics.record_call)
        for result in ("matched", "ignored", "duplicate", "out_of_order", "malformed"):
            self.metrics.events_received_total.labels(result)
        self._events = EventStream(
            sqs=sqs, sns=sns, topic_arn=topic_arn, queue_url=queue_url,
            matcher=Matcher(secret_ids, [prefix] if prefix else [], region=region),
            on_hint=self._on_hint,
            on_result=lambda result: self.metrics.events_received_total.labels(result).inc(),
            on_state=lambda up: self.metrics.events_up.set(1 if up else 0))
        self._events.start()
        logs.info("Listening for Secrets Manager events", topic=topic_arn, queue=queue_url)

    def _on_hint(self, secret_ids: set[str], hint: Hint) -> None:
        """An event named these secrets: check the ones whose version in use it does not
        already confirm (that costs no call), through the watcher's usual path."""
        watcher = self.watcher
        if watcher is None:
            return
        in_use = watcher.snapshot.versions
        stale = set()
        for secret_id in secret_ids:
            keys = [key for key in in_use if key.secret_id == secret_id and key.version is None]
            confirmed = hint.version_id is not None and keys and all(
                (not hint.labels or key.tracked_stage in hint.labels)
                and (version := in_use[key]) is not None and version.version_id == hint.version_id
                for key in keys)
            if not confirmed:
                stale.add(secret_id)
        if not stale:
            logs.debug("Event about the version already in use: nothing to check")
            return
        arrived = hint.queued_time or hint.received_time or time.time()
        with self._event_lock:
            if self._event_since is None or arrived < self._event_since:
                self._event_since = arrived
        watcher.hint(stale)

    def shutdown(self) -> None:
        self.stop.set()
        if self.watcher is not None:
            self.watcher.shutdown()
        if self._events is not None:
            # Unsubscribe and delete this process's queue, but never hold up the exit for it
            # (AWS unreachable): an orphaned queue is swept by the other processes.
            closer = threading.Thread(target=self._events.close, name="ztr-events-close",
                                      daemon=True)
            closer.start()
            closer.join(_EVENTS_CLOSE_SECONDS)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._endpoints is not None:
            self._endpoints.stop()


def start_resident(runtime: Runtime, config: Config, redactor: logs.Redactor,
          inbox: SignalInbox) -> tuple[Loader, Snapshot, list[Writer]]:
    """What ``watch`` and a supervising ``run`` share: outputs checked, endpoints up, the first
    load (interruptible) and the files written.

    The collector resumes once the client exists, before the endpoints serve anyone and the
    first load retries: what a client or a failed attempt leaves must stay collectable, and a
    freeze after them would keep it for the process's life."""
    writers = make_writers(config)
    loader = make_loader(config, record=runtime.metrics.record_call, stop=runtime.stop)
    settle()
    runtime.start_endpoints(config.metrics_addr)
    started = time.monotonic()
    snapshot = first_load(loader, redactor, inbox, runtime.stop)
    runtime.on_loaded(snapshot, time.monotonic() - started)
    write_all(writers, snapshot.values)
    return loader, snapshot, writers
