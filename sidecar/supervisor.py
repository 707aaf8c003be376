"""The child process: start, forward signals, reap zombies, stop with a grace period, exit status.

Knows nothing of AWS. Signal handlers only record (Python writes each signal number to a
wakeup pipe, in order); one loop reads that pipe, forwards, reaps and acts, like dumb-init's
sigwait loop and tini's sigtimedwait + reap_zombies.
"""

from __future__ import annotations

import ctypes
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
from dataclasses import dataclass

from .errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND

FORWARDED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
)
STOPPING = frozenset({signal.SIGTERM, signal.SIGINT})
_PR_SET_CHILD_SUBREAPER = 36
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


def spawn(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Start ``argv`` in its own process group, with default signal dispositions and an empty
    signal mask (CPython ignores SIGPIPE; exec would otherwise keep that)."""
    executable = resolve_command(argv[0], env)
    try:
        return os.posix_spawn(
            executable, list(argv), dict(env),
            setpgroup=0, setsigdef=_ALL_SIGNALS, setsigmask=(),
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
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(executable, list(argv), dict(env))
    except OSError as exc:
        code = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
        raise SpawnError(f"{argv[0]}: cannot execute ({exc.strerror})", code) from exc


@dataclass(frozen=True)
class Restart:
    """Stop the child gracefully and start it again with ``env``."""

    env: Mapping[str, str]


@dataclass(frozen=True)
class Forward:
    """Send ``signum`` to the child's process group."""

    signum: int


@dataclass(frozen=True)
class Exit:
    """Stop the child gracefully, then exit with ``code``."""

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
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.grace_seconds = grace_seconds
        self.on_start = on_start or (lambda pid: None)
        self.on_exit = on_exit or (lambda code: None)
        self.clock = clock
        self.log = log or (lambda message: None)
        self.pid: int | None = None
        self.started_at: float | None = None
        self._actions: queue.SimpleQueue[Action] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._signal_r, self._signal_w = os.pipe()
        for fd in (self._wake_r, self._wake_w, self._signal_r, self._signal_w):
            os.set_blocking(fd, False)
        self._stop_deadline: float | None = None
        self._stop_reason: str | None = None  # "shutdown", "restart" or "exit"
        self._pending: Action | None = None
        self._killed = False
        self._tty_fd: int | None = None
        self._asides: dict[int, _Aside] = {}

    # -- called from other threads ------------------------------------------------------

    def submit(self, action: Action) -> None:
        self._actions.put(action)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the loop is already awake

    def run_aside(self, argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> int:
        """Run a command beside the app and return its exit code (124 if it ran too long)."""
        aside = _Aside(argv, env)
        self.submit(aside)
        if aside.done.wait(timeout):
            return aside.code if aside.code is not None else 1
        if aside.pid is not None:
            try:
                os.killpg(aside.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        aside.done.wait(5)
        return TIMED_OUT

    def uptime(self) -> float:
        return 0.0 if self.started_at is None else self.clock() - self.started_at

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Start the child and supervise it until it exits for good; return ztr's exit code.

        Raises SpawnError when the command cannot be started.
        """
        become_subreaper()
        self._install_handlers()
        try:
            self._start()
            return self._loop()
        finally:
            signal.set_wakeup_fd(-1)

    def _install_handlers(self) -> None:
        # Handlers do nothing: the wakeup fd carries each signal number to the loop, in order.
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        for signum in (*FORWARDED, signal.SIGCHLD):
            signal.signal(signum, _record)

    def _start(self) -> None:
        self.pid = spawn(self.argv, self.env)
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
            timeout = None
            if self._stop_deadline is not None and not self._killed:
                timeout = max(0.0, self._stop_deadline - self.clock())
            selector.select(timeout)
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
                result = self._after_exit(code)
                if result is not None:
                    return result
            elif (
                self._stop_deadline is not None
                and not self._killed
                and self.clock() >= self._stop_deadline
            ):
                self.log(f"grace period of {self.grace_seconds:g}s over: sending SIGKILL")
                self._signal_group(signal.SIGKILL)
                self._killed = True

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
                action.pid = spawn(action.argv, action.env)
                self._asides[action.pid] = action
            except SpawnError as exc:
                action.finish(exc.exit_code)
            return
        if self._stop_reason == "shutdown":
            return  # shutting down: no restarts, no more reactions
        if isinstance(action, Forward):
            self._signal_group(action.signum)
        elif self._stop_reason is None:
            self._pending = action
            self._begin_stop("restart" if isinstance(action, Restart) else "exit", send=True)
        else:
            self._pending = action  # a newer restart replaces the one in progress

    def _begin_stop(self, reason: str, *, send: bool) -> None:
        self._stop_reason = reason
        self._stop_deadline = self.clock() + self.grace_seconds
        self._killed = False
        if send:
            self._signal_group(signal.SIGTERM)

    def _signal_group(self, signum: int) -> None:
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            try:  # the group is gone but the leader may not be reaped yet
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass
        except PermissionError:
            pass

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

    def _after_exit(self, code: int) -> int | None:
        """The main child is gone: restart it, or return ztr's exit code."""
        pid, self.pid = self.pid, None
        self._take_terminal_back()
        self.on_exit(code)
        if pid is not None:
            try:  # helpers it left in its group would otherwise outlive it
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        reason, pending = self._stop_reason, self._pending
        self._stop_reason, self._stop_deadline, self._pending = None, None, None
        if reason == "restart" and isinstance(pending, Restart):
            self.log(f"child exited with {code} for a restart; starting it again")
            self.env = dict(pending.env)
            self._start()
            return None
        if reason == "exit" and isinstance(pending, Exit):
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
