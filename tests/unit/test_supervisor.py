"""supervisor: exit statuses and command resolution (table-driven), and the Supervisor's reactions
to Restart / Exit / Forward / run_aside with real short-lived children, in this process."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.process import resolve_command
from sidecar.signals import SignalInbox
from sidecar.supervisor import (
    TIMED_OUT,
    Exit,
    Forward,
    Restart,
    SpawnError,
    Supervisor,
    exit_code_of,
)

pytestmark = pytest.mark.timeout(20)


# -- exit_code_of ---------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "expected"), [
    (0 << 8, 0),
    (1 << 8, 1),
    (3 << 8, 3),
    (127 << 8, 127),
    (255 << 8, 255),
    (signal.SIGKILL, 137),
    (signal.SIGTERM, 143),
    (signal.SIGSEGV | 0x80, 139),  # the core-dumped bit does not change the code
])
def test_exit_code_of_wait_status_shell_code(status: int, expected: int) -> None:
    assert exit_code_of(status) == expected


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1])
def test_exit_code_of_real_death_by_signal_128_plus_n(signum: int) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.kill(os.getpid(), signum)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert exit_code_of(status) == 128 + signum


# -- resolve_command ------------------------------------------------------------------------


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """app (executable), data (not executable), sub/ (a directory)."""
    (tmp_path / "app").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "app").chmod(0o755)
    (tmp_path / "data").write_text("not a program\n")
    (tmp_path / "data").chmod(0o644)
    (tmp_path / "sub").mkdir()
    return tmp_path


def test_resolve_command_name_uses_childs_path(bin_dir: Path) -> None:
    assert resolve_command("app", {"PATH": f"/nonexistent:{bin_dir}"}) == str(bin_dir / "app")


def test_resolve_command_path_returned_as_given(bin_dir: Path) -> None:
    assert resolve_command(str(bin_dir / "app"), {"PATH": ""}) == str(bin_dir / "app")


@pytest.mark.parametrize(("argv0", "path", "code"), [
    ("{dir}/missing", "{dir}", 127),
    ("missing", "{dir}", 127),
    ("app", "/nonexistent", 127),       # the child's PATH counts, not ztr's
    ("{dir}/data", "{dir}", 126),
    ("{dir}/sub", "{dir}", 126),
    ("data", "/nonexistent:{dir}", 126),
])
def test_resolve_command_unusable_raises_spawn_error(bin_dir: Path, argv0: str, path: str,
                                                     code: int) -> None:
    with pytest.raises(SpawnError) as caught:
        resolve_command(argv0.format(dir=bin_dir), {"PATH": path.format(dir=bin_dir)})
    assert caught.value.exit_code == code


# -- Supervisor, with real children -----------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", os.defpath), **extra}


_INBOXES: list[SignalInbox] = []


@pytest.fixture(autouse=True)
def _uninstall_inboxes() -> Iterator[None]:
    yield
    while _INBOXES:
        inbox = _INBOXES.pop()
        inbox.uninstall()
        inbox.close()


def _supervisor(script: str, env: dict[str, str], **kwargs: object) -> Supervisor:
    # No subreaper here: this process is pytest, and must not adopt other tests' orphans.
    inbox = SignalInbox().install()  # as cli.main does for the whole process
    _INBOXES.append(inbox)
    return Supervisor(["sh", "-c", script], env, inbox=inbox, subreaper=lambda: False,
                      **kwargs)  # type: ignore[arg-type]


def _in_thread(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def _wait_for_lines(path: Path, count: int, timeout: float = 5) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.01)
    raise AssertionError(f"{path} did not reach {count} lines")


def test_supervisor_child_exits_returns_its_code() -> None:
    assert _supervisor("exit 3", _env(), grace_seconds=5).run() == 3


def test_supervisor_command_missing_raises_127() -> None:
    supervisor = Supervisor(["ztr-test-no-such-app"], _env(), inbox=SignalInbox(), grace_seconds=5,
                            subreaper=lambda: False)
    with pytest.raises(SpawnError) as caught:
        supervisor.run()
    assert caught.value.exit_code == 127


def test_supervisor_restart_submitted_starts_child_with_new_env(tmp_path: Path) -> None:
    log = tmp_path / "generations"
    starts: list[int] = []
    exits: list[int] = []
    supervisor = _supervisor(f'echo "$GEN" >> {log}; exec sleep 30', _env(GEN="1"),
                             grace_seconds=5, on_start=starts.append, on_exit=exits.append)

    def rotate() -> None:
        _wait_for_lines(log, 1)
        supervisor.submit(Restart(_env(GEN="2")))
        _wait_for_lines(log, 2)
        supervisor.submit(Exit(75))

    thread = _in_thread(rotate)
    started = time.monotonic()
    assert supervisor.run() == 75
    thread.join(5)
    assert log.read_text().splitlines() == ["1", "2"]
    assert len(set(starts)) == 2
    assert exits == [143, 143]  # each generation stopped by SIGTERM, not the grace period
    assert time.monotonic() - started < 5


def test_supervisor_exit_submitted_after_restart_wins(tmp_path: Path) -> None:
    supervisor = _supervisor("exec sleep 30", _env(), grace_seconds=5)
    supervisor.submit(Exit(75))
    supervisor.submit(Restart(_env()))  # arrives while the child stops: too late to undo the exit
    assert supervisor.run() == 75


def test_supervisor_forward_submitted_reaches_child(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f'trap "exit 4" USR1; echo ready > {ready}; while :; do sleep 0.05; done'
    supervisor = _supervisor(script, _env(), grace_seconds=5)

    def notify() -> None:
        _wait_for_lines(ready, 1)
        supervisor.submit(Forward(signal.SIGUSR1))

    _in_thread(notify)
    assert supervisor.run() == 4


def test_supervisor_run_aside_returns_code_and_app_keeps_running(tmp_path: Path) -> None:
    codes: list[int] = []
    supervisor = _supervisor("exec sleep 30", _env(), grace_seconds=5)
    exits: list[int] = []
    supervisor.on_exit = exits.append

    def verify() -> None:
        codes.append(supervisor.run_aside(["sh", "-c", "exit 5"], _env(), timeout=5))
        codes.append(supervisor.run_aside(["sleep", "30"], _env(), timeout=0.2))
        supervisor.submit(Exit(0))

    _in_thread(verify)
    assert supervisor.run() == 0
    assert codes == [5, TIMED_OUT]
    assert exits == [143]  # the app ran until the Exit, not stopped by the asides


def test_supervisor_child_ignoring_sigterm_killed_at_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    supervisor = _supervisor(f'trap "" TERM; echo > {ready}; exec sleep 30', _env(),
                             grace_seconds=0.3)
    asked: list[float] = []

    def stop() -> None:
        _wait_for_lines(ready, 1)
        asked.append(time.monotonic())
        supervisor.submit(Exit(75))

    _in_thread(stop)
    assert supervisor.run() == 75
    assert 0.3 <= time.monotonic() - asked[0] < 3


def test_signal_inbox_uninstall_restores_signal_handlers() -> None:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGCHLD)}
    inbox = SignalInbox().install()
    assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
    inbox.uninstall()
    inbox.close()
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_restart_repr_holds_no_environment_values() -> None:
    from sidecar.supervisor import Restart

    assert "s3cr3t-value" not in repr(Restart({"DB": "s3cr3t-value"}))
