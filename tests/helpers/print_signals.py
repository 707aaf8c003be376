"""A child for supervisor tests: prints "ready", then the name of every signal it receives.

Usage: python print_signals.py [--code N] [--ignore-term] [--descendants-ignore-term]
                               [--keep-running] [--orphans N] [--children N] [--pid] [--tty]
                               [--exit N]

Lines on stdout, each flushed, in this order:
  "pid PID"        with --pid (this process's PID, as the kernel numbers it here)
  "child PID"      one per --children: `sleep` processes it keeps as its own children
  "orphan PID"     one per --orphans: `sleep` processes whose parent has already exited
  "foreground yes|no"  with --tty: whether its process group is the terminal's foreground
  "ready"          every handler is in place; signals sent from now on are reported
  "SIGNAME"        one per signal received, in the order received

On SIGTERM or SIGINT it exits with --code, or 128+N (as a shell reports death by signal N),
unless --keep-running. --ignore-term sets SIGTERM to SIG_IGN, which its `sleep` children and
orphans inherit, so only SIGKILL stops them; --descendants-ignore-term does that for the
`sleep` processes only. --exit N exits with N right after "ready".

Signals are taken with sigwaitinfo, one at a time, so the order printed is the order received
and nothing prints from inside a handler. The grandchildren are started before the mask is
set, so they get an empty mask and default dispositions (SIGUSR1 kills them).

Python cannot report the SIGPIPE disposition it inherited: CPython sets SIGPIPE to SIG_IGN
while starting up and keeps no record of the old one. Tests probe that with /bin/sh instead.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

WATCHED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
    signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
    # the rest of what ztr-run forwards, which used to kill ztr by their default action
    signal.SIGALRM, signal.SIGPWR, signal.SIGILL, signal.SIGTRAP, signal.SIGABRT, signal.SIGSYS,
    signal.SIGVTALRM, signal.SIGPROF, signal.SIGXCPU, signal.SIGURG, signal.SIGIO,
    signal.SIGSTKFLT, signal.SIGRTMIN,
)
STOPPING = (signal.SIGTERM, signal.SIGINT)
SLEEP_SECONDS = "120"  # long enough to outlive any test; tests kill what they start


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def start_sleep(ignore_term: bool = False) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            if ignore_term:  # SIG_IGN survives exec
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            # Off the test's stdout pipe, so a stray sleep never holds it open.
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.execvp("sleep", ["sleep", SLEEP_SECONDS])
        finally:
            os._exit(127)
    return pid


def start_orphan(ignore_term: bool = False) -> int:
    """Fork a parent that starts `sleep` and exits at once: the `sleep` is orphaned."""
    read_end, write_end = os.pipe()
    parent = os.fork()
    if parent == 0:
        os.close(read_end)
        try:
            os.write(write_end, str(start_sleep(ignore_term)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 64):
        data += chunk
    os.close(read_end)
    os.waitpid(parent, 0)
    return int(data)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=int, default=None)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--descendants-ignore-term", action="store_true")
    parser.add_argument("--keep-running", action="store_true")
    parser.add_argument("--orphans", type=int, default=0)
    parser.add_argument("--children", type=int, default=0)
    parser.add_argument("--pid", action="store_true")
    parser.add_argument("--exit", type=int, default=None)
    parser.add_argument("--tty", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("sleep") is None:
        say("no sleep(1) on PATH")
        return 2

    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.pid:
        say(f"pid {os.getpid()}")
    for _ in range(args.children):
        say(f"child {start_sleep(args.descendants_ignore_term)}")
    for _ in range(args.orphans):
        say(f"orphan {start_orphan(args.descendants_ignore_term)}")

    if args.tty:
        say("foreground " + ("yes" if os.tcgetpgrp(0) == os.getpgrp() else "no"))
    watched = [s for s in WATCHED if not (args.ignore_term and s == signal.SIGTERM)]
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    say("ready")
    if args.exit is not None:
        return args.exit
    while True:
        info = signal.sigwaitinfo(watched)
        signum = info.si_signo
        say(signal.Signals(signum).name)
        if signum in STOPPING and not args.keep_running:
            return args.code if args.code is not None else 128 + signum


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# -- for the tests that drive it ----------------------------------------------------------
# Kept beside the child so every supervisor test (ztr-run, tini, dumb-init, as PID 1 or not)
# reads it the same way: lines with a deadline, process state from /proc, never a fixed sleep.

HELPER = os.path.abspath(__file__)


def child_argv(*options: str) -> list[str]:
    """The command line that runs this helper with ``options``."""
    return [sys.executable, HELPER, *options]


class Session:
    """One supervisor running a child; its stdout read line by line with a deadline."""

    def __init__(self, argv: list[str], env: dict[str, str], *, track_pids: bool = True,
                 **popen: object) -> None:
        """``track_pids=False`` when the child numbers PIDs in another namespace: close()
        must not kill this namespace's processes that happen to have those numbers."""
        popen.setdefault("stdin", subprocess.DEVNULL)
        self.track_pids = track_pids
        self.argv = argv
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, **popen)  # type: ignore[call-overload]
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buffer = b""
        self.pids: list[int] = []  # every PID the child reported, to clean up
        self.stderr = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self, timeout: float = 5.0) -> str:
        """The next line of the child's stdout; fails the test after ``timeout`` or at EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line within {timeout}s; so far {self._buffer!r}")
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if ready:
                chunk = os.read(self._fd, 4096)
                if not chunk:
                    raise AssertionError(f"stdout closed; so far {self._buffer!r}; "
                                         f"exit {self.proc.poll()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        text = line.decode()
        word, _, number = text.partition(" ")
        if self.track_pids and word in ("pid", "child", "orphan") and number.isdigit():
            self.pids.append(int(number))
        return text

    def until_ready(self, timeout: float = 10.0) -> dict[str, list[int]]:
        """Read up to "ready"; return the PIDs announced before it, by kind."""
        announced: dict[str, list[int]] = {"pid": [], "child": [], "orphan": []}
        while (text := self.line(timeout)) != "ready":
            word, _, number = text.partition(" ")
            if word in announced:
                announced[word].append(int(number))
        return announced

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        """The supervisor's exit status (as a shell shows it: 128+N for death by signal N)."""
        code = self.proc.wait(timeout)
        return 128 - code if code < 0 else code

    def rest(self, timeout: float = 10.0) -> str:
        """Everything the child still prints, after the supervisor has exited."""
        self.wait(timeout)
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr = err.decode(errors="replace")
        text = (self._buffer + out).decode()
        self._buffer = b""
        return text

    def close(self) -> None:
        """Kill whatever the test left running: the supervisor, its descendants and every
        announced PID (orphans that a failed test left with another parent)."""
        doomed = [self.proc.pid, *descendants(self.proc.pid), *self.pids]
        for pid in doomed:
            if not is_gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def status(pid: int) -> dict[str, str] | None:
    """/proc/PID/status as a dict, or None when there is no such process (not even a zombie)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def is_gone(pid: int) -> bool:
    """Dead: no such process, or a zombie (dead, waiting to be reaped)."""
    found = status(pid)
    return found is None or found.get("State", "").startswith("Z")


def children_of(ppid: int) -> dict[int, dict[str, str]]:
    """Every process whose parent is ``ppid``, zombies included, with its status."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = status(int(entry))
            if info is not None and info.get("PPid") == str(ppid):
                found[int(entry)] = info
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree, as things stand now."""
    below: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = status(int(entry))
            if info is not None and info.get("PPid", "").isdigit():
                below.setdefault(int(info["PPid"]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in below.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def zombies_of(ppid: int) -> list[int]:
    return [pid for pid, info in children_of(ppid).items() if info["State"].startswith("Z")]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition()`` until true; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)
