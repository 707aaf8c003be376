"""The commands that load secrets: init, run and watch, and the wiring they share."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import logs
from .config import Config
from .environ import child_environment
from .errors import EXIT_TEMPFAIL, ZtrError
from .loader import Loader, Snapshot
from .outputs import DirectoryWriter, EnvFileWriter, Writer
from .retry import RetryPolicy
from .source import CallRecorder, SecretsManagerSource, make_client

if TYPE_CHECKING:
    from .metrics import Metrics
    from .supervisor import Supervisor
    from .watcher import Outcome, Watcher


def dispatch(config: Config, redactor: logs.Redactor) -> int:
    if config.command == "init":
        return init(config, redactor)
    if config.command == "run":
        return run(config, redactor)
    if config.command == "watch":
        return watch(config, redactor)
    if config.command == "check":
        from . import check

        return check.run(config)
    if config.command == "iam-policy":
        from . import policy

        return policy.run(config)
    if config.command == "plan":
        from . import plan

        return plan.run(config)
    from . import demo

    return demo.run(config)


# -- shared wiring -----------------------------------------------------------------------


def make_loader(config: Config, *, record: CallRecorder | None = None,
                stop: threading.Event | None = None) -> Loader:
    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        logs.warning("Secrets Manager call failed; retrying", attempt=attempt, error=str(exc),
                     delay_seconds=round(delay, 3))

    client = make_client(config.region, config.endpoint_url, config.timeout_seconds)
    source = SecretsManagerSource(client, region=config.region, record=record)
    return Loader(source, RetryPolicy(stop=stop, on_retry=on_retry), bindings=config.bindings,
                  prefix=config.prefix, timeout_seconds=config.timeout_seconds)


def load(loader: Loader, redactor: logs.Redactor) -> Snapshot:
    """The start-up load, logged as the seed guide's "Verify logs show" expects."""
    started = time.monotonic()
    logs.info("Loading secrets from AWS Secrets Manager", region=loader.source.region,
              endpoint=loader.source.endpoint, declared=len(loader.declared),
              **({"prefix": loader.prefix} if loader.prefix else {}))
    snapshot = loader.load()
    redactor.update(snapshot.secret_values())
    logs.info("Successfully loaded secrets from AWS Secrets Manager", loaded=snapshot.names,
              versions=snapshot.version_ids(),
              duration_seconds=round(time.monotonic() - started, 4))
    return snapshot


def make_writers(config: Config) -> list[Writer]:
    writers: list[Writer] = []
    options: dict[str, Any] = {"mode": config.file_mode, "owner": config.owner,
                               "allow_disk": config.allow_disk}
    if config.output:
        writers.append(EnvFileWriter(config.output, config.format, **options))
    if config.output_dir:
        writers.append(DirectoryWriter(config.output_dir, **options))
    for writer in writers:  # refuse a disk or unwritable target before contacting AWS
        writer.prepare()
    return writers


def write_all(writers: list[Writer], values: Mapping[str, str]) -> list[str]:
    """Write every output; returns the ones whose content changed."""
    return [writer.target for writer in writers if writer.write(values)]


class StartupSignals:
    """During the start-up load, SIGTERM/SIGINT stop the retry backoff at once (tenacity sleeps
    on ``stop``) and the command exits 128+N without starting or writing anything."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: object) -> None:
        self.signum = signum
        self.stop.set()

    def __enter__(self) -> StartupSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def exit_code(self) -> int | None:
        if self.signum is None:
            return None
        logs.info("Stopped during start-up: nothing was started", signal=signal.Signals(self.signum).name)
        return 128 + self.signum


class StartupInterruptedError(Exception):
    """SIGTERM or SIGINT arrived during the start-up load; ``code`` is 128+N."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def load_at_startup(loader: Loader, redactor: logs.Redactor, stop: threading.Event) -> Snapshot:
    """The start-up load under StartupSignals. Raises StartupInterruptedError when SIGTERM or
    SIGINT arrived, whether the load then failed or succeeded: nothing may start after it."""
    with StartupSignals(stop) as startup:
        try:
            snapshot = load(loader, redactor)
        except ZtrError:
            code = startup.exit_code()
            if code is not None:
                raise StartupInterruptedError(code) from None
            raise
        code = startup.exit_code()
    if code is not None:
        raise StartupInterruptedError(code)
    return snapshot


def load_once(config: Config, redactor: logs.Redactor) -> Snapshot:
    """The start-up load for init and run --once. Raises StartupInterruptedError on SIGTERM/SIGINT."""
    stop = threading.Event()
    return load_at_startup(make_loader(config, stop=stop), redactor, stop)


