"""``ztr watch``: write the secrets, keep them current, serve metrics and health."""

from __future__ import annotations

from .. import logs
from ..config import Config
from ..errors import EXIT_SOFTWARE
from ..metrics import Metrics
from ..process import forbid_core_dumps
from ..reactor import Notifier, Reactor
from ..runtime import Runtime, start_resident
from ..signals import STOPPING, SignalInbox, name
from ..startup import check_pending_stop, log_disabled, settle


def main(config: Config, redactor: logs.Redactor, inbox: SignalInbox) -> int:
    forbid_core_dumps()  # no core file, and no /proc reader of the same user, gets the values
    metrics = Metrics()
    runtime = Runtime(metrics, redactor, inbox, timeout_seconds=config.timeout_seconds)
    try:
        if not config.enabled:
            log_disabled(config.disabled_reason)
            settle()
            runtime.start_endpoints(config.metrics_addr, always_ready=True)
            return _serve(runtime, inbox)
        loader, snapshot, writers = start_resident(runtime, config, redactor, inbox)
        check_pending_stop(inbox, runtime.stop)
        notifier = Notifier(signum=config.notify_signal, pid_file=config.notify_pid_file,
                            command=config.notify_command, timeout_seconds=config.timeout_seconds,
                            metrics=metrics)
        reactor = Reactor(notifier, debounce_seconds=config.debounce_seconds)
        runtime.start_watcher(loader, snapshot, writers, interval_seconds=config.refresh_interval_seconds,
                              max_stale_seconds=config.max_stale_seconds, reactor=reactor)
        runtime.outputs_written = True
        runtime.start_events(region=config.region, prefix=config.prefix,
                             secret_ids=sorted({b.ref.secret_id for b in snapshot.bindings}),
                             topic_arn=config.events_topic, queue_url=config.events_queue)
        logs.info("Wrote secrets; watching for changes", variables=snapshot.names,
                  refresh_interval_seconds=config.refresh_interval_seconds)
        return _serve(runtime, inbox)
    finally:
        runtime.shutdown()


def _serve(runtime: Runtime, inbox: SignalInbox) -> int:
    """Until SIGTERM/SIGINT: 0. If the refresh loop ever ends, /healthz already fails; exit
    non-zero so the orchestrator replaces a process that would serve stale values forever."""
    while True:
        for signum in inbox.wait(None):
            if signum in STOPPING:
                logs.info("Stopping", signal=name(signum))
                return 0
        if runtime.watcher_died:
            logs.error("The refresh loop stopped: exiting so the orchestrator replaces ztr",
                       exit_code=EXIT_SOFTWARE)
            return EXIT_SOFTWARE


