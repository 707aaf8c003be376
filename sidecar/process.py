"""Process primitives that need no loop: find a command as execvp would, exec it in ztr's place,
and the prctl flags ztr sets on itself. ``run --once`` needs only these, not the supervisor."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence

from .errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, SpawnError

_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_DUMPABLE = 4
ALL_SIGNALS = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only here: it costs memory, and only Linux has prctl

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), so they are reaped here too."""
    if os.getpid() == 1:
        return True
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def forbid_core_dumps() -> bool:
    """Make ztr's own process not dumpable: no core file can carry the secrets it holds, and
    other processes of the same user cannot read its /proc/PID/environ or memory. An exec
    resets the flag, so the app's own core settings are untouched."""
    return _prctl(_PR_SET_DUMPABLE, 0)


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


def default_signals() -> None:
    """Every catchable signal back to its default action and none blocked, right before an exec:
    CPython ignores SIGPIPE, and an exec would otherwise pass that and the mask on."""
    for signum in ALL_SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def cannot_execute(argv0: str, error: int) -> SpawnError:
    """A failed exec as a shell reports it: 127 if the file is not there, else 126."""
    code = EXIT_NOT_FOUND if error == errno.ENOENT else EXIT_NOT_EXECUTABLE
    return SpawnError(f"{argv0}: cannot execute ({os.strerror(error)})", code)


def exec_replace(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Replace this process with ``argv`` (the --once mode): same PID, default signals."""
    executable = resolve_command(argv[0], env)
    default_signals()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(executable, list(argv), dict(env))  # noqa: S606 - replacing ztr is the point
    except OSError as exc:
        raise cannot_execute(argv[0], exc.errno or errno.EIO) from exc
