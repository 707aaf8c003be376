"""The child process: start, forward signals, reap zombies, stop with a grace period, exit status.

Knows nothing of AWS. Signals arrive through the process's ``SignalInbox`` (handlers installed
once, that only record); one loop reads it, forwards, reaps and acts, like dumb-init's sigwait
loop and tini's sigtimedwait + reap_zombies.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, SpawnError
from .process import ALL_SIGNALS, become_subreaper, cannot_execute, default_signals, resolve_command
from .signals import JOB_CONTROL, STOPPING, SignalInbox
from .signals import name as signal_name

# Members of the child's group that are not ztr's children send no SIGCHLD when they die:
# while waiting for them, look this often.
_SETTLE_POLL_SECONDS = 0.05
_EXEC_REPORT_SECONDS = 10.0  # how long a forked child may take to exec before it counts as started
_MAX_WAIT_SECONDS = 3600.0  # epoll refuses waits over 2**31 ms (~24.8 days): wake up and re-check


def exit_code_of(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for death by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


_QUIET = [  # stdin, stdout and stderr of a command whose output may name what it checked
    (os.POSIX_SPAWN_OPEN, fd, os.devnull, flags, 0)
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY))
]


def spawn(argv: Sequence[str], env: Mapping[str, str], *, quiet: bool = False) -> int:
    """Start ``argv`` in its own process group, with default signal dispositions and an empty
    signal mask (CPython ignores SIGPIPE; exec would otherwise keep that).

    glibc's posix_spawn leaves its two internal signals (32, 33) ignored in the child and
    refuses to reset them; every libc and runtime installs its own handlers for those.
    ``quiet`` connects its standard streams to /dev/null (``--verify``: a failed login check
    may print the connection string it tried). Raises SpawnError (127 / 126).
    """
    executable = resolve_command(argv[0], env)
    try:
        return os.posix_spawn(
            executable, list(argv), dict(env),
            setpgroup=0, setsigdef=ALL_SIGNALS, setsigmask=(),
            file_actions=_QUIET if quiet else None,
        )
    except PermissionError as exc:
        raise SpawnError(f"{argv[0]}: not executable ({exc.strerror})", EXIT_NOT_EXECUTABLE) from exc
    except OSError as exc:
        raise cannot_execute(argv[0], exc.errno or errno.EIO) from exc


def spawn_foreground(argv: Sequence[str], env: Mapping[str, str], tty: int) -> int:
    """Start ``argv`` in its own process group that owns the terminal ``tty`` before the app's
    first instruction, as a shell starts a foreground job: the child takes the terminal itself
    before exec, and the parent does too, so neither order of the two can leave the app reading
    a terminal it does not own (SIGTTIN). Only for an interactive terminal: posix_spawn cannot
    do this step, so this path forks. Raises SpawnError (127 / 126)."""
    executable = resolve_command(argv[0], env)
    report_r, report_w = os.pipe()  # close-on-exec: EOF means the exec succeeded
    # Blocked across the fork: a signal forwarded to the new group before the child has reset
    # its handlers would otherwise land in the child's copy of ztr's handler and be lost. The
    # child unblocks right before exec, with default dispositions: a pending SIGTERM acts then.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # the child: only system calls until exec
            try:
                os.setpgid(0, 0)
                signal.signal(signal.SIGTTOU, signal.SIG_IGN)
                os.tcsetpgrp(tty, os.getpid())
                signal.set_wakeup_fd(-1)
                default_signals()
                os.execve(executable, list(argv), dict(env))  # noqa: S606
            except OSError as exc:
                os.write(report_w, str(exc.errno or 0).encode())
            finally:
                os._exit(EXIT_NOT_FOUND)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    os.close(report_w)
    with contextlib.suppress(OSError):  # EACCES once the child has exec'd: it did it itself
        os.setpgid(pid, pid)
    _set_foreground(tty, pid)
    try:
        # A child that never gets to exec (or to fail it) must not hold the loop: after the
        # wait it is treated as started, and reaped like any other.
        ready, _, _ = select.select([report_r], [], [], _EXEC_REPORT_SECONDS)
        report = os.read(report_r, 16) if ready else b""
    finally:
        os.close(report_r)
    if report:
        os.waitpid(pid, 0)
        raise cannot_execute(argv[0], int(report) or errno.EIO)
    return pid


@dataclass(frozen=True)
class Restart:
    """Stop the child gracefully and start it again with ``env``."""

    env: Mapping[str, str] = field(repr=False)  # holds secret values


@dataclass(frozen=True)
class Forward:
    """Send ``signum`` to the child's process group."""

    signum: int