def _disabled(config: Config) -> None:
    logs.info("AWS Secrets Manager disabled: contacting no AWS endpoint, environment unchanged",
              reason=config.disabled_reason)


# -- ztr init ----------------------------------------------------------------------------


def init(config: Config, redactor: logs.Redactor) -> int:
    if not config.enabled:
        _disabled(config)
        return 0
    writers = make_writers(config)
    try:
        snapshot = load_once(config, redactor)
    except StartupInterruptedError as exc:
        return exc.code
    written = write_all(writers, snapshot.values)
    logs.info("Wrote secrets", outputs=[str(o) for o in (config.output, config.output_dir) if o],
              rewritten=bool(written), variables=snapshot.names)
    return 0


# -- refresh machinery shared by watch and run ---------------------------------------------


class Runtime:
    """Metrics, endpoints and the watcher thread around a loaded snapshot."""

    def __init__(self, config: Config, redactor: logs.Redactor, metrics: Metrics) -> None:
        self.config = config
        self.redactor = redactor
        self.metrics = metrics
        self.stop = threading.Event()
        self.watcher: Watcher | None = None
        self._endpoints: Any = None
        self._thread: threading.Thread | None = None
        self.outputs_written = False  # /readyz waits for the files, not just the load

    def ready(self) -> bool:
        """Ready after the first load has been written out, and while not stale."""
        return self.outputs_written and not (self.watcher is not None and self.watcher.stale)

    def start_endpoints(self, ready: Callable[[], bool]) -> None:
        if self.config.metrics_addr is None:
            return
        from .metrics import Endpoints

        def healthy() -> bool:
            return self.watcher is None or self.watcher.alive

        self._endpoints = Endpoints(self.metrics, healthy=healthy, ready=ready,
                                    refresh=self._refresh_now)
        try:
            host, port = self._endpoints.start(*self.config.metrics_addr)
        except OSError as exc:
            raise ZtrError(f"--metrics-addr {self.config.metrics_addr[0]}:"
                           f"{self.config.metrics_addr[1]}: cannot listen ({exc.strerror})") from exc
        logs.info("Serving /metrics, /healthz, /readyz and POST /refresh", addr=f"{host}:{port}")

    def _refresh_now(self) -> tuple[int, dict[str, Any]]:
        if self.watcher is None:
            return 503, {"ok": False, "error": "not loaded yet"}
        outcome = self.watcher.trigger(timeout=self.config.timeout_seconds + 5)
        if outcome is None:
            return 504, {"ok": False, "error": "refresh did not finish in time"}
        body = {"ok": outcome.ok, "changed": outcome.changed, "versions": outcome.versions,
                "duration_seconds": round(outcome.duration_seconds, 4)}
        if not outcome.ok:
            body.update(error=outcome.error, exit_code=outcome.exit_code)
            return 502, body
        return 200, body

    def on_loaded(self, snapshot: Snapshot, duration: float) -> None:
        self.metrics.fetch_duration_seconds.observe(duration)
        self.metrics.last_success_timestamp_seconds.set(time.time())
        self.metrics.set_versions(snapshot.version_ids())

    def start_watcher(self, loader: Loader, snapshot: Snapshot, writers: list[Writer],
                      react: Callable[[Snapshot, list[str]], float | None]) -> None:
        from .watcher import Watcher

        def on_update(new: Snapshot, changed: list[str]) -> None:
            if changed:
                self.redactor.update(new.secret_values())
            written = write_all(writers, new.values)
            if not changed:
                if written:
                    logs.warning("An output was missing or altered on disk; rewrote it",
                                 rewritten=written)
                return
            for name in changed:
                self.metrics.secret_changes_total.labels(name).inc()
            self.metrics.set_versions(new.version_ids())
            logs.info("Secret change detected", changed=changed, versions=new.version_ids(),
                      rewritten=written)

        def on_cycle(outcome: Outcome) -> None:
            self.metrics.fetch_duration_seconds.observe(outcome.duration_seconds)
            self.metrics.refresh_total.labels("success" if outcome.ok else "error").inc()
            if outcome.ok:
                self.metrics.last_success_timestamp_seconds.set(time.time())
                logs.debug("Refresh done", changed=outcome.changed,
                           duration_seconds=round(outcome.duration_seconds, 4))
            else:
                logs.warning("Refresh failed; keeping the last good values", error=outcome.error,
                             exit_code=outcome.exit_code, consecutive_failures=watcher.failures)

        watcher = Watcher(loader, snapshot, interval_seconds=self.config.refresh_interval_seconds,
                          max_stale_seconds=self.config.max_stale_seconds,
                          debounce_seconds=self.config.debounce_seconds, on_update=on_update,
                          on_react=react, on_cycle=on_cycle, stop=self.stop)
        self.watcher = watcher
        self.metrics.stale.set_function(lambda: float(watcher.stale))
        self._thread = threading.Thread(target=watcher.run, name="ztr-watcher", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        if self.watcher is not None:
            self.watcher.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._endpoints is not None:
            self._endpoints.stop()


def _start_runtime(config: Config, redactor: logs.Redactor) -> tuple[Runtime, Loader, Snapshot]:
    """Metrics and endpoints up, then the first load. Raises StartupInterruptedError on SIGTERM/SIGINT."""
    from .metrics import Metrics

    metrics = Metrics()
    runtime = Runtime(config, redactor, metrics)
    loader = make_loader(config, record=metrics.record_call, stop=runtime.stop)
    runtime.start_endpoints(ready=runtime.ready)
    started = time.monotonic()
    try:
        snapshot = load_at_startup(loader, redactor, runtime.stop)
    except (ZtrError, StartupInterruptedError):
        runtime.shutdown()
        raise
    runtime.on_loaded(snapshot, time.monotonic() - started)
    return runtime, loader, snapshot


def _start_resident(
    config: Config, redactor: logs.Redactor
) -> tuple[Runtime, Loader, Snapshot, list[Writer]]:
    """What watch and a supervising run share: outputs checked, endpoints up, first load written."""
    writers = make_writers(config)
    runtime, loader, snapshot = _start_runtime(config, redactor)
    try:
        write_all(writers, snapshot.values)
    except ZtrError:
        runtime.shutdown()
        raise
    return runtime, loader, snapshot, writers


# -- ztr watch ---------------------------------------------------------------------------


def _wait_for_stop(stop: threading.Event) -> None:
    def handler(signum: int, frame: object) -> None:
        logs.info("Stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(3600):
        pass


def watch(config: Config, redactor: logs.Redactor) -> int:
    if not config.enabled:
        _disabled(config)
        from .metrics import Metrics

        runtime = Runtime(config, redactor, Metrics())
        runtime.start_endpoints(ready=lambda: True)
        _wait_for_stop(runtime.stop)
        runtime.shutdown()
        return 0
    try:
        runtime, loader, snapshot, writers = _start_resident(config, redactor)
    except StartupInterruptedError as exc:
        return exc.code
    try:

        def react(new: Snapshot, changed: list[str]) -> float | None:
            notify(config, changed)
            return None

        runtime.start_watcher(loader, snapshot, writers, react)
        runtime.outputs_written = True
        logs.info("Wrote secrets; watching for changes", variables=snapshot.names,
                  refresh_interval_seconds=config.refresh_interval_seconds)
        _wait_for_stop(runtime.stop)
    finally:
        runtime.shutdown()
    return 0


def notify(config: Config, changed: list[str]) -> None:
    """After a rewrite: signal the process in --notify-pid-file and/or run --notify-command."""
    if config.notify_signal is not None and config.notify_pid_file:
        try:
            with open(config.notify_pid_file, encoding="ascii") as handle:
                pid = int(handle.read().strip())
            os.kill(pid, config.notify_signal)
            logs.info("Notified", pid=pid, signal=config.notify_signal.name, changed=changed)
        except (OSError, ValueError) as exc:
            logs.warning("Could not notify", pid_file=config.notify_pid_file,
                         error=type(exc).__name__)
    if config.notify_command:
        try:
            result = subprocess.run(["/bin/sh", "-c", config.notify_command], check=False,
                                    stdin=subprocess.DEVNULL, timeout=config.timeout_seconds)
            logs.info("Ran --notify-command", exit_code=result.returncode, changed=changed)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logs.warning("--notify-command failed", error=type(exc).__name__)


# -- ztr run -----------------------------------------------------------------------------


def run(config: Config, redactor: logs.Redactor) -> int:
    from . import supervisor as sup

    if not config.enabled:
        _disabled(config)
        env = dict(config.parent_env)
        if config.once:
            return _exec(config.command_args, env)
        return _supervise(config, env, None)
    if config.once:
        writers = make_writers(config)
        try:
            snapshot = load_once(config, redactor)
        except StartupInterruptedError as exc:
            return exc.code
        write_all(writers, snapshot.values)
        env = child_environment(config.parent_env, snapshot.values)
        return _exec(config.command_args, env)
    # Until the supervisor's own handlers are in place, a HUP/QUIT/USR1/USR2 must not kill ztr
    # (their default action): there is no app to forward them to yet.
    for signum in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, _held)
    try:
        runtime, loader, snapshot, writers = _start_resident(config, redactor)
    except StartupInterruptedError as exc:
        return exc.code
    try:
        env = child_environment(config.parent_env, snapshot.values)
        reactor = Reactor(config, runtime.metrics)
        runtime.start_watcher(loader, snapshot, writers, reactor.react)
        runtime.outputs_written = True
        return _supervise(config, env, reactor, runtime.metrics)
    except sup.SpawnError as exc:
        logs.error(str(exc), exit_code=exc.exit_code)
        return exc.exit_code
    finally:
        runtime.shutdown()


def _held(signum: int, frame: object) -> None:
    logs.info("Signal received before the app started: not forwarded", signal=signal.Signals(signum).name)


def _exec(argv: tuple[str, ...], env: dict[str, str]) -> int:
    from .supervisor import SpawnError, exec_replace

    logging.shutdown()
    try:
        exec_replace(argv, env)
    except SpawnError as exc:
        logs.error(str(exc), exit_code=exc.exit_code)
        return exc.exit_code
    return 0  # not reached: exec replaced this process


def _supervise(config: Config, env: dict[str, str], reactor: Reactor | None,
               metrics: Metrics | None = None) -> int:
    from .supervisor import SpawnError, Supervisor

    def on_start(pid: int) -> None:
        if metrics is not None:
            metrics.child_up.set(1)
        logs.info("Started the app", pid=pid, command=config.command_args[0])

    def on_exit(code: int) -> None:
        if metrics is not None:
            metrics.child_up.set(0)
        logs.info("The app exited", exit_code=code)

    supervisor = Supervisor(config.command_args, env, grace_seconds=config.grace_period_seconds,
                            on_start=on_start, on_exit=on_exit, log=lambda m: logs.info(m))
    if reactor is not None:
        reactor.supervisor = supervisor
    try:
        return supervisor.run()
    except SpawnError as exc:
        logs.error(str(exc), exit_code=exc.exit_code)
        return exc.exit_code


class Reactor:
    """What ``ztr run`` does about a change: verify, respect the anti-storm budget, splay, act."""

    def __init__(self, config: Config, metrics: Metrics,
                 rng: random.Random | None = None) -> None:
        from .watcher import RestartBudget

        self.config = config
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.supervisor: Supervisor | None = None
        self.budget = RestartBudget(min_uptime_seconds=config.min_uptime_seconds,
                                    max_per_hour=config.max_restarts)
        self._splayed = False

    def react(self, snapshot: Snapshot, changed: list[str]) -> float | None:
        from .supervisor import Exit, Forward, Restart

        action = self.config.on_change
        if action.action == "none" or self.supervisor is None:
            return None
        if self.config.splay_seconds > 0 and not self._splayed:
            self._splayed = True
            delay = self.rng.uniform(0, self.config.splay_seconds)
            logs.info("Change reaction splayed", delay_seconds=round(delay, 3), changed=changed)
            return delay
        try:
            env = child_environment(self.config.parent_env, snapshot.values)
        except ZtrError as exc:
            # The new values cannot reach a process: keep the running app on the old ones.
            logs.error(f"Not reacting to the change: {exc}", exit_code=exc.exit_code, changed=changed)
            self._splayed = False
            return None
        if self.config.verify and not self._verify(env, changed):
            return self.config.refresh_interval_seconds
        if action.action == "restart":
            wait = self.budget.wait_needed(self.supervisor.uptime())
            if wait > 0:
                logs.info("Restart postponed by --min-uptime / --max-restarts",
                          wait_seconds=round(wait, 3), changed=changed)
                return wait
            self.budget.record()
            self.metrics.child_restarts_total.inc()
            logs.info("Restarting the app with the new secrets", changed=changed)
            self.supervisor.submit(Restart(env))
        elif action.action == "signal" and action.signal is not None:
            logs.info("Signalling the app about the new secrets", signal=action.signal.name,
                      changed=changed)
            self.supervisor.submit(Forward(action.signal))
        elif action.action == "exit":
            logs.info("Exiting so the orchestrator replaces the container", changed=changed,
                      exit_code=EXIT_TEMPFAIL)
            self.supervisor.submit(Exit(EXIT_TEMPFAIL))
        self._splayed = False
        return None

    def _verify(self, env: dict[str, str], changed: list[str]) -> bool:
        assert self.supervisor is not None
        assert self.config.verify is not None
        code = self.supervisor.run_aside(["/bin/sh", "-c", self.config.verify], env,
                                         timeout=self.config.timeout_seconds)
        if code == 0:
            logs.info("--verify passed", changed=changed)
            return True
        self.metrics.verify_failures_total.inc()
        logs.warning("--verify failed: keeping the running app; trying again next cycle",
                     exit_code=code, changed=changed)
        return False
