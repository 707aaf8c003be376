"""What a change causes: debounce, splay, then a reaction (restart, signal or exit the app after
``--verify`` and within the restart budget; or notify another process after a rewrite).

The watcher thread drives it: ``notice`` after each change, ``due_at`` to know when to wake,
``run_due`` to act. Reactions are built before any thread starts, so no change is dropped.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from . import logs
from .errors import EXIT_TEMPFAIL, ZtrError
from .signals import name as signal_name

if TYPE_CHECKING:
    from .config import OnChange
    from .loader import Snapshot
    from .metrics import Metrics
    from .supervisor import Supervisor


class Reaction(Protocol):
    """One way of reacting: returns None when done, or seconds after which to try again."""

    def __call__(self, snapshot: Snapshot, changed: list[str]) -> float | None: ...


class Reactor:
    """Collects changed variables; the first change opens a debounce window, and one reaction
    follows per window (after a random splay, the first time, when one is set)."""

    def __init__(self, reaction: Reaction, *, debounce_seconds: float, splay_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.reaction = reaction
        self.debounce = debounce_seconds
        self.splay = splay_seconds
        self.clock = clock
        self.rng = rng or random.Random()
        self.pending: list[str] = []
        self.due_at: float | None = None
        self._splayed = False

    def notice(self, changed: Sequence[str]) -> None:
        """Variables changed: react after the debounce window. Later changes do not extend the
        window, but a reaction postponed for longer (failed --verify, restart budget) is brought
        forward."""
        if not changed:
            return
        self.pending = sorted(set(self.pending) | set(changed))
        window_end = self.clock() + self.debounce
        self.due_at = window_end if self.due_at is None else min(self.due_at, window_end)

    def run_due(self, snapshot: Snapshot) -> None:
        """React now if the window is over; ``snapshot`` holds the newest values."""
        if self.due_at is None or self.clock() < self.due_at:
            return
        changed = list(self.pending)
        if self.splay > 0 and not self._splayed:
            self._splayed = True
            delay = self.rng.uniform(0, self.splay)
            logs.info("Change reaction splayed", delay_seconds=round(delay, 3), changed=changed)
            self.due_at = self.clock() + delay
            return
        try:
            retry_after = self.reaction(snapshot, changed)
        except Exception as exc:  # noqa: BLE001 - a failed reaction must neither spin nor kill the loop
            logs.error("Reacting to a change failed; the change stays applied to the outputs",
                       error=type(exc).__name__, changed=changed)
            retry_after = None
        if retry_after is None:
            self.pending, self.due_at, self._splayed = [], None, False
        else:
            self.due_at = self.clock() + retry_after


class RestartBudget:
    """Anti-storm policy: a minimum child uptime and at most ``max_per_hour`` restarts."""

    WINDOW_SECONDS = 3600.0

    def __init__(self, *, min_uptime_seconds: float, max_per_hour: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_uptime = min_uptime_seconds
        self.max_per_hour = max_per_hour
        self.clock = clock
        self._history: deque[float] = deque()

    def wait_needed(self, uptime_seconds: float) -> float:
        """Seconds until a restart is allowed (0 when it is allowed now)."""
        now = self.clock()
        while self._history and now - self._history[0] >= self.WINDOW_SECONDS:
            self._history.popleft()
        waits = [max(0.0, self.min_uptime - uptime_seconds)]
        if self.max_per_hour and len(self._history) >= self.max_per_hour:
            waits.append(self._history[0] + self.WINDOW_SECONDS - now)
        return max(waits)

    def record(self) -> None:
        self._history.append(self.clock())


class AppReaction:
    """``ztr run``: restart, signal or exit the supervised app with the new environment."""

    def __init__(self, supervisor: Supervisor, on_change: OnChange, *,
                 child_env: Callable[[Mapping[str, str]], dict[str, str]],
                 budget: RestartBudget, verify: str | None = None,
                 verify_timeout_seconds: float = 60.0, verify_retry_seconds: float = 300.0,
                 metrics: Metrics | None = None) -> None:
        self.supervisor = supervisor
        self.on_change = on_change
        self.child_env = child_env
        self.budget = budget
        self.verify = verify
        self.verify_timeout = verify_timeout_seconds
        self.verify_retry = verify_retry_seconds
        self.metrics = metrics

    def __call__(self, snapshot: Snapshot, changed: list[str]) -> float | None:
        from .supervisor import Exit, Forward, Restart

        action = self.on_change.action
        if action == "none":
            return None
        try:
            env = self.child_env(snapshot.values)
        except ZtrError as exc:
            # The new values cannot reach a process: keep the running app on the old ones.
            logs.error(f"Not reacting to the change: {exc}", exit_code=exc.exit_code, changed=changed)
            if self.metrics is not None:
                self.metrics.reaction_failures_total.labels("environment").inc()
            return None
        if self.verify is not None and not self._verify(env, changed):
            return self.verify_retry
        if action == "restart":
            wait = self.budget.wait_needed(self.supervisor.uptime())
            if wait > 0:
                logs.info("Restart postponed by --min-uptime / --max-restarts",
                          wait_seconds=round(wait, 3), changed=changed)
                return wait
            self.budget.record()
            if self.metrics is not None:
                self.metrics.child_restarts_total.inc()
            logs.info("Restarting the app with the new secrets", changed=changed)
            self.supervisor.submit(Restart(env))
        elif action == "signal" and self.on_change.signal is not None:
            logs.info("Signalling the app about the new secrets", signal=self.on_change.signal.name,
                      changed=changed)
            self.supervisor.submit(Forward(self.on_change.signal))
        elif action == "exit":
            logs.info("Exiting so the orchestrator replaces the container", changed=changed,
                      exit_code=EXIT_TEMPFAIL)
            self.supervisor.submit(Exit(EXIT_TEMPFAIL))
        return None

    def _verify(self, env: dict[str, str], changed: list[str]) -> bool:
        # On the watcher's thread, by design: a check or a reaction must not overtake a
        # verification in flight. It is bounded by --timeout (run_aside kills it then).
        assert self.verify is not None
        code = self.supervisor.run_aside(["/bin/sh", "-c", self.verify], env,
                                         timeout=self.verify_timeout)
        if code == 0:
            logs.info("--verify passed", changed=changed)
            return True
        if self.metrics is not None:
            self.metrics.verify_failures_total.inc()
        logs.warning("--verify failed: keeping the running app; trying again next cycle",
                     exit_code=code, changed=changed)
        return False


def read_pid(path: str) -> int:
    """The PID in ``path``; raises ValueError for anything but a plain positive number."""
    with open(path, encoding="ascii") as handle:
        text = handle.read(64).strip()
    if not text.isdigit() or len(text) > 7:  # Linux PIDs stop at 4194304 (pid_max's ceiling)
        raise ValueError("not a PID")
    return int(text)


class Notifier:
    """``ztr watch``: after a rewrite, signal the process in ``--notify-pid-file`` and/or run
    ``--notify-command``."""

    def __init__(self, *, signum: int | None, pid_file: str | None, command: str | None,
                 timeout_seconds: float, metrics: Metrics | None = None) -> None:
        self.signum = signum
        self.pid_file = pid_file
        self.command = command
        self.timeout = timeout_seconds
        self.metrics = metrics

    def __call__(self, snapshot: Snapshot, changed: list[str]) -> float | None:
        if self.signum is not None and self.pid_file:
            self._signal(changed)
        if self.command:
            try:
                result = subprocess.run(["/bin/sh", "-c", self.command], check=False,
                                        stdin=subprocess.DEVNULL, timeout=self.timeout)
                logs.info("Ran --notify-command", exit_code=result.returncode, changed=changed)
            except (OSError, subprocess.TimeoutExpired) as exc:
                self._failed("command")
                logs.warning("--notify-command failed", error=type(exc).__name__)
        return None

    def _signal(self, changed: list[str]) -> None:
        assert self.signum is not None
        assert self.pid_file is not None
        try:
            pid = read_pid(self.pid_file)
        except (OSError, ValueError) as exc:
            self._failed("pid_file")
            logs.warning("Could not notify: no usable PID in --notify-pid-file",
                         pid_file=self.pid_file, error=type(exc).__name__)
            return
        # kill(0) would signal ztr's own group, kill(1) the container's init, kill(-N) a group:
        # only a real, other process is ever signalled.
        if pid <= 1 or pid == os.getpid() or pid == os.getpgrp():
            self._failed("pid_file")
            logs.warning("Could not notify: --notify-pid-file names ztr itself, its group or PID 1",
                         pid_file=self.pid_file, pid=pid)
            return
        try:
            os.kill(pid, self.signum)
        except OSError as exc:
            self._failed("signal")
            logs.warning("Could not notify", pid=pid, error=type(exc).__name__)
            return
        logs.info("Notified", pid=pid, signal=signal_name(self.signum), changed=changed)

    def _failed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.reaction_failures_total.labels(f"notify_{reason}").inc()
