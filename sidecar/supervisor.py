"""The child process: start, forward signals, reap zombies, stop with a grace period, exit status.

Knows nothing of AWS. Signal handlers only record (Python writes each signal number to a
wakeup pipe, in order); one loop reads that pipe, forwards, reaps and acts, like dumb-init's
sigwait loop and tini's sigtimedwait + reap_zombies.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import selectors
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND

FORWARDED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
)
STOPPING = frozenset({signal.SIGTERM, signal.SIGINT})
_PR_SET_CHILD_SUBREAPER = 36
# Members of the child's group that are not ztr's children send no SIGCHLD when they die:
# while waiting for them, look this often.
_SETTLE_POLL_SECONDS = 0.05
_MAX_WAIT_SECONDS = 3600.0  # epoll refuses waits over 2**31 ms (~24.8 days): wake up and re-check
_ALL_SIGNALS = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


class SpawnError(Exception):
    """The command could not be started; ``exit_code`` is 127 (not found) or 126."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_code_of(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for death by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def become_subreaper() -> bool:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), so they are reaped here too."""
    if os.getpid() == 1 or not sys.platform.startswith("linux"):
        return os.getpid() == 1
    import ctypes  # only here: PID 1 never needs it, and it costs memory on every pod

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def resolve_command(argv0: str, env: Mapping[str, str]) -> str:
    """Find the executable as execvp would with the child's PATH; 127 or 126 when it cannot."""
    if "/" in argv0:
        if not os.path.exists(argv0):
            raise SpawnError(f"{argv0}: command not found", EXIT_NOT_FOUND)
        if os.path.isdir(argv0) or not os.access(argv0, os.X_OK):
            raise SpawnError(f"{argv0}: not executable", EXIT_NOT_EXECUTABLE)
        return argv0
    path = env.get("PATH", os.defpath)
    found = shutil.which(argv0, path=path)
    if found:
        return found
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", argv0)
        if os.path.isfile(candidate):
            raise SpawnError(f"{argv0}: not executable ({candidate})", EXIT_NOT_EXECUTABLE)
    raise SpawnError(f"{argv0}: command not found in PATH", EXIT_NOT_FOUND)


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
            setpgroup=0, setsigdef=_ALL_SIGNALS, setsigmask=(),
            file_actions=_QUIET if quiet else None,
        )
    except PermissionError as exc:
        raise SpawnError(f"{argv[0]}: not executable ({exc.strerror})", EXIT_NOT_EXECUTABLE) from exc
    except OSError as exc:
        code = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
        raise SpawnError(f"{argv[0]}: cannot execute ({exc.strerror})", code) from exc


def exec_replace(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Replace this process with ``argv`` (the --once mode): same PID, default signals."""
    executable = resolve_command(argv[0], env)
    for signum in _ALL_SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(executable, list(argv), dict(env))  # noqa: S606 - replacing ztr is the point
    except OSError as exc:
        code = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
        raise SpawnError(f"{argv[0]}: cannot execute ({exc.strerror})", code) from exc


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
        grace_seconds: float,
        on_start: Callable[[int], None] | None = None,
        on_exit: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
        subreaper: Callable[[], bool] = become_subreaper,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.grace_seconds = grace_seconds
        self.on_start = on_start or (lambda pid: None)
        self.on_exit = on_exit or (lambda code: None)
        self.clock = clock
        self.log = log or (lambda message: None)
        self.subreaper = subreaper
        self.pid: int | None = None  # the running child; None once it has exited
        self.started_at: float | None = None
        self._actions: queue.SimpleQueue[Action] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._signal_r, self._signal_w = os.pipe()
        for fd in (self._wake_r, self._wake_w, self._signal_r, self._signal_w):
            os.set_blocking(fd, False)
        self._pgid: int | None = None  # the child's group, until everything in it is gone
        self._exit_code: int | None = None  # the child's, while its group settles
        self._stop_deadline: float | None = None
        self._stop_reason: str | None = None  # "shutdown", or "react" for a Restart / Exit
        self._pending: Restart | Exit | None = None
        self._killed = False
        self._tty_fd: int | None = None
        self._asides: dict[int, _Aside] = {}

    # -- called from other threads ------------------------------------------------------

    def submit(self, action: Action) -> None:
        self._actions.put(action)
        with contextlib.suppress(BlockingIOError):  # full: the loop is already awake
            os.write(self._wake_w, b"\0")

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

        Raises SpawnError when the command cannot be started.
        """
        self.subreaper()
        previous = self._install_handlers()
        try:
            self._start()
            return self._loop()
        finally:
            signal.set_wakeup_fd(-1)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _install_handlers(self) -> dict[int, Callable[[int, Any], Any] | int]:
        # Handlers do nothing: the wakeup fd carries each signal number to the loop, in order.
        previous: dict[int, Callable[[int, Any], Any] | int] = {}
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        for signum in (*FORWARDED, signal.SIGCHLD):
            handler = signal.signal(signum, _record)
            if handler is not None:  # None: set outside Python, nothing to restore it with
                previous[signum] = handler
        return previous

    def _start(self) -> None:
        self.pid = self._pgid = spawn(self.argv, self.env)
        self.started_at = self.clock()
        self._give_terminal(self.pid)
        self.on_start(self.pid)

    def _give_terminal(self, pgid: int) -> None:
        """On a TTY, make the child's group the foreground group, as a shell does: Ctrl-C then
        reaches the app directly and only once, and ztr stays out of the terminal's way."""
        try:
            if not os.isatty(0) or os.tcgetpgrp(0) != os.getpgrp():
                return
            previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                os.tcsetpgrp(0, pgid)
                self._tty_fd = 0
            finally:
                signal.signal(signal.SIGTTOU, previous)
        except OSError:
            pass

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
        selector = selectors.DefaultSelector()
        selector.register(self._signal_r, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        while True:
            selector.select(self._timeout())
            for signum in _drain(self._signal_r):
                self._on_signal(signum)
            _drain(self._wake_r)
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
        if signum in STOPPING and self._stop_reason != "shutdown":
            self._begin_stop("shutdown", send=False)

    def _on_action(self, action: Action) -> None:
        if isinstance(action, _Aside):
            if self._stop_reason == "shutdown":
                action.finish(1)
                return
            try:
                action.pid = spawn(action.argv, action.env, quiet=True)
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
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == self.pid:
                code = exit_code_of(status)
            elif pid in self._asides:
                self._asides.pop(pid).finish(exit_code_of(status))
        return code

    def _child_exited(self, code: int) -> None:
        """The main child is gone: report it, and stop what it left in its group."""
        self.pid, self._exit_code = None, code
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


def _record(signum: int, frame: object) -> None:
    """Signal handler: nothing to do, the wakeup fd already carries the signal number."""


def _drain(fd: int) -> list[int]:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            break
        if not chunk:
            break
        data += chunk
    return list(data)
