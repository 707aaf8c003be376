"""Shared pieces of the reliability suite: the bad-input tally printed at the end of the run,
the one-clear-line assertions, a small tmpfs mounted as root, and /proc process checks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import print_signals

_TALLY = pytest.StashKey[Counter[str]]()


def _tally(config: pytest.Config) -> Counter[str]:
    if _TALLY not in config.stash:
        config.stash[_TALLY] = Counter()
    return config.stash[_TALLY]


@pytest.fixture
def bad_inputs(request: pytest.FixtureRequest) -> Callable[[str, int], None]:
    """``bad_inputs(category, n)``: count bad inputs tried, for the end-of-run summary."""
    tally = _tally(request.config)

    def count(category: str, n: int = 1) -> None:
        tally[category] += n

    return count


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    tally = _tally(config)
    if not tally:
        return
    detail = ", ".join(f"{category} {n}" for category, n in sorted(tally.items()))
    terminalreporter.write_line(f"reliability: {sum(tally.values())} bad inputs tried ({detail})")


# -- what a clear error looks like ------------------------------------------------------------


def config_error_line(code: int, stderr: str) -> str:
    """A configuration error: exit 64 and exactly one non-empty line on stderr, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 64, f"exit {code}, expected 64; stderr: {stderr!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr!r}"
    if lines[0].startswith("{"):  # the JSON log format (the default): the message it carries
        record = json.loads(lines[0])
        assert record["level"] == "error", record
        assert record["exit_code"] == 64, record
        assert record["msg"].startswith("ztr: "), record
        return str(record["msg"])
    return lines[0]


def error_record(code: int, stderr: str) -> dict[str, Any]:
    """A runtime error: every stderr line a JSON log record, exactly one of them an error whose
    exit_code is the process's; a config error (one ``ztr:`` line) is accepted for exit 64."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code == 64 and len(lines) == 1 and lines[0].startswith("ztr: "):  # --log-format text
        return {"msg": lines[0], "exit_code": 64, "level": "error"}
    if code == 64 and len(lines) == 1:
        return {**json.loads(lines[0]), "msg": config_error_line(code, stderr)}
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a stderr line is not a JSON log record: {line!r}") from None
    errors = [r for r in records if r.get("level") == "error"]
    assert len(errors) == 1, f"expected one error record, got {len(errors)}: {stderr}"
    assert errors[0].get("exit_code") == code, (errors[0], code)
    assert "internal error" not in errors[0]["msg"], errors[0]
    return errors[0]


# -- a small tmpfs, as root ---------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(size: str = "16k") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` on a temporary mount point; skips (saying why) without root."""
    point = Path(tempfile.mkdtemp(prefix="ztr-rel-mnt-"))
    try:
        reason = ""
        if os.geteuid() != 0:
            reason = "not root: cannot mount a small tmpfs"
        else:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                                   str(point)], capture_output=True, text=True)
            if done.returncode != 0:
                reason = f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}"
        if reason:
            print(f"SKIP: {reason}")
            pytest.skip(reason)
        try:
            yield point
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(point)], capture_output=True)
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
    finally:
        with contextlib.suppress(OSError):
            point.rmdir()


def remount(point: Path, mode: str) -> None:
    """``mode`` is "ro" or "rw"."""
    done = subprocess.run(["mount", "-o", f"remount,{mode}", str(point)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def fill(directory: Path) -> Path:
    """Fill the filesystem holding ``directory`` to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (4096, 1):  # whole pages, then whatever is left of the last one
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


# -- processes --------------------------------------------------------------------------------


def proc_state(pid: int) -> str | None:
    """The State letter from /proc/PID/stat, or None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def children_of(ppid: int) -> list[int]:
    return list(print_signals.children_of(ppid))


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` has no process (not even a zombie) or is a zombie of a dead parent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = proc_state(pid)
        if state is None or state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False
