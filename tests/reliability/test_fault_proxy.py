"""Every fault the proxy can make of the network, at start-up and during refresh:

connection refused (``set_down``), a reset before the status line, a response cut mid-body,
answers slower than the read timeout, 500s, ThrottlingException storms and malformed bodies.

At start-up a passing fault ends in success and a lasting one in exit 69 with one error record:
no traceback, no file written (the last good file left as it was), no child started. During
refresh a lasting fault is a counted, logged error that leaves the file and the child alone
(same PID, not one signal); a passing fault plus a rotation ends in exactly one restart with
the new value. Kinds run in parallel (each with its own proxy, secret and processes) so the
deadline-bound cases cost seconds, not minutes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faultproxy import FaultProxy
from tests.helpers.print_signals import child_argv
from tests.helpers.proc import Proc, http, metric
from tests.helpers.ztr import ZTR_RUN, run
from tests.reliability.conftest import error_record, proc_state

KINDS = ("down", "reset", "truncated", "slow", "500", "throttle", "malformed")
TRANSIENT = {"slow": 1}  # how many requests a passing fault spoils (default 2)
REFRESH_FAILED = "Refresh failed; keeping the last good values"
SLOW_SECONDS = 3.0  # > the 1 s read timeout that --timeout 3s gives each attempt


@pytest.fixture
def proxies(endpoint: str) -> Iterator[Callable[[], FaultProxy]]:
    """A factory of started FaultProxies in front of this test's moto, all stopped at the end."""
    started: list[FaultProxy] = []

    def make() -> FaultProxy:
        proxy = FaultProxy(endpoint)
        proxy.slow_seconds = SLOW_SECONDS
        proxy.start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def inject(proxy: FaultProxy, kind: str, *, lasting: bool) -> None:
    """A lasting fault spoils every request until ``clear``; a passing one only the next few
    (``down``: the endpoint comes back after 0.6 s)."""
    if kind == "down":
        proxy.set_down(True)
        if not lasting:
            threading.Timer(0.6, proxy.set_down, args=(False,)).start()
    else:
        proxy.fail_next(10**6 if lasting else TRANSIENT.get(kind, 2), kind)


def clear(proxy: FaultProxy) -> None:
    proxy.set_down(False)
    proxy.clear_faults()


def each_kind(scenario: Callable[[str], None]) -> None:
    """Run ``scenario(kind)`` for every kind at once; fail listing every kind that failed."""
    failures: dict[str, str] = {}

    def guarded(kind: str) -> None:
        try:
            scenario(kind)
        except BaseException as exc:  # collected and reported below
            failures[kind] = f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=len(KINDS)) as pool:
        list(pool.map(guarded, KINDS))
    assert not failures, "\n\n".join(f"[{kind}] {text}" for kind, text in failures.items())


def _env(ztr_env: dict[str, str], proxy: FaultProxy, **extra: str) -> dict[str, str]:
    return dict(ztr_env, AWS_ENDPOINT_URL_SECRETS_MANAGER=proxy.url, **extra)


# -- start-up -----------------------------------------------------------------------------------


def test_startup_lasting_fault_exits_69_leaving_last_good_file_and_no_child(
    sm: Any, ztr_env: dict[str, str], shm: Path, proxies: Callable[[], FaultProxy]
) -> None:
    def scenario(kind: str) -> None:
        proxy = proxies()
        name = f"rel/startup/{kind}"
        sm.create_secret(Name=name, SecretString=f"good-{kind}-v1")
        env = _env(ztr_env, proxy, ZTR_SECRETS=f"DB={name}", ZTR_TIMEOUT="2s")
        out = shm / f"{kind}.env"
        assert run(["init", "--output", str(out)], env).code == 0
        good, inode = out.read_bytes(), out.stat().st_ino
        sm.put_secret_value(SecretId=name, SecretString=f"new-{kind}-v2")
        inject(proxy, kind, lasting=True)

        started = time.monotonic()
        result = run(["init", "--output", str(out)], env, timeout=30)
        assert result.code == 69, result.stderr
        message = error_record(result.code, result.stderr)["msg"]
        assert "gave up: deadline reached" in message, message
        assert time.monotonic() - started < 2 + SLOW_SECONDS + 2
        assert out.read_bytes() == good
        assert out.stat().st_ino == inode
        assert sorted(p.name for p in shm.glob(f"*{kind}*")) == [f"{kind}.env"]  # no temp file

        marker = shm / f"{kind}.started"
        app = run(["--", "sh", "-c", f"touch {marker}"], dict(env, ZTR_METRICS_ADDR="off"),
                  program=ZTR_RUN, timeout=30)
        assert app.code == 69, app.stderr
        error_record(app.code, app.stderr)
        assert not marker.exists()

        clear(proxy)
        assert run(["init", "--output", str(out)], env).code == 0
        assert out.read_text() == f"export DB='new-{kind}-v2'\n"

    each_kind(scenario)


