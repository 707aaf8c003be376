"""``ztr run`` (``ztr-run``): load, start the command with the secrets in its environment,
supervise it, and react to rotation."""

from __future__ import annotations

import functools

from .. import logs
from ..config import Config
from ..environ import child_environment
from ..errors import EXIT_SOFTWARE
from ..metrics import Metrics
from ..process import forbid_core_dumps
from ..reactor import AppReaction, Reactor, RestartBudget
from ..runtime import Runtime, start_resident
from ..signals import SignalInbox
from ..startup import check_pending_stop, log_disabled, settle
from ..supervisor import Exit, Supervisor


def main(config: Config, redactor: logs.Redactor, inbox: SignalInbox) -> int:
    forbid_core_dumps()
    metrics = Metrics()
    runtime = Runtime(metrics, redactor, inbox, timeout_seconds=config.timeout_seconds)

    def on_start(pid: int) -> None:
        metrics.child_up.set(1)
        logs.info("Started the app", pid=pid, command=config.command_args[0])

    def on_exit(code: int) -> None:
        metrics.child_up.set(0)
        logs.info("The app exited", exit_code=code)

    try:
        if not config.enabled:
            log_disabled(config.disabled_reason)
            supervisor = Supervisor(config.command_args, dict(config.parent_env), inbox=inbox,
                                    grace_seconds=config.grace_period_seconds, on_start=on_start,
                                    on_exit=on_exit, log=logs.info)
            settle()
            return supervisor.run()
        loader, snapshot, writers = start_resident(runtime, config, redactor, inbox)
        child_env = functools.partial(child_environment, config.parent_env,
                                      argv=config.command_args)
        env = child_env(snapshot.values)
        check_pending_stop(inbox, runtime.stop)
        # Everything a change needs exists before the watcher thread starts: none is dropped.
        supervisor = Supervisor(config.command_args, env, inbox=inbox,
                                grace_seconds=config.grace_period_seconds, on_start=on_start,
                                on_exit=on_exit, log=logs.info)
        reaction = AppReaction(
            supervisor, config.on_change, child_env=child_env,
            budget=RestartBudget(min_uptime_seconds=config.min_uptime_seconds,
                                 max_per_hour=config.max_restarts),
            verify=config.verify, verify_timeout_seconds=config.timeout_seconds,
            verify_retry_seconds=config.refresh_interval_seconds, metrics=metrics)
        reactor = Reactor(reaction, debounce_seconds=config.debounce_seconds,
                          splay_seconds=config.splay_seconds)
        runtime.start_watcher(loader, snapshot, writers, interval_seconds=config.refresh_interval_seconds,
                              max_stale_seconds=config.max_stale_seconds, reactor=reactor,
                              on_exit=functools.partial(_refresh_loop_died, supervisor))
        runtime.outputs_written = True
        runtime.start_events(region=config.region, prefix=config.prefix,
                             secret_ids=sorted({b.ref.secret_id for b in snapshot.bindings}),
                             topic_arn=config.events_topic, queue_url=config.events_queue)
        return supervisor.run()
    finally:
        runtime.shutdown()


def _refresh_loop_died(supervisor: Supervisor) -> None:
    """Never an app left running on values nobody keeps current: stop it, exit 70."""
    logs.error("The refresh loop stopped: stopping the app so the orchestrator replaces it",
               exit_code=EXIT_SOFTWARE)
    supervisor.submit(Exit(EXIT_SOFTWARE))
