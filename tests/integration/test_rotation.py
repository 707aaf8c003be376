"""Rotation end to end: real `ztr watch` / `ztr-run` processes against a moto server."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.print_signals import children_of
from tests.helpers.proc import Proc, http, metric
from tests.helpers.ztr import ZTR, ZTR_RUN

SECRET = "prod/app/db"
FAST = ["--refresh-interval", "300ms", "--debounce", "0s", "--min-uptime", "0s"]
CHILD = ["sh", "-c", 'echo "value=$DB"; exec sleep 600']


def _refresh(proc: Proc) -> dict[str, Any]:
    status, body = http(proc.metrics_addr() + "/refresh", method="POST")
    assert status in (200, 502), body
    return json.loads(body)  # type: ignore[no-any-return]


def _metrics(proc: Proc) -> str:
    status, body = http(proc.metrics_addr() + "/metrics")
    assert status == 200
    return body


def test_watch_rotation_rewrites_file_within_interval(sm: Any, ztr_env: dict[str, str], shm: Path) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    out = shm / "app.env"
    proc = Proc([ZTR, "watch", "--secret", f"DB={SECRET}", "--output", str(out), *FAST[:4]], ztr_env)
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        assert out.read_text() == "export DB='v1'\n"
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        started = time.monotonic()
        proc.wait_until(lambda: out.read_text() == "export DB='v2'\n", timeout=5, what="rewrite")
        assert time.monotonic() - started < 0.3 + 2.0  # the interval plus slack
        assert oct(out.stat().st_mode & 0o777) == "0o600"
    finally:
        assert proc.stop() == 0


def test_run_rotation_restarts_child_once_with_new_value(sm: Any, ztr_env: dict[str, str]) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *FAST, "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        proc.wait_stdout("value=v2")
        assert _refresh(proc)["changed"] == []
        assert proc.count_log("Restarting the app with the new secrets") == 1
        assert metric(_metrics(proc), "ztr_child_restarts_total") == 1
    finally:
        assert proc.stop() == 143  # sleep dies of the forwarded SIGTERM: 128 + 15


def test_run_two_rotations_within_debounce_cause_one_restart(sm: Any, ztr_env: dict[str, str]) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    args = ["--refresh-interval", "200ms", "--debounce", "2s", "--min-uptime", "0s"]
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        proc.wait_log("Secret change detected")
        sm.put_secret_value(SecretId=SECRET, SecretString="v3")
        proc.wait_log("Secret change detected", count=2)
        proc.wait_stdout("value=v3")
        assert _refresh(proc)["changed"] == []
        assert proc.count_log("Restarting the app with the new secrets") == 1
        assert "value=v2" not in proc.stdout
    finally:
        proc.stop()


def test_run_unchanged_cycles_fetch_no_value_and_restart_nothing(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    sm.create_secret(Name=SECRET + "2", SecretString="w1")
    out = shm / "app.env"
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", "--secret", f"DB2={SECRET}2",
                 "--output", str(out), "--refresh-interval", "50ms", "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        before = out.stat()
        page = proc.wait_until(
            lambda: (lambda text: text if (metric(text, "ztr_refresh_total", {"result": "success"})
                                           or 0) >= 10 else None)(_metrics(proc)),
            timeout=20, what="10 refresh cycles")
        value_calls = sum(
            metric(page, "ztr_api_calls_total", {"operation": op, "result": "success"}) or 0
            for op in ("GetSecretValue", "BatchGetSecretValue"))
        describes = metric(page, "ztr_api_calls_total",
                           {"operation": "DescribeSecret", "result": "success"}) or 0
        assert value_calls == 1  # the start-up batch only
        assert describes >= 20  # two secrets, one DescribeSecret each per cycle
        assert out.stat().st_mtime_ns == before.st_mtime_ns
        assert out.stat().st_ino == before.st_ino
        assert proc.count_log("Restarting the app with the new secrets") == 0
        assert proc.stdout.count("value=v1") == 1
    finally:
        proc.stop()


def test_run_pending_version_is_ignored_until_promoted(sm: Any, ztr_env: dict[str, str]) -> None:
    created = sm.create_secret(Name=SECRET, SecretString="v1")
    args = ["--refresh-interval", "1h", "--debounce", "0s", "--min-uptime", "0s"]
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        pending = sm.put_secret_value(SecretId=SECRET, SecretString="v2",
                                      VersionStages=["AWSPENDING"])
        outcome = _refresh(proc)
        assert outcome["ok"]
        assert outcome["changed"] == []
        sm.update_secret_version_stage(SecretId=SECRET, VersionStage="AWSCURRENT",
                                       MoveToVersionId=pending["VersionId"],
                                       RemoveFromVersionId=created["VersionId"])
        assert _refresh(proc)["changed"] == ["DB"]
        proc.wait_stdout("value=v2")
        assert _refresh(proc)["changed"] == []
        assert proc.count_log("Restarting the app with the new secrets") == 1
    finally:
        proc.stop()


def test_run_same_content_new_version_is_not_a_change(sm: Any, ztr_env: dict[str, str]) -> None:
    sm.create_secret(Name=SECRET, SecretString=json.dumps({"password": "p1", "note": "a"}))
    args = ["--refresh-interval", "1h", "--min-uptime", "0s", "--debounce", "0s"]
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}#password", *args, "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=p1")
        sm.put_secret_value(SecretId=SECRET, SecretString=json.dumps({"password": "p1", "note": "b"}))
        outcome = _refresh(proc)
        assert outcome["ok"]
        assert outcome["changed"] == []
        assert proc.count_log("Restarting the app with the new secrets") == 0
    finally:
        proc.stop()


def test_run_pinned_version_is_never_checked(sm: Any, ztr_env: dict[str, str]) -> None:
    created = sm.create_secret(Name=SECRET, SecretString="v1")
    ref = f"DB={SECRET}?version={created['VersionId']}"
    proc = Proc([ZTR_RUN, "--secret", ref, "--refresh-interval", "1h", "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        assert _refresh(proc)["changed"] == []
        assert metric(_metrics(proc), "ztr_api_calls_total", {"operation": "DescribeSecret",
                                                               "result": "success"}) is None
    finally:
        proc.stop()


def test_run_refresh_failure_keeps_child_and_recovers(sm: Any, ztr_env: dict[str, str]) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    args = ["--refresh-interval", "1h", "--min-uptime", "0s", "--debounce", "0s", "--timeout", "2s"]
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        sm.delete_secret(SecretId=SECRET)  # scheduled for deletion
        failed = _refresh(proc)
        assert failed["ok"] is False
        assert failed["exit_code"] == 66
        assert "scheduled for deletion" in failed["error"]
        page = _metrics(proc)
        assert metric(page, "ztr_refresh_total", {"result": "error"}) == 1
        assert metric(page, "ztr_child_up") == 1
        sm.restore_secret(SecretId=SECRET)
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        assert _refresh(proc)["changed"] == ["DB"]
        proc.wait_stdout("value=v2")
    finally:
        proc.stop()


def test_run_verify_failure_blocks_restart_until_it_passes(sm: Any, ztr_env: dict[str, str]) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    args = ["--refresh-interval", "1h", "--min-uptime", "0s", "--debounce", "0s",
            "--verify", 'test "$DB" != bad']
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        sm.put_secret_value(SecretId=SECRET, SecretString="bad")
        assert _refresh(proc)["changed"] == ["DB"]
        proc.wait_log("--verify failed: keeping the running app; trying again next cycle")
        assert metric(_metrics(proc), "ztr_verify_failures_total") == 1
        assert proc.count_log("Restarting the app with the new secrets") == 0
        sm.put_secret_value(SecretId=SECRET, SecretString="good")
        assert _refresh(proc)["changed"] == ["DB"]
        proc.wait_stdout("value=good")
        assert "value=bad" not in proc.stdout
    finally:
        proc.stop()


def test_run_on_change_signal_sends_signal_without_restart(sm: Any, ztr_env: dict[str, str]) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    child = ["sh", "-c", 'trap "echo got-hup" HUP; echo "value=$DB"; while :; do sleep 0.05; done']
    args = ["--refresh-interval", "1h", "--debounce", "0s", "--on-change", "signal:SIGHUP"]
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--", *child], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        assert _refresh(proc)["changed"] == ["DB"]
        proc.wait_stdout("got-hup")
        assert proc.stdout.count("value=v1") == 1
        assert "value=v2" not in proc.stdout
    finally:
        proc.stop()


def test_run_on_change_exit_stops_child_and_exits_75(sm: Any, ztr_env: dict[str, str]) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    args = ["--refresh-interval", "300ms", "--debounce", "0s", "--on-change", "exit"]
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--", *CHILD], ztr_env)
    proc.wait_stdout("value=v1")
    sm.put_secret_value(SecretId=SECRET, SecretString="v2")
    assert proc.wait(timeout=10) == 75


def test_run_max_restarts_postpones_further_restarts(sm: Any, ztr_env: dict[str, str]) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    args = ["--refresh-interval", "1h", "--debounce", "0s", "--min-uptime", "0s",
            "--max-restarts", "1"]
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        _refresh(proc)
        proc.wait_stdout("value=v2")
        sm.put_secret_value(SecretId=SECRET, SecretString="v3")
        _refresh(proc)
        proc.wait_log("Restart postponed by --min-uptime / --max-restarts")
        assert "value=v3" not in proc.stdout
    finally:
        proc.stop()


def _seconds(record: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def test_run_min_uptime_delays_restart(sm: Any, ztr_env: dict[str, str]) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    args = ["--refresh-interval", "1h", "--debounce", "0s", "--min-uptime", "2s"]
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        first_start = proc.wait_log("Started the app")
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        _refresh(proc)
        detected = proc.wait_log("Secret change detected")
        proc.wait_stdout("value=v2", timeout=10)
        restarted = proc.wait_log("Restarting the app with the new secrets")
        # The change was seen well inside the first 2 s of uptime, and the restart waited for it.
        assert _seconds(detected) - _seconds(first_start) < 2.0
        assert proc.count_log("Restart postponed by --min-uptime / --max-restarts") >= 1
        assert _seconds(restarted) - _seconds(first_start) >= 2.0 - 0.002  # ms timestamps
    finally:
        proc.stop()


@pytest.mark.parametrize("phase", ["restart", "refresh", "backoff"])
def test_run_sigterm_during_phase_exits_cleanly_without_orphans(
    phase: str, sm: Any, ztr_env: dict[str, str]
) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    # The child takes 1 s to stop, so a restart is in progress when SIGTERM arrives.
    child = ["sh", "-c", 'trap "sleep 1; exit 0" TERM; echo "value=$DB"; while :; do sleep 0.05; done']
    args = ["--refresh-interval", "1h", "--debounce", "0s", "--min-uptime", "0s", "--grace-period", "5s"]
    env = dict(ztr_env)
    if phase == "backoff":
        env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = "http://127.0.0.1:9"  # nothing listens on discard
        env["USE_AWS_SECRETS"] = "true"
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--timeout", "30s", "--", *child], env)
    if phase == "backoff":
        proc.wait_log("Secrets Manager call failed; retrying")
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        assert code == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5
        assert proc.count_log("Stopped during start-up: nothing was started") == 1
        assert not list(children_of(proc.pid))
        return
    proc.wait_stdout("value=v1")
    child_pids = list(children_of(proc.pid))
    if phase == "restart":
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        _refresh(proc)
        proc.wait_log("Restarting the app with the new secrets")
    else:
        import threading

        threading.Thread(target=_refresh, args=(proc,), daemon=True).start()
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert "value=v2" not in proc.stdout
    for pid in child_pids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" not in open(f"/proc/{pid}/stat").read().split()[2]


def test_watch_deleted_output_is_rewritten_next_cycle(sm: Any, ztr_env: dict[str, str], shm: Path) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    out = shm / "app.env"
    proc = Proc([ZTR, "watch", "--secret", f"DB={SECRET}", "--output", str(out),
                 "--refresh-interval", "200ms"], ztr_env)
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        out.unlink()
        proc.wait_until(out.exists, timeout=5, what="the output to come back")
        assert out.read_text() == "export DB='v1'\n"
        assert oct(out.stat().st_mode & 0o777) == "0o600"
        proc.wait_log("An output was missing or altered on disk; rewrote it")
    finally:
        assert proc.stop() == 0


def test_run_rotation_to_oversize_value_keeps_the_app(sm: Any, ztr_env: dict[str, str]) -> None:
    # moto takes values over Secrets Manager's 64 KiB; no exec can take one over 128 KiB.
    sm.create_secret(Name=SECRET, SecretString="v1")
    args = ["--refresh-interval", "1h", "--debounce", "0s", "--min-uptime", "0s"]
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        sm.put_secret_value(SecretId=SECRET, SecretString="x" * 140_000)
        assert _refresh(proc)["changed"] == ["DB"]
        entry = proc.wait_log("Not reacting to the change: DB: 140004 bytes, over the kernel's "
                              "131072-byte limit for one environment variable: read it from "
                              "--output or --output-dir instead")
        assert entry["exit_code"] == 65
        assert proc.count_log("Restarting the app with the new secrets") == 0
        assert metric(_metrics(proc), "ztr_child_up") == 1
        assert proc.popen.poll() is None
    finally:
        proc.stop()


def test_run_verify_output_never_reaches_ztr_streams(sm: Any, ztr_env: dict[str, str]) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1")
    verify = 'echo "verify-out $DB"; echo "verify-err $DB" >&2; read -r line; exit 0'
    args = ["--refresh-interval", "1h", "--min-uptime", "0s", "--debounce", "0s", "--verify", verify]
    proc = Proc([ZTR_RUN, "--secret", f"DB={SECRET}", *args, "--", *CHILD], ztr_env)
    try:
        proc.wait_stdout("value=v1")
        sm.put_secret_value(SecretId=SECRET, SecretString="v2")
        _refresh(proc)
        proc.wait_stdout("value=v2")  # verify ran (stdin at EOF) and passed
        assert not [line for line in proc.stdout + proc.stderr if "verify-" in line]
    finally:
        proc.stop()
