"""ztr-run as a supervisor, with real processes: exit codes, signal forwarding, zombies, the grace
period, --once, the terminal; side by side with Debian's tini and dumb-init where they apply.

Every scenario that tini and dumb-init also cover runs under each of them with the same
expectation, so a difference between ztr-run and the reference inits fails the same assertion.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.print_signals import (
    Session,
    child_argv,
    is_gone,
    status,
    wait_for,
    zombies_of,
)
from tests.helpers.ztr import ZTR_RUN

pytestmark = pytest.mark.timeout(30)

# The order the test sends them in: the stopping signals last, and the child keeps running.
FORWARDED = (
    signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
    signal.SIGCONT, signal.SIGINT, signal.SIGTERM,
)
# tini: -s registers it as a subreaper (as ztr-run is), -g signals the child's group (as
# ztr-run and dumb-init do). dumb-init's defaults already match.
SUPERVISORS = {
    "ztr-run": [ZTR_RUN, "--"],
    "tini": ["tini", "-s", "-g", "--"],
    "dumb-init": ["dumb-init"],
}


def _supervisor(name: str) -> list[str]:
    if name != "ztr-run" and shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (apt-get install -y {name}): "
                    "the side-by-side comparison needs Debian's package")
    return SUPERVISORS[name]


@pytest.fixture(params=list(SUPERVISORS))
def supervisor(request: pytest.FixtureRequest) -> list[str]:
    """ztr-run, then each reference init, all held to the same expectation."""
    return _supervisor(request.param)


@pytest.fixture(params=["ztr-run", "tini"])
def exec_supervisor(request: pytest.FixtureRequest) -> list[str]:
    """For exec failures: dumb-init exits 2 for those, tini and ztr-run 127 / 126."""
    return _supervisor(request.param)


@pytest.fixture
def env() -> dict[str, str]:
    """USE_AWS_SECRETS=false: ztr contacts no endpoint and still supervises."""
    return {**os.environ, "USE_AWS_SECRETS": "false", "ZTR_LOG_FORMAT": "json"}


def _run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[int, Any]:
    with Session(argv, env, cwd=cwd) as session:
        rest = session.rest(timeout=15)
        return session.wait(), (rest, session.stderr)


# -- exit codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 2, 3, 127, 255])
def test_run_child_exit_code_passes_through(supervisor: list[str], env: dict[str, str],
                                            code: int) -> None:
    result, output = _run([*supervisor, "sh", "-c", f"exit {code}"], env)
    assert result == code, output


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_run_child_killed_by_signal_exits_128_plus_n(supervisor: list[str], env: dict[str, str],
                                                     signum: signal.Signals,
                                                     tmp_path: Path) -> None:
    script = f"ulimit -c 0; kill -{signum.name[3:]} $$"  # no core file, even for SIGSEGV
    result, output = _run([*supervisor, "sh", "-c", script], env, cwd=tmp_path)
    assert result == 128 + signum, output


@pytest.mark.parametrize("command", ["/nonexistent/ztr-test-app", "ztr-test-no-such-app"])
def test_run_command_missing_exits_127(exec_supervisor: list[str], env: dict[str, str],
                                       command: str) -> None:
    result, output = _run([*exec_supervisor, command], env)
    assert result == 127, output


@pytest.mark.parametrize("where", ["file", "directory", "path"])
def test_run_command_not_executable_exits_126(exec_supervisor: list[str], env: dict[str, str],
                                              tmp_path: Path, where: str) -> None:
    target = tmp_path / "app"
    if where == "directory":
        target.mkdir()
    else:
        target.write_text("#!/bin/sh\nexit 0\n")
        target.chmod(0o644)
    command = "app" if where == "path" else str(target)
    if where == "path":
        env = {**env, "PATH": f"{tmp_path}:{env.get('PATH', os.defpath)}"}
    result, output = _run([*exec_supervisor, command], env)
    assert result == 126, output


@pytest.mark.parametrize(("make", "code"), [("missing", 127), ("not-executable", 126)])
def test_run_once_command_unusable_exits_127_or_126(env: dict[str, str], tmp_path: Path,
                                                    make: str, code: int) -> None:
    target = tmp_path / "app"
    if make == "not-executable":
        target.write_text("#!/bin/sh\nexit 0\n")
    result, output = _run([ZTR_RUN, "--once", "--", str(target)], env)
    assert result == code, output


# -- signals --------------------------------------------------------------------------------


def test_run_forwarded_signals_arrive_once_in_order(supervisor: list[str],
                                                    env: dict[str, str]) -> None:
    with Session([*supervisor, *child_argv("--keep-running", "--pid")], env) as session:
        child = session.until_ready()["pid"][0]
        for signum in FORWARDED:
            session.send(signum)
            assert session.line() == signum.name
        os.kill(child, signal.SIGKILL)
        assert session.rest() == ""  # nothing received twice, nothing late
        assert session.wait() == 128 + signal.SIGKILL


@pytest.mark.parametrize(("options", "expected"), [
    ((), 128 + signal.SIGTERM),   # the app exits 128+N itself
    (("--code", "0"), 0),         # a graceful app exits 0
])
def test_run_sigterm_exit_status_is_childs(supervisor: list[str], env: dict[str, str],
                                           options: tuple[str, ...], expected: int) -> None:
    with Session([*supervisor, *child_argv(*options)], env) as session:
        session.until_ready()
        session.send(signal.SIGTERM)
        assert session.line() == "SIGTERM"
        assert session.wait() == expected


def test_run_sigterm_child_killed_by_it_exits_143(supervisor: list[str],
                                                  env: dict[str, str]) -> None:
    with Session([*supervisor, "sh", "-c", "echo ready; exec sleep 60"], env) as session:
        assert session.line() == "ready"
        session.send(signal.SIGTERM)
        assert session.wait() == 128 + signal.SIGTERM


# -- zombies --------------------------------------------------------------------------------


def test_run_orphans_adopted_and_reaped_as_subreaper(env: dict[str, str]) -> None:
    with Session([ZTR_RUN, "--", *child_argv("--orphans", "3")], env) as session:
        orphans = session.until_ready()["orphan"]
        for orphan in orphans:  # adopted, not left to the system's init
            assert (status(orphan) or {}).get("PPid") == str(session.pid)
            os.kill(orphan, signal.SIGKILL)
        wait_for(lambda: all(status(o) is None for o in orphans), 5,
                 f"orphans {orphans} reaped (not even a zombie)")
        assert zombies_of(session.pid) == []
        session.send(signal.SIGTERM)
        assert session.line() == "SIGTERM"
        assert session.wait() == 128 + signal.SIGTERM


# -- stopping: the grace period -------------------------------------------------------------


def _stop_and_time(session: Session) -> tuple[int, float]:
    started = time.monotonic()
    session.send(signal.SIGTERM)
    code = session.wait(timeout=10)
    return code, time.monotonic() - started


@pytest.mark.timeout(15)
def test_run_child_ignoring_sigterm_killed_after_grace(env: dict[str, str]) -> None:
    argv = [ZTR_RUN, "--grace-period", "1s", "--",
            *child_argv("--ignore-term", "--pid", "--children", "2", "--orphans", "1")]
    with Session(argv, env) as session:
        announced = session.until_ready()
        code, elapsed = _stop_and_time(session)
        assert code == 128 + signal.SIGKILL
        assert 1.0 <= elapsed <= 2.0, f"stopped after {elapsed:.2f}s with --grace-period 1s"
        everyone = announced["pid"] + announced["child"] + announced["orphan"]
        wait_for(lambda: all(is_gone(pid) for pid in everyone), 1,
                 f"the child's whole group {everyone} killed")
        assert session.rest() == ""  # SIGTERM ignored, so never printed


@pytest.mark.timeout(15)
def test_run_leftovers_ignoring_sigterm_killed_after_grace(env: dict[str, str]) -> None:
    argv = [ZTR_RUN, "--grace-period", "1s", "--",
            *child_argv("--descendants-ignore-term", "--children", "1", "--orphans", "1")]
    with Session(argv, env) as session:
        announced = session.until_ready()
        code, elapsed = _stop_and_time(session)
        assert code == 128 + signal.SIGTERM  # the app's own status, not the leftovers'
        assert 1.0 <= elapsed <= 2.0, f"stopped after {elapsed:.2f}s with --grace-period 1s"
        leftovers = announced["child"] + announced["orphan"]
        wait_for(lambda: all(is_gone(pid) for pid in leftovers), 1,
                 f"what was left of the child's group {leftovers} killed")


def test_run_sigterm_obeyed_exits_without_waiting_grace(env: dict[str, str]) -> None:
    argv = [ZTR_RUN, "--grace-period", "20s", "--", *child_argv("--children", "1")]
    with Session(argv, env) as session:
        sleeper = session.until_ready()["child"]
        code, elapsed = _stop_and_time(session)
        assert code == 128 + signal.SIGTERM
        assert elapsed < 5, f"waited {elapsed:.2f}s for an app that had stopped"
        wait_for(lambda: all(is_gone(pid) for pid in sleeper), 1, "its own child stopped too")


def test_run_child_exit_stops_its_group(env: dict[str, str]) -> None:
    argv = [ZTR_RUN, "--", *child_argv("--children", "1", "--exit", "4")]
    with Session(argv, env) as session:
        sleeper = session.until_ready()["child"]
        assert session.wait() == 4
        wait_for(lambda: all(is_gone(pid) for pid in sleeper), 1,
                 "a helper the app left in its group stopped with it")


# -- --once ---------------------------------------------------------------------------------


def test_run_once_keeps_pid(env: dict[str, str]) -> None:
    with Session([ZTR_RUN, "--once", "--", *child_argv("--pid", "--exit", "5")], env) as session:
        assert session.until_ready()["pid"] == [session.pid]
        assert session.wait() == 5


@pytest.mark.parametrize("mode", [["--once"], []], ids=["once", "supervised"])
def test_run_child_sees_sigpipe_default_and_empty_mask(env: dict[str, str],
                                                       mode: list[str]) -> None:
    # grep is the child itself and leaves its signal state alone: /proc/self/status shows
    # what it inherited (a shell would show its own, and CPython ignores SIGPIPE at start-up).
    probe = ["grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"]
    result, (out, err) = _run([ZTR_RUN, *mode, "--", *probe], env)
    assert result == 0, err
    masks = {key: int(value, 16) for key, _, value in
             (line.partition(":\t") for line in out.splitlines())}
    assert not masks["SigIgn"] & (1 << (signal.SIGPIPE - 1)), "SIGPIPE still ignored"
    assert masks["SigIgn"] & 0x7FFF_FFFF == 0, f"standard signals ignored: {masks['SigIgn']:#x}"
    assert masks["SigBlk"] == 0


# -- with secrets from the moto server ------------------------------------------------------


def test_run_with_secret_child_gets_it_and_forwarded_signals(ztr_env: dict[str, str],
                                                             sm: Any) -> None:
    sm.create_secret(Name="app/db", SecretString="s3cret-value")
    script = ('test "$DB_PASSWORD" = s3cret-value || exit 99; '
              f'exec {" ".join(child_argv("--keep-running", "--pid"))}')
    argv = [ZTR_RUN, "--secret", "DB_PASSWORD=app/db", "--", "sh", "-c", script]
    with Session(argv, ztr_env) as session:  # the watcher thread runs beside the loop here
        child = session.until_ready(timeout=20)["pid"][0]
        for signum in FORWARDED:
            session.send(signum)
            assert session.line() == signum.name
        os.kill(child, signal.SIGKILL)
        assert session.rest() == ""
        assert session.wait() == 128 + signal.SIGKILL


def test_run_with_secret_once_keeps_pid(ztr_env: dict[str, str], sm: Any) -> None:
    sm.create_secret(Name="app/db", SecretString="s3cret-value")
    argv = [ZTR_RUN, "--once", "--secret", "DB_PASSWORD=app/db", "--",
            *child_argv("--pid", "--exit", "3")]
    with Session(argv, ztr_env) as session:
        assert session.until_ready(timeout=20)["pid"] == [session.pid]
        assert session.wait() == 3


def test_run_missing_secret_starts_nothing(ztr_env: dict[str, str], sm: Any,
                                           tmp_path: Path) -> None:
    marker = tmp_path / "started"
    argv = [ZTR_RUN, "--secret", "DB_PASSWORD=app/missing", "--", "touch", str(marker)]
    result, (_, err) = _run(argv, ztr_env)
    assert result == 66, err
    assert not marker.exists()


# -- the terminal ---------------------------------------------------------------------------


def test_run_on_tty_child_in_foreground_and_ctrl_c_reaches_it_once(
        supervisor: list[str], env: dict[str, str]) -> None:
    if shutil.which("setsid") is None:
        pytest.skip("needs setsid(1) from util-linux to give the supervisor a terminal")
    master, slave = os.openpty()
    try:
        # setsid --ctty: a new session whose controlling terminal is stdin (the pty), as a
        # login shell or `docker run -it` gives one.
        argv = ["setsid", "--ctty", *supervisor,
                *child_argv("--keep-running", "--pid", "--tty")]
        with Session(argv, env, stdin=slave) as session:
            announced: list[str] = []
            while (line := session.line(10)) != "ready":
                announced.append(line)
            assert "foreground yes" in announced
            os.write(master, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
            assert session.line() == "SIGINT"
            session.send(signal.SIGUSR1)  # a second SIGINT, if any, would be forwarded first
            assert session.line() == "SIGUSR1"
            child = next(int(line.split()[1]) for line in announced if line.startswith("pid "))
            os.kill(child, signal.SIGKILL)
            assert session.wait() == 128 + signal.SIGKILL
    finally:
        os.close(master)
        os.close(slave)
