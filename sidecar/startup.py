"""The phases every loading command shares: build the loader and the writers, and the first load.

The first load runs in a worker thread while the main thread reads the signal inbox, so a
SIGTERM or SIGINT ends start-up at once, even while a connection hangs in botocore's read.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from . import logs, signals
from .config import Config
from .errors import StartupInterruptedError
from .loader import Loader, Snapshot
from .outputs import DirectoryWriter, EnvFileWriter, Writer
from .retry import RetryPolicy
from .source import CallRecorder, SecretsManagerSource, make_client

if TYPE_CHECKING:
    from .signals import SignalInbox


def make_loader(config: Config, *, record: CallRecorder | None = None,
                stop: threading.Event | None = None) -> Loader:
    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        logs.warning("Secrets Manager call failed; retrying", attempt=attempt, error=str(exc),
                     delay_seconds=round(delay, 3))

    client = make_client(config.region, config.endpoint_url, config.timeout_seconds)
    source = SecretsManagerSource(client, region=config.region, record=record)
    return Loader(source, RetryPolicy(stop=stop, on_retry=on_retry), bindings=config.bindings,
                  prefix=config.prefix, timeout_seconds=config.timeout_seconds)


def make_writers(config: Config) -> list[Writer]:
    """The outputs, checked (tmpfs, writable) before any AWS call."""
    writers: list[Writer] = []
    if config.output:
        writers.append(EnvFileWriter(config.output, config.format, mode=config.file_mode,
                                     owner=config.owner, allow_disk=config.allow_disk))
    if config.output_dir:
        writers.append(DirectoryWriter(config.output_dir, mode=config.file_mode,
                                       owner=config.owner, allow_disk=config.allow_disk))
    for writer in writers:
        writer.prepare()
    return writers


def write_all(writers: list[Writer], values: Mapping[str, str]) -> list[str]:
    """Write every output; returns the ones whose content changed."""
    return [writer.target for writer in writers if writer.write(values)]


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


def first_load(loader: Loader, redactor: logs.Redactor, inbox: SignalInbox,
               stop: threading.Event) -> Snapshot:
    """The start-up load in a worker thread, the main thread reading ``inbox`` meanwhile.

    Raises StartupInterruptedError on SIGTERM/SIGINT (at once: the worker is abandoned, and
    ``stop`` ends its retries), whether the load would have failed or succeeded; otherwise
    returns the snapshot or raises the load's own error.
    """
    outcome: dict[str, Snapshot | BaseException] = {}

    def work() -> None:
        try:
            outcome["snapshot"] = load(loader, redactor)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as it is
            outcome["error"] = exc
        finally:
            inbox.wake()

    worker = threading.Thread(target=work, name="ztr-load", daemon=True)
    worker.start()
    while True:
        for signum in inbox.wait(None):
            check_stop(signum, stop)
        if outcome:
            break
    check_pending_stop(inbox, stop)
    result = outcome.get("snapshot", outcome.get("error"))
    if isinstance(result, BaseException):
        raise result
    assert isinstance(result, Snapshot)
    return result


def check_stop(signum: int, stop: threading.Event) -> None:
    """Before the app runs: SIGTERM/SIGINT end start-up; other signals have nobody to go to."""
    if signum in signals.STOPPING:
        stop.set()
        raise StartupInterruptedError(signum, signals.name(signum))
    if signum != signal.SIGCHLD:
        logs.info("Signal received before the app started: not forwarded",
                  signal=signals.name(signum))


def check_pending_stop(inbox: SignalInbox, stop: threading.Event) -> None:
    """Honour a stop that arrived while the main thread was busy (writing outputs)."""
    for signum in inbox.take():
        check_stop(signum, stop)


def settle() -> None:
    """The imports and the client are done, in a command that stays running: collect cyclic
    garbage again, before anything that serves clients or retries runs.

    The console scripts paused the collector (``sidecar.launch``). What is alive now lives until
    exit, so it is frozen out of the collector's sight (``gc.freeze``) rather than walked again
    at every full collection. No collection first: imports leave a few hundred cyclic objects,
    and one full pass over everything would cost tens of milliseconds. Call it before the
    endpoints start: whatever exists at the freeze is kept for good.
    A no-op where the collector was never paused (ztr used as a library, the tests)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def log_disabled(reason: str) -> None:
    logs.info("AWS Secrets Manager disabled: contacting no AWS endpoint, environment unchanged",
              reason=reason)
