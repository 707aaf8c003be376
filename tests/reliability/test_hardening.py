"""Hardening (issue "Harden"): disappearing secrets, values that break parsers, every signal at
every moment, the working directory, core dumps, the environment's size, notify PIDs.

Each case runs the real CLI against a moto server on 127.0.0.1 and fails on the code before the
fix it guards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.print_signals import Session, child_argv
from tests.helpers.proc import Proc, http, metric
from tests.helpers.ztr import ZTR, ZTR_RUN, run


@pytest.fixture
def env_plain() -> dict[str, str]:
    """USE_AWS_SECRETS=false: ztr-run contacts no endpoint and only supervises."""
    return {**os.environ, "USE_AWS_SECRETS": "false", "ZTR_LOG_FORMAT": "json"}


PRINT_ENV = ["sh", "-c", 'echo "A=${A:-unset} B=${B:-unset}"; exec sleep 60']


def _refresh(proc: Proc) -> dict[str, Any]:
    status, body = http(proc.metrics_addr() + "/refresh", method="POST", timeout=30)
    return {"status": status, **json.loads(body)}


# -- a secret that disappears never holds back another ----------------------------------------


@pytest.mark.parametrize("how", ["optional", "prefix"])
def test_watch_vanished_optional_secret_is_gone_and_others_rotate(
    how: str, sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="hard/app/a", SecretString="a1")
    sm.create_secret(Name="hard/app/b", SecretString="b1")
    out = shm / "app.env"
    declare = (["--secret", "A=hard/app/a", "--secret", "B=hard/app/b?optional"] if how == "optional"
               else ["--prefix", "hard/app/"])
    proc = Proc([ZTR, "watch", *declare, "--output", str(out), "--format", "json",
                 "--refresh-interval", "1h"], ztr_env)
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        assert json.loads(out.read_text()) == {"A": "a1", "B": "b1"}
        sm.delete_secret(SecretId="hard/app/b", ForceDeleteWithoutRecovery=True)
        sm.put_secret_value(SecretId="hard/app/a", SecretString="a2")
        result = _refresh(proc)
        assert result["status"] == 200, result
        assert json.loads(out.read_text()) == {"A": "a2"}
        assert http(proc.metrics_addr() + "/readyz")[0] == 200
        result = _refresh(proc)  # and the next cycle is not an error either
        assert result["status"] == 200, result
    finally:
        proc.stop()


def test_watch_required_secret_deleted_keeps_last_value_and_others_rotate(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="hard/req/a", SecretString="a1")
    sm.create_secret(Name="hard/req/b", SecretString="b1")
    out = shm / "app.env"
    proc = Proc([ZTR, "watch", "--secret", "A=hard/req/a", "--secret", "B=hard/req/b",
                 "--output", str(out), "--format", "json", "--refresh-interval", "1h"], ztr_env)
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        sm.delete_secret(SecretId="hard/req/b")  # scheduled for deletion
        sm.put_secret_value(SecretId="hard/req/a", SecretString="a2")
        result = _refresh(proc)
        assert result["status"] == 502
        assert list(result["failed"]) == ["hard/req/b"]
        assert json.loads(out.read_text()) == {"A": "a2", "B": "b1"}  # B: last good value
        page = http(proc.metrics_addr() + "/metrics")[1]
        assert metric(page, "ztr_secret_check_failures_total", {"secret": "hard/req/b"}) == 1.0
        assert metric(page, "ztr_secret_changes_total", {"name": "A"}) == 1.0
    finally:
        proc.stop()


def test_run_optional_secret_deleted_restarts_app_without_it(
    sm: Any, ztr_env: dict[str, str]
) -> None:
    sm.create_secret(Name="hard/run/a", SecretString="a1")
    sm.create_secret(Name="hard/run/b", SecretString="b1")
    proc = Proc([ZTR_RUN, "--secret", "A=hard/run/a", "--secret", "B=hard/run/b?optional",
                 "--refresh-interval", "1h", "--debounce", "0s", "--min-uptime", "0s", "--",
                 *PRINT_ENV], {**ztr_env, "B": "inherited"})
    try:
        proc.wait_stdout("A=a1 B=b1")
        sm.delete_secret(SecretId="hard/run/b", ForceDeleteWithoutRecovery=True)
        assert _refresh(proc)["status"] == 200
        proc.wait_stdout("A=a1 B=inherited")  # back to the inherited value
    finally:
        proc.stop()


def test_init_deeply_nested_json_value_exits_65_not_70(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    # As SecretBinary: moto (in this process) would itself choke on parsing such a SecretString.
    deep = '{"k": ' + "[" * 100_000 + "]" * 100_000 + "}"
    sm.create_secret(Name="hard/deep", SecretBinary=deep.encode())
    result = run(["init", "--secret", "K=hard/deep#k", "--output", str(shm / "e")], ztr_env)
    assert result.code == 65, result.stderr
    assert "Traceback" not in result.stderr
    assert not (shm / "e").exists()


# -- signals -------------------------------------------------------------------------------


class BlackHole:
    """An endpoint that accepts connections and never answers; counts what it accepted."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self.done.is_set():
            try:
                self.held.append(self.server.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self.done.set()
        self.thread.join(2)
        for conn in self.held:
            conn.close()
        self.server.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("command", ["init", "run", "watch"])
def test_signal_during_hanging_startup_load_stops_within_a_second(
    command: str, signum: int, black_hole: BlackHole, ztr_env: dict[str, str], shm: Path
) -> None:
    env = {**ztr_env, "AWS_ENDPOINT_URL_SECRETS_MANAGER": black_hole.url}
    args = {"init": [ZTR, "init", "--output", str(shm / "e")],
            "watch": [ZTR, "watch", "--output", str(shm / "e")],
            "run": [ZTR_RUN]}[command]
    tail = ["--", "true"] if command == "run" else []
    proc = Proc([*args, "--secret", "A=hard/x", "--secret", "B=hard/y", *tail], env)
    try:
        proc.wait_log("Loading secrets from AWS Secrets Manager")
        # The request reached the black hole: the load is now waiting in botocore's read.
        proc.wait_until(lambda: black_hole.held, timeout=10, what="the connection accepted")
        sent = time.monotonic()
        proc.signal(signum)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        proc.stop()
    assert code == 128 + signum
    assert elapsed < 1.0, f"took {elapsed:.2f}s to stop"
    assert not (shm / "e").exists()


CATCHABLE_EXTRA = (signal.SIGALRM, signal.SIGPWR, signal.SIGILL, signal.SIGTRAP, signal.SIGABRT,
                   signal.SIGSYS, signal.SIGVTALRM, signal.SIGPROF, signal.SIGXCPU, signal.SIGURG,
                   signal.SIGIO, signal.SIGSTKFLT, signal.SIGRTMIN)


def test_run_forwards_every_catchable_signal_and_survives(env_plain: dict[str, str]) -> None:
    with Session([ZTR_RUN, "--", *child_argv("--keep-running")], env_plain) as session:
        session.until_ready()
        for signum in CATCHABLE_EXTRA:
            session.proc.send_signal(signum)
            assert session.line() == signum.name
        session.proc.send_signal(signal.SIGTERM)
        assert session.line() == "SIGTERM"
        session.proc.send_signal(signal.SIGKILL)  # the child keeps running: end it all
        session.wait()


def test_run_moves_itself_to_root_and_app_keeps_its_directory(
    env_plain: dict[str, str], tmp_path: Path
) -> None:
    proc = Proc([ZTR_RUN, "--", "sh", "-c", "pwd; exec sleep 60"],
                {**env_plain, "PWD": str(tmp_path)}, cwd=str(tmp_path))
    try:
        proc.wait_stdout(str(tmp_path))
        proc.wait_until(lambda: os.readlink(f"/proc/{proc.pid}/cwd") == "/", timeout=5,
                        what="ztr-run to move to /")
    finally:
        proc.stop()


_DUMPABLE = "import ctypes; print('dumpable', ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"


def test_forbid_core_dumps_makes_the_process_undumpable() -> None:
    """PR_GET_DUMPABLE (3) after ztr's call, in a fresh interpreter."""
    script = f"from sidecar.process import forbid_core_dumps; forbid_core_dumps(); {_DUMPABLE}"
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["dumpable", "0"], result.stderr


def test_run_app_stays_dumpable_while_ztr_is_not(env_plain: dict[str, str]) -> None:
    """The app's own core settings are untouched (exec resets the flag), while ztr-run's own
    process is not dumpable: its /proc files are root's, whoever it runs as."""
    proc = Proc([ZTR_RUN, "--", sys.executable, "-c",
                 _DUMPABLE + "; import time; time.sleep(60)"], env_plain)
    try:
        proc.wait_stdout("dumpable 1")
    finally:
        proc.stop()


def test_run_sigterm_right_after_the_load_starts_nothing(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    """SIGTERM sent as soon as the load succeeded (while outputs are written, or just after) ends
    ztr-run without an app. The race is retried until the signal wins it once."""
    sm.create_secret(Name="hard/term", SecretString="v")
    marker = shm / "started"
    for attempt in range(20):
        proc = Proc([ZTR_RUN, "--secret", "A=hard/term", "--output", str(shm / "e"), "--",
                     "sh", "-c", f"touch {marker}; exec sleep 60"], ztr_env)
        try:
            proc.wait_log("Successfully loaded secrets from AWS Secrets Manager")
            proc.signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
        finally:
            proc.stop()
        assert code in (0, 143), code
        if code == 143 and proc.count_log("Started the app") == 0:
            assert not marker.exists()
            return  # the stop won before the app started: nothing ran
        marker.unlink(missing_ok=True)
    pytest.fail("SIGTERM right after the load never stopped ztr-run before the app")


# -- the environment, notify PIDs, one secret by name and by ARN ----------------------------------


def test_run_environment_over_the_exec_limit_exits_65_naming_variables(
    sm: Any, ztr_env: dict[str, str]
) -> None:
    big = "x" * 120_000  # under the per-variable limit
    for i in range(4):
        sm.create_secret(Name=f"hard/big{i}", SecretString=big)
    secrets = [arg for i in range(4) for arg in ("--secret", f"BIG{i}=hard/big{i}")]
    script = "import resource; resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, 1 << 20))"
    # A 1 MiB stack makes the kernel's total limit 256 KiB: four 120 KB variables exceed it.
    result = subprocess.run(
        ["python3", "-c", f"{script}; import os; os.execv({ZTR_RUN!r}, [{ZTR_RUN!r}, "
         + ", ".join(repr(a) for a in [*secrets, "--", "true"]) + "])"],
        env=ztr_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 65, result.stderr
    assert "over the kernel's" in result.stderr
    assert "BIG" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("content", ["0", "1", "-1", "garbage", "", "99999999999999999999"])
def test_watch_notify_pid_file_never_signals_bad_pids(
    content: str, sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="hard/notify", SecretString="v1")
    pid_file = shm / "pid"
    pid_file.write_text(content)
    proc = Proc([ZTR, "watch", "--secret", "A=hard/notify", "--output", str(shm / "e"),
                 "--refresh-interval", "1h", "--debounce", "0s", "--notify-signal", "SIGTERM",
                 "--notify-pid-file", str(pid_file)], ztr_env)
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        sm.put_secret_value(SecretId="hard/notify", SecretString="v2")
        _refresh(proc)
        proc.wait_until(lambda: any(e.get("msg", "").startswith("Could not notify")
                                    for e in proc.logs()), what="the notify warning")
        page = http(proc.metrics_addr() + "/metrics")[1]
        assert (metric(page, "ztr_reaction_failures_total", {"reason": "notify_pid_file"}) or 0) >= 1
        assert proc.popen.poll() is None  # ztr (or its group) was not signalled
    finally:
        proc.stop()


def test_run_same_secret_by_name_and_arn_loads_both(sm: Any, ztr_env: dict[str, str]) -> None:
    created = sm.create_secret(Name="hard/both", SecretString="v")
    sm.create_secret(Name="hard/other", SecretString="o")
    full, partial = created["ARN"], created["ARN"][:-7]
    result = run(["run", "--secret", "A=hard/both", "--secret", f"B={full}", "--secret",
                  f"C={partial}", "--secret", "D=hard/other", "--once", "--", "sh", "-c",
                  'echo "$A $B $C $D"'], ztr_env)
    assert result.code == 0, result.stderr
    assert result.stdout.split() == ["v", "v", "v", "o"]


# -- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "toml"), [
    (["--timeout", "1e10"], None),
    (["--timeout", "99999999999h"], None),
    ([], "timeout = inf\n"),
    ([], "refresh_interval = 1e300\n"),
])
def test_huge_durations_are_refused_with_64(
    args: list[str], toml: str | None, ztr_env: dict[str, str], tmp_path: Path
) -> None:
    extra = []
    if toml is not None:
        (tmp_path / "z.toml").write_text(toml)
        extra = ["--config", str(tmp_path / "z.toml")]
    result = run(["watch", "--secret", "A=x", "--output", "/dev/shm/ztr-never", *args, *extra],
                 ztr_env, timeout=30)
    assert result.code == 64, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    record = json.loads(result.stderr)  # JSON lines by default, config errors too
    assert record["exit_code"] == 64


# -- the small ones -------------------------------------------------------------------------


def test_watch_version_info_follows_a_new_version_with_the_same_content(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="hard/same", SecretString="same")
    proc = Proc([ZTR, "watch", "--secret", "A=hard/same", "--output", str(shm / "e"),
                 "--refresh-interval", "1h"], ztr_env)
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        new = sm.put_secret_value(SecretId="hard/same", SecretString="same")["VersionId"]
        result = _refresh(proc)
        assert result["status"] == 200
        assert result["changed"] == []
        page = http(proc.metrics_addr() + "/metrics")[1]
        assert metric(page, "ztr_secret_version_info", {"name": "A", "version_id": new}) == 1.0
        assert page.count("ztr_secret_version_info{") == 1  # the old version's series is gone
    finally:
        proc.stop()


@pytest.mark.parametrize("option", ["stage=AWSPREVIOUS", "version=" + "0" * 32])
def test_init_missing_pinned_stage_or_version_lists_versions_not_did_you_mean(
    option: str, sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    created = sm.create_secret(Name="hard/pinned", SecretString="v1")
    result = run(["init", "--secret", f"A=hard/pinned?{option}", "--output", str(shm / "e")],
                 ztr_env)
    assert result.code == 66, result.stderr
    message = next(e for e in result.logs() if e.get("level") == "error")["msg"]
    assert "did you mean" not in message
    assert created["VersionId"] in message  # the versions it does have
    assert "?version= or ?stage=" in message


# -- terminals and job control ----------------------------------------------------------------


def _on_terminal(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv`` as the session leader of a new pseudo-terminal (its controlling terminal,
    as `docker run -it` gives one); returns the process and the master side."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=take_terminal)
    os.close(slave)
    return proc, master


def _read_until(master: int, text: bytes, timeout: float) -> bytes:
    import select as select_mod

    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {text!r} within {timeout}s; got {seen[-300:]!r}")
        ready, _, _ = select_mod.select([master], [], [], remaining)
        if ready:
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
    return seen


def test_run_app_reading_the_terminal_at_once_is_never_stopped(env_plain: dict[str, str]) -> None:
    """The app reads its terminal as its first act: it must own the terminal by then (20 runs;
    before, up to a third hung in SIGTTIN under load)."""
    for attempt in range(20):
        proc, master = _on_terminal(
            [ZTR_RUN, "--log-format", "text", "--", "sh", "-c", "read line; echo got-$line"],
            env_plain)
        try:
            os.write(master, b"hello\n")
            _read_until(master, b"got-hello", timeout=10)
            assert proc.wait(timeout=10) == 0, f"attempt {attempt}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)


def test_run_job_control_stops_and_resumes_ztr_and_app(env_plain: dict[str, str]) -> None:
    from tests.reliability.conftest import children_of, proc_state

    proc = Proc([ZTR_RUN, "--", "sleep", "60"], env_plain)
    try:
        proc.wait_until(lambda: children_of(proc.pid), what="the app")
        app = children_of(proc.pid)[0]
        proc.signal(signal.SIGTSTP)
        proc.wait_until(lambda: proc_state(app) == "T" and proc_state(proc.pid) == "T",
                        timeout=5, what="the app and ztr stopped")
        proc.signal(signal.SIGCONT)
        proc.wait_until(lambda: proc_state(app) == "S" and proc_state(proc.pid) == "S",
                        timeout=5, what="the app and ztr running again")
    finally:
        assert proc.stop() == 128 + signal.SIGTERM