@dataclass(frozen=True)
class Exit:
    """Stop the child gracefully, then exit with ``code`` (a later Restart does not undo it)."""

    code: int


class _Aside:
    """A short command run beside the app (``--verify``): spawned and reaped by the loop, which
    owns ``waitpid(-1)``, so its exit status cannot be stolen by the reaper."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.done = threading.Event()
        self.pid: int | None = None
        self.code: int | None = None

    def finish(self, code: int) -> None:
        self.code = code
        self.done.set()


Action = Restart | Forward | Exit | _Aside
TIMED_OUT = 124  # timeout(1)'s code for a command that ran too long


class Supervisor:
    """Runs one child at a time and owns every signal, zombie and exit code.

    Other threads talk to it only through ``submit``. Hooks let the caller observe the child
    without the supervisor knowing about metrics: ``on_start(pid)``, ``on_exit(code)``.

    The child leads its own process group. When it exits, whatever is left of that group gets
    SIGTERM, and SIGKILL once the grace period is over; only then does ztr restart the child
    or exit, so an old generation never overlaps a new one and nothing it started outlives it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        inbox: SignalInbox,
        grace_seconds: float,
        on_start: Callable[[int], None] | None = None,
        on_exit: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
        subreaper: Callable[[], bool] = become_subreaper,
        cwd: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.inbox = inbox
        self.grace_seconds = grace_seconds
        self.on_start = on_start or (lambda pid: None)
        self.on_exit = on_exit or (lambda code: None)
        self.clock = clock
        self.log = log or (lambda message: None)
        self.subreaper = subreaper
        # The app starts (and restarts) where ztr was started; ztr itself then moves to /, so
        # it keeps no directory busy (an unmount, a deleted working tree), as dumb-init does.
        self.cwd = cwd if cwd is not None else os.getcwd()
        self.pid: int | None = None  # the running child; None once it has exited
        self.started_at: float | None = None
        self._actions: queue.SimpleQueue[Action] = queue.SimpleQueue()
        self._pgid: int | None = None  # the child's group, until everything in it is gone
        self._exit_code: int | None = None  # the child's, while its group settles
        self._stop_deadline: float | None = None
        self._stop_reason: str | None = None  # "shutdown", or "react" for a Restart / Exit
        self._pending: Restart | Exit | None = None
        self._killed = False
        self._tty_fd: int | None = None
        self._child_stopped_by: int | None = None  # the signal that stopped the app, if stopped
        self._asides: dict[int, _Aside] = {}

    # -- called from other threads ------------------------------------------------------

    def submit(self, action: Action) -> None:
        self._actions.put(action)
        self.inbox.wake()

    def run_aside(self, argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> int:
        """Run a command beside the app and return its exit code (124 if it ran too long)."""
        aside = _Aside(argv, env)
        self.submit(aside)
        if aside.done.wait(timeout):
            return aside.code if aside.code is not None else 1
        if aside.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(aside.pid, signal.SIGKILL)
        aside.done.wait(5)
        return TIMED_OUT

    def uptime(self) -> float:
        return 0.0 if self.started_at is None else self.clock() - self.started_at

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Start the child and supervise it until it exits for good; return ztr's exit code.

        A SIGTERM or SIGINT that arrived before the start means no start: 128+N. Raises
        SpawnError when the command cannot be started.
        """
        self.subreaper()
        early = self._before_start()
        if early is not None:
            return early
        self._start()
        self.inbox.wake()  # actions submitted before the start wait in the queue: look now
        return self._loop()

    def _before_start(self) -> int | None:
        """Signals that came before there was an app: a stop wins, the rest are dropped."""
        for signum in self.inbox.take():
            if signum in STOPPING:
                self.log(f"Stopped by {signal.Signals(signum).name} before the app started: "
                         "nothing was started")
                return 128 + signum
            if signum != signal.SIGCHLD:
                self.log(f"Signal {signal_name(signum)} received before the app started: not forwarded")
        return None

    def _in_app_directory(self, start: Callable[[], int]) -> int:
        """Run ``start`` (a spawn) from the app's directory, then move back to /. posix_spawn has
        no chdir action before Python 3.13, so the loop (the only thread that spawns) changes
        directory around it; every path other threads use is absolute (config resolves them)."""
        os.chdir(self.cwd)
        try:
            return start()
        finally:
            with contextlib.suppress(OSError):
                os.chdir("/")

    def _spawn_child(self) -> int:
        tty = _foreground_tty()
        if tty is None:
            return self._in_app_directory(lambda: spawn(self.argv, self.env))
        pid = self._in_app_directory(lambda: spawn_foreground(self.argv, self.env, tty))
        self._tty_fd = tty
        return pid

    def _start(self) -> None:
        self.pid = self._pgid = self._spawn_child()
        self.started_at = self.clock()
        self.on_start(self.pid)

    def _take_terminal_back(self) -> None:
        if self._tty_fd is None:
            return
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(self._tty_fd, os.getpgrp())
        except OSError:
            pass
        finally:
            signal.signal(signal.SIGTTOU, previous)
            self._tty_fd = None

    def _loop(self) -> int:
        while True:
            for signum in self.inbox.wait(self._timeout()):
                self._on_signal(signum)
            while True:
                try:
                    self._on_action(self._actions.get_nowait())
                except queue.Empty:
                    break
            code = self._reap()
            if code is not None:
                self._child_exited(code)
            if self.pid is None:
                result = self._settle()
                if result is not None:
                    return result
            elif self._grace_over():
                self.log(f"Grace period of {self.grace_seconds:g}s over: sending SIGKILL")
                self._signal_group(signal.SIGKILL)
                self._killed = True

    def _timeout(self) -> float | None:
        if self._stop_deadline is None or self._killed:
            return None
        remaining = min(max(0.0, self._stop_deadline - self.clock()), _MAX_WAIT_SECONDS)
        return remaining if self.pid is not None else min(remaining, _SETTLE_POLL_SECONDS)

    def _grace_over(self) -> bool:
        return (self._stop_deadline is not None and not self._killed
                and self.clock() >= self._stop_deadline)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # reaping happens on every turn of the loop
        self._signal_group(signum)
        if signum in STOPPING:
            if self._child_stopped_by is not None:  # a stopped app acts on SIGTERM once continued
                self._signal_group(signal.SIGCONT)
            if self._stop_reason != "shutdown":
                self._begin_stop("shutdown", send=False)
        elif signum in JOB_CONTROL and os.getpid() != 1:
            # Job control, as dumb-init does it: the app got the stop request; ztr suspends too
            # (SIGSTOP cannot be caught) and forwards the SIGCONT that resumes it.
            os.kill(os.getpid(), signal.SIGSTOP)

    def _on_action(self, action: Action) -> None:
        if isinstance(action, _Aside):
            if self._stop_reason == "shutdown":
                action.finish(1)
                return
            try:
                action.pid = self._in_app_directory(
                    lambda: spawn(action.argv, action.env, quiet=True))
                self._asides[action.pid] = action
            except SpawnError as exc:
                action.finish(exc.exit_code)
            return
        if self._stop_reason == "shutdown" or (self.pid is None and self._stop_reason is None):
            return  # shutting down, or the child exited on its own: ztr exits with its code
        if isinstance(action, Forward):
            self._signal_group(action.signum)
        elif self._stop_reason is None:
            self._pending = action
            self._begin_stop("react", send=True)
        elif not isinstance(self._pending, Exit):
            self._pending = action  # a newer restart replaces the one in progress

    def _begin_stop(self, reason: str, *, send: bool) -> None:
        """SIGTERM now (or already sent), SIGKILL at the deadline; an earlier deadline stands."""
        self._stop_reason = reason
        self._set_deadline()
        if send:
            self._signal_group(signal.SIGTERM)

    def _set_deadline(self) -> None:
        deadline = self.clock() + self.grace_seconds
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline

    def _signal_group(self, signum: int) -> None:
        if self._pgid is None:
            return
        try:
            os.killpg(self._pgid, signum)
        except ProcessLookupError:
            if self.pid is not None:  # the child left its group (setsid): it still gets it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signum)
        except PermissionError:
            pass

    def _group_alive(self) -> bool:
        """Is anything left in the child's group (a zombie not yet reaped counts)?"""
        if self._pgid is None:
            return False
        try:
            os.killpg(self._pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _reap(self) -> int | None:
        """Reap every exited process (orphans included); return the main child's code."""
        code = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED | os.WCONTINUED)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if os.WIFSTOPPED(status) or os.WIFCONTINUED(status):
                if pid == self.pid:
                    if os.WIFSTOPPED(status):
                        self._child_stopped(os.WSTOPSIG(status))
                    else:
                        self._child_stopped_by = None
                continue
            if pid == self.pid:
                code = exit_code_of(status)
            elif pid in self._asides:
                self._asides.pop(pid).finish(exit_code_of(status))
        return code

    def _child_stopped(self, signum: int) -> None:
        """The app stopped. Reading or writing a terminal it does not own (SIGTTIN/SIGTTOU) is
        the hang to avoid: give it the terminal and continue it. A deliberate SIGSTOP/SIGTSTP
        stands; a SIGTERM later continues it so that it can act on it."""
        self.log(f"The app stopped ({signal_name(signum)})")
        self._child_stopped_by = signum
        if signum in (signal.SIGTTIN, signal.SIGTTOU):
            tty = _foreground_tty(require_ours=False)
            if tty is not None and self._pgid is not None:
                _set_foreground(tty, self._pgid)
                self._tty_fd = tty
            self._signal_group(signal.SIGCONT)

    def _child_exited(self, code: int) -> None:
        """The main child is gone: report it, and stop what it left in its group."""
        self.pid, self._exit_code, self._child_stopped_by = None, code, None
        self._take_terminal_back()
        self.on_exit(code)
        if not self._killed and self._group_alive():
            self.log("The app left processes in its group: sent them SIGTERM; waiting up to "
                     "the grace period")
            self._signal_group(signal.SIGTERM)
            self._set_deadline()

    def _settle(self) -> int | None:
        """Once the child's group is empty (or killed): restart it, or return ztr's exit code."""
        if not self._killed and self._group_alive():
            if self._stop_deadline is not None and self.clock() < self._stop_deadline:
                return None
            self.log(f"Grace period of {self.grace_seconds:g}s over: sending SIGKILL to what "
                     "is left of the app's process group")
            self._signal_group(signal.SIGKILL)
        code = self._exit_code if self._exit_code is not None else 1
        reason, pending = self._stop_reason, self._pending
        self._pgid, self._exit_code, self._pending = None, None, None
        self._stop_reason, self._stop_deadline, self._killed = None, None, False
        if reason == "react" and isinstance(pending, Restart):
            self.log(f"The app exited with {code} for a restart; starting it again")
            self.env = dict(pending.env)
            self._start()
            return None
        if reason == "react" and isinstance(pending, Exit):
            return pending.code
        return code


def _foreground_tty(*, require_ours: bool = True) -> int | None:
    """Standard input's terminal, when ztr's group owns it (or, with ``require_ours`` false,
    when there is one at all)."""
    try:
        if not os.isatty(0):
            return None
        if require_ours and os.tcgetpgrp(0) != os.getpgrp():
            return None
    except OSError:
        return None
    return 0


def _set_foreground(fd: int, pgid: int) -> None:
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, pgid)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, previous)