def test_startup_passing_fault_retries_then_starts_child_once(
    sm: Any, ztr_env: dict[str, str], shm: Path, proxies: Callable[[], FaultProxy]
) -> None:
    def scenario(kind: str) -> None:
        proxy = proxies()
        name = f"rel/passing/{kind}"
        sm.create_secret(Name=name, SecretString=f"value-{kind}")
        marker = shm / f"{kind}.starts"
        env = _env(ztr_env, proxy, ZTR_SECRETS=f"DB={name}", ZTR_TIMEOUT="3s",
                   ZTR_METRICS_ADDR="off")
        inject(proxy, kind, lasting=False)
        result = run(["--", "sh", "-c", f'echo "value=$DB"; echo x >> {marker}'], env,
                     program=ZTR_RUN, timeout=30)
        assert result.code == 0, result.stderr
        assert result.stdout.splitlines() == [f"value=value-{kind}"]
        assert marker.read_text() == "x\n"
        assert "Traceback" not in result.stderr
        assert proxy.calls() >= 2 or kind == "down"

    each_kind(scenario)


# -- during refresh -----------------------------------------------------------------------------


def _refresh(proc: Proc) -> tuple[int, dict[str, Any]]:
    status, body = http(proc.metrics_addr() + "/refresh", method="POST", timeout=30)
    return status, json.loads(body)


def _lines_after(proc: Proc, start: int) -> list[str]:
    return list(proc.stdout[start:])


def test_refresh_lasting_fault_keeps_file_and_child_then_passing_fault_restarts_once(
    sm: Any, ztr_env: dict[str, str], shm: Path, proxies: Callable[[], FaultProxy]
) -> None:
    def scenario(kind: str) -> None:
        proxy = proxies()
        name = f"rel/refresh/{kind}"
        sm.create_secret(Name=name, SecretString=f"{kind}-v1")
        out = shm / f"{kind}.env"
        child = ["sh", "-c", 'echo "value=$DB"; exec "$@"', "sh", *child_argv("--pid")]
        proc = Proc([ZTR_RUN, "--secret", f"DB={name}", "--output", str(out),
                     "--refresh-interval", "1h", "--debounce", "0s", "--min-uptime", "0s",
                     "--timeout", "3s", "--", *child], _env(ztr_env, proxy))
        try:
            proc.wait_stdout("ready")
            pid = int(next(line for line in proc.stdout if line.startswith("pid "))[4:])
            good, inode, mark = out.read_bytes(), out.stat().st_ino, len(proc.stdout)

            inject(proxy, kind, lasting=True)
            status, body = _refresh(proc)
            clear(proxy)
            assert (status, body["ok"], body["exit_code"]) == (502, False, 69), body
            assert out.read_bytes() == good
            assert out.stat().st_ino == inode
            assert proc_state(pid) not in (None, "Z", "X"), "the child died"
            assert _lines_after(proc, mark) == [], "the child got a signal"
            page = http(proc.metrics_addr() + "/metrics")[1]
            assert (metric(page, "ztr_refresh_total", {"result": "error"}) or 0) >= 1
            assert metric(page, "ztr_child_up") == 1
            warned = [e for e in proc.logs() if e.get("msg") == REFRESH_FAILED]
            assert warned
            assert all(e.get("exit_code") == 69 for e in warned), warned

            sm.put_secret_value(SecretId=name, SecretString=f"{kind}-v2")
            inject(proxy, kind, lasting=False)
            status, body = _refresh(proc)
            assert status in (200, 502), body  # a background cycle may have taken the change
            proc.wait_stdout(f"value={kind}-v2", timeout=15)
            assert out.read_text() == f"export DB='{kind}-v2'\n"
            assert proc.count_log("Restarting the app with the new secrets") == 1
            proc.wait_stdout("ready", count=2)
            assert proc.stdout[mark:] == ["SIGTERM", f"value={kind}-v2", proc.stdout[-2], "ready"]
            assert proc_state(pid) in (None, "X"), "the old child is not reaped"
        finally:
            code = proc.stop()
        assert code == 143, proc.stderr[-5:]
        assert not any("Traceback" in line for line in proc.stderr)

    each_kind(scenario)
