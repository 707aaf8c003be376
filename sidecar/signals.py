"""Signals: handlers installed once for the process's life, and one inbox that the main thread reads.

Handlers only record: each appends its number to a queue, and Python's wakeup fd writes a byte
to a pipe, so a ``select`` on that pipe wakes whatever the main thread is waiting for (the
start-up load, ``watch``'s idle loop, the supervisor). Logging and acting happen after the
wakeup, never inside a handler. Other threads wake the same reader with ``wake()``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

# Every signal a process can catch, except:
# - SIGPIPE: CPython ignores it so that writing to a closed pipe is an EPIPE error; a closed log
#   pipe of ztr's own must never turn into a signal for the app;
# - SIGSEGV, SIGBUS: a real memory fault with a Python-level handler re-faults forever, and no
#   orchestrator sends them to ask for anything.
_NEVER = {signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE, signal.SIGSEGV, signal.SIGBUS}
CATCHABLE = frozenset(set(signal.valid_signals()) - _NEVER)
STOPPING = frozenset({signal.SIGTERM, signal.SIGINT})
JOB_CONTROL = frozenset({signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

Handler = Callable[[int, Any], Any] | int | None


class SignalInbox:
    """Records every catchable signal from ``install()`` on; ``wait``/``take`` hand them over in
    order. Only the main thread may install, wait and take (Python runs handlers there)."""

    def __init__(self, signums: Iterable[int] = CATCHABLE) -> None:
        self.signums = frozenset(signums)
        self._received: deque[int] = deque()
        self._read_fd, self._write_fd = os.pipe()
        for fd in (self._read_fd, self._write_fd):
            os.set_blocking(fd, False)
        self._previous: dict[int, Handler] = {}
        self._previous_wakeup = -1
        self.installed = False

    def install(self) -> SignalInbox:
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in sorted(self.signums):
            with contextlib.suppress(OSError, ValueError):
                self._previous[signum] = signal.signal(signum, self._record)
        self.installed = True
        return self

    def uninstall(self) -> None:
        """Back to what was there before (in-process tests; commands that need no inbox)."""
        for signum, previous in self._previous.items():
            if previous is not None:
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(signum, previous)
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_wakeup)
        self.installed = False

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _record(self, signum: int, frame: object) -> None:
        self._received.append(signum)  # deque.append is atomic: the only thing a handler does

    # -- the reader side ------------------------------------------------------------------

    def fileno(self) -> int:
        return self._read_fd

    def wake(self) -> None:
        """Wake the reader from any thread (a byte 0 is no signal number)."""
        with contextlib.suppress(BlockingIOError):  # full: the reader is already awake
            os.write(self._write_fd, b"\0")

    def take(self) -> list[int]:
        """The signals received since the last call, oldest first (may be empty)."""
        while True:
            try:
                if not os.read(self._read_fd, 4096):
                    break
            except (BlockingIOError, InterruptedError):
                break
        taken: list[int] = []
        while True:
            try:
                taken.append(self._received.popleft())
            except IndexError:
                return taken

    def wait(self, timeout: float | None) -> list[int]:
        """Block until a signal or a ``wake()`` (or ``timeout`` seconds); return what arrived."""
        if not self._received:
            with contextlib.suppress(InterruptedError):
                select.select([self._read_fd], [], [], timeout)
        return self.take()


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"
