"""Signals under load: bursts of mixed signals at ``ztr-run`` while it runs the app, while every
refresh is slow (a latency proxy), while every refresh is throttled and retrying, and while a
restart is in progress. Every kind sent after the child is up must reach it (repeats of one
kind may merge in the kernel), the final SIGTERM must land, and nothing may be left: no
zombie under ztr while it runs, no child alive after it exits.

The child is tests/helpers/print_signals.py: it prints "pid N", "ready", then each signal's name.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faultproxy import FaultProxy
from tests.helpers.print_signals import child_argv
from tests.helpers.proc import Proc, http
from tests.helpers.ztr import ZTR_RUN
from tests.reliability.conftest import children_of, proc_state, wait_gone

SECRET = "rel/signals/db"
BURST = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
         signal.SIGQUIT)
NAMES = {s.name for s in BURST}


def burst(pid: int, rounds: int = 4, rng: random.Random | None = None) -> int:
    """Send every kind ``rounds`` times, shuffled; returns how many signals were sent."""
    kinds = list(BURST) * rounds
    (rng or random.Random(7)).shuffle(kinds)
    for signum in kinds:
        os.kill(pid, signum)
        time.sleep(0.002)
    return len(kinds)


def pids_of(proc: Proc) -> list[int]:
    return [int(line[4:]) for line in list(proc.stdout) if line.startswith("pid ")]


def wait_all_kinds(proc: Proc, start: int, what: str) -> None:
    proc.wait_until(lambda: NAMES <= set(proc.stdout[start:]), timeout=5,
                    what=f"every signal kind to reach the child ({what})")


def no_zombies(ztr_pid: int) -> None:
    zombies = [pid for pid in children_of(ztr_pid) if proc_state(pid) == "Z"]
    assert not zombies, f"zombies under ztr-run: {zombies}"


def final_sigterm(proc: Proc, expected: int = 143) -> None:
    seen = pids_of(proc)
    start = len(proc.stdout)
    proc.signal(signal.SIGTERM)
    proc.wait_until(lambda: "SIGTERM" in proc.stdout[start:], timeout=5, what="the final SIGTERM")
    assert proc.wait(timeout=10) == expected
    for pid in seen:
        assert wait_gone(pid), f"child {pid} outlived ztr-run"
    assert not any("Traceback" in line for line in proc.stderr)


def _start(sm: Any, ztr_env: dict[str, str], proxy: FaultProxy | None, *extra: str,
           child: list[str] | None = None) -> Proc:
    sm.create_secret(Name=SECRET, SecretString="v1")
    env = dict(ztr_env)
    if proxy is not None:
        env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = proxy.url
    args = ["--secret", f"DB={SECRET}", "--debounce", "0s", "--min-uptime", "0s", *extra]
    return Proc([ZTR_RUN, *args, "--", *(child or child_argv("--pid"))], env)


@pytest.mark.parametrize("phase", ["run", "load", "retry"])
def test_run_signal_burst_reaches_child_then_sigterm_lands(
    sm: Any, ztr_env: dict[str, str], fault_proxy: FaultProxy, phase: str
) -> None:
    extra = ["--refresh-interval", "1h" if phase == "run" else "100ms", "--timeout", "2s"]
    proc = _start(sm, ztr_env, fault_proxy, *extra)
    try:
        proc.wait_stdout("ready")
        if phase == "load":  # every refresh now takes 300 ms per request
            fault_proxy.latency_seconds = 0.3
        elif phase == "retry":  # every refresh is throttled and retrying until its deadline
            fault_proxy.fail_next(10**6, "throttle")
            proc.wait_log("Secrets Manager call failed; retrying", timeout=10)
        for round_number in range(3):
            start = len(proc.stdout)
            burst(proc.pid, rng=random.Random(round_number))
            wait_all_kinds(proc, start, f"{phase}, round {round_number}")
        assert len(pids_of(proc)) == 1, "the child was restarted"
        no_zombies(proc.pid)
        if phase == "retry":
            assert fault_proxy.calls("DescribeSecret") >= 2
        started = time.monotonic()
        final_sigterm(proc)
        assert time.monotonic() - started < 5  # a retry backoff or slow call does not hold it
    finally:
        proc.stop()


def test_run_signal_burst_during_restart_reaches_old_then_new_child(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    """The first child keeps running after SIGTERM, so the restart waits out the grace period:
    a burst in that window reaches the old child; one after the new child is ready reaches it."""
    marker = shm / "first-generation"
    child = ["sh", "-c", 'if [ -e "$0" ]; then exec "$@"; fi; : > "$0"; exec "$@" --keep-running',
             str(marker), *child_argv("--pid")]
    proc = _start(sm, ztr_env, None, "--refresh-interval", "1h", "--grace-period", "1500ms",
                  child=child)
    try:
        proc.wait_stdout("ready")
        old = pids_of(proc)[0]
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        status, body = http(proc.metrics_addr() + "/refresh", method="POST")
        assert status == 200, body
        assert json.loads(body)["changed"] == ["DB"], body
        proc.wait_until(lambda: "SIGTERM" in proc.stdout, timeout=5, what="the restart's SIGTERM")
        start = len(proc.stdout)
        burst(proc.pid, rounds=2)
        wait_all_kinds(proc, start, "old child, restart in progress")
        assert pids_of(proc) == [old], "the new child started before the old one was gone"

        proc.wait_stdout("ready", count=2, timeout=10)
        new = pids_of(proc)[-1]
        assert new != old
        assert wait_gone(old)
        no_zombies(proc.pid)
        start = len(proc.stdout)
        burst(proc.pid)
        wait_all_kinds(proc, start, "new child")
        assert proc.count_log("Restarting the app with the new secrets") == 1
        final_sigterm(proc)
    finally:
        proc.stop()


def test_run_signal_burst_during_startup_load_does_not_kill_ztr(
    sm: Any, ztr_env: dict[str, str], fault_proxy: FaultProxy
) -> None:
    fault_proxy.latency_seconds = 1.0
    proc = _start(sm, ztr_env, fault_proxy, "--refresh-interval", "1h", "--timeout", "10s")
    try:
        proc.wait_log("Loading secrets from AWS Secrets Manager", timeout=10)
        for signum in BURST:
            os.kill(proc.pid, signum)
            time.sleep(0.01)
        time.sleep(0.3)
        code = proc.popen.poll()
        assert code is None, f"ztr-run died of the burst during its start-up load: exit {code}"
        proc.wait_stdout("ready", timeout=10)
        fault_proxy.latency_seconds = 0.0
        start = len(proc.stdout)
        burst(proc.pid)
        wait_all_kinds(proc, start, "after a burst during the load")
        final_sigterm(proc)
    finally:
        proc.stop()
