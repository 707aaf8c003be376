"""Operating ztr: iam-policy proven under moto's IAM enforcement, check, metrics and probes,
plan, and the demo. Real CLI subprocesses against a moto server."""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import REGION
from tests.helpers import ztr
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.proc import Proc, http, metric

PRESET = ["--preset", "zero-to-running"]
BASE = "production/zero-to-running/"
ALL_FOUR = ("database-password", "session-secret", "redis-password", "jwt-secret")


def _seed(sm: Any, names: tuple[str, ...] = ALL_FOUR) -> None:
    for name in names:
        sm.create_secret(Name=BASE + name, SecretString=f"value-of-{name}")


def _set_auth(endpoint: str, count: str) -> None:
    request = urllib.request.Request(
        endpoint + "/moto-api/reset-auth",
        data=count.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def enforce(endpoint: str) -> Iterator[Any]:
    """Turns moto's IAM enforcement on (and off again after the test)."""
    yield lambda on: _set_auth(endpoint, "0" if on else "inf")
    _set_auth(endpoint, "inf")


@pytest.fixture
def iam_user(endpoint: str, ztr_env: dict[str, str]) -> Any:
    """An IAM user whose inline policy tests replace; returns (iam client, env with its keys)."""
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    iam.create_user(UserName="ztr")
    key = iam.create_access_key(UserName="ztr")["AccessKey"]
    env = dict(ztr_env, AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
    return iam, env


def _policy(ztr_env: dict[str, str], endpoint: str) -> dict[str, Any]:
    env = dict(ztr_env, AWS_ENDPOINT_URL_STS=endpoint)
    result = ztr.run(["iam-policy", *PRESET], env)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _for_moto(policy: dict[str, Any]) -> str:
    """moto authorises Secrets Manager calls against resource "*" only (its secretsmanager
    responses define no resource), so exact ARNs never match there. Under moto the proof is
    about actions: each statement keeps its actions with Resource "*". The exact ARNs are
    asserted in test_iam_policy_printed_policy_is_least_privilege."""
    widened = json.loads(json.dumps(policy))
    for statement in widened["Statement"]:
        statement["Resource"] = "*"
        statement.pop("Condition", None)
    return json.dumps(widened)


def _statement(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in policy["Statement"] if s["Sid"] == sid)


def test_iam_policy_printed_policy_is_least_privilege(
    sm: Any, ztr_env: dict[str, str], endpoint: str
) -> None:
    _seed(sm)
    policy = _policy(ztr_env, endpoint)
    assert policy["Version"] == "2012-10-17"
    read = _statement(policy, "ReadDeclaredSecrets")
    assert read["Action"] == ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"]
    assert len(read["Resource"]) == 4
    assert all(
        arn.startswith(f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{BASE}")
        for arn in read["Resource"]
    )
    assert _statement(policy, "BatchFetch")["Action"] == ["secretsmanager:BatchGetSecretValue"]
    for statement in policy["Statement"]:
        assert all("*" not in action for action in statement["Action"])
    assert not any(s["Sid"] == "ListPrefix" for s in policy["Statement"])


def test_iam_policy_unknown_secret_uses_suffix_wildcard(ztr_env: dict[str, str], endpoint: str) -> None:
    policy = _policy(ztr_env, endpoint)
    resources = _statement(policy, "ReadDeclaredSecrets")["Resource"]
    assert f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{BASE}jwt-secret-??????" in resources


def test_iam_policy_exact_policy_allows_init_and_refresh(
    sm: Any, ztr_env: dict[str, str], endpoint: str, iam_user: Any, enforce: Any, shm: Path
) -> None:
    _seed(sm)
    iam, env = iam_user
    iam.put_user_policy(
        UserName="ztr", PolicyName="ztr", PolicyDocument=_for_moto(_policy(ztr_env, endpoint))
    )
    enforce(True)
    result = ztr.run(["init", *PRESET, "--output", str(shm / "app.env")], env)
    assert result.code == 0, result.stderr
    assert "BatchGetSecretValue denied" not in result.stderr
    proc = Proc([ztr.ZTR, "watch", *PRESET, "--output", str(shm / "w.env"), "--refresh-interval", "1h"], env)
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        status, body = http(proc.metrics_addr() + "/refresh", method="POST")
        assert status == 200, body
        assert json.loads(body)["ok"] is True
    finally:
        proc.stop()


def test_iam_policy_without_read_statement_exits_77_naming_action(
    sm: Any, ztr_env: dict[str, str], endpoint: str, iam_user: Any, enforce: Any, shm: Path
) -> None:
    # One declared secret: ztr fetches it with GetSecretValue (moto does not check GetSecretValue
    # per secret inside a BatchGetSecretValue, so a batch would hide the missing grant).
    _seed(sm, ("database-password",))
    iam, env = iam_user
    args = ["--secret", f"DB={BASE}database-password"]
    result = ztr.run(["iam-policy", *args], dict(ztr_env, AWS_ENDPOINT_URL_STS=endpoint))
    policy = json.loads(result.stdout)
    assert [s["Sid"] for s in policy["Statement"]] == ["ReadDeclaredSecrets"]
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != "ReadDeclaredSecrets"]
    policy["Statement"].append(
        {"Sid": "Unrelated", "Effect": "Allow", "Action": ["secretsmanager:ListSecrets"], "Resource": "*"}
    )
    iam.put_user_policy(UserName="ztr", PolicyName="ztr", PolicyDocument=_for_moto(policy))
    enforce(True)
    result = ztr.run(["init", *args, "--output", str(shm / "app.env"), "--timeout", "5s"], env)
    assert result.code == 77, result.stderr
    assert "secretsmanager:GetSecretValue" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (shm / "app.env").exists()


def test_iam_policy_without_batch_statement_falls_back_and_says_so(
    sm: Any, ztr_env: dict[str, str], endpoint: str, iam_user: Any, enforce: Any, shm: Path
) -> None:
    # ztr's fetch path survives a missing BatchGetSecretValue grant (issue 2's fallback), so the
    # proof here is the warning naming the action, not an exit code.
    _seed(sm)
    iam, env = iam_user
    policy = _policy(ztr_env, endpoint)
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != "BatchFetch"]
    iam.put_user_policy(UserName="ztr", PolicyName="ztr", PolicyDocument=_for_moto(policy))
    enforce(True)
    result = ztr.run(["init", *PRESET, "--output", str(shm / "app.env")], env)
    assert result.code == 0, result.stderr
    assert "grant secretsmanager:BatchGetSecretValue" in result.stderr


def test_iam_policy_without_describe_refresh_fails_naming_action(
    sm: Any, ztr_env: dict[str, str], endpoint: str, iam_user: Any, enforce: Any, shm: Path
) -> None:
    _seed(sm)
    iam, env = iam_user
    policy = _policy(ztr_env, endpoint)
    _statement(policy, "ReadDeclaredSecrets")["Action"] = ["secretsmanager:GetSecretValue"]
    iam.put_user_policy(UserName="ztr", PolicyName="ztr", PolicyDocument=_for_moto(policy))
    enforce(True)
    proc = Proc(
        [
            ztr.ZTR,
            "watch",
            *PRESET,
            "--output",
            str(shm / "w.env"),
            "--refresh-interval",
            "1h",
            "--timeout",
            "5s",
        ],
        env,
    )
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        status, body = http(proc.metrics_addr() + "/refresh", method="POST")
        outcome = json.loads(body)
        assert status == 502
        assert outcome["exit_code"] == 77
        assert "secretsmanager:DescribeSecret" in outcome["error"]
    finally:
        proc.stop()


def test_check_reports_every_row_and_exits_with_first_failure(
    sm: Any, ztr_env: dict[str, str], endpoint: str
) -> None:
    sm.create_secret(Name=BASE + "database-password", SecretString="plain")
    sm.create_secret(Name=BASE + "session-secret", SecretString="s")
    sm.create_secret(Name="other/json", SecretString=json.dumps({"a": 1}))
    sm.create_secret(Name="other/binary", SecretBinary=b"\xff\xfe")
    sm.create_secret(Name="other/deleted", SecretString="d")
    sm.delete_secret(SecretId="other/deleted")
    env = dict(ztr_env, AWS_ENDPOINT_URL_STS=endpoint)
    args = [
        "check",
        *PRESET,
        "--format",
        "json",
        "--secret",
        "K=other/json#missing",
        "--secret",
        "B=other/binary",
        "--secret",
        "D=other/deleted",
        "--secret",
        "N=other/nothing",
    ]
    result = ztr.run(args, env)
    report = json.loads(result.stdout)
    rows = {row["variable"]: row for row in report["secrets"]}
    assert rows["DATABASE_PASSWORD"]["result"] == "ok"
    assert rows["DATABASE_PASSWORD"]["version_id"]
    assert rows["DATABASE_PASSWORD"]["rotation_enabled"] is False
    assert rows["REDIS_PASSWORD"]["result"] == "missing (optional)"
    assert rows["K"]["result"] == "bad JSON key"
    assert rows["B"]["result"] == "not UTF-8"
    assert rows["D"]["result"] == "scheduled for deletion"
    assert rows["N"]["result"] == "not found"
    assert report["identity"]["account"] == "123456789012"
    assert result.code == rows["K"]["exit_code"] == 65  # the first failing row, in declaration order
    assert "plain" not in result.stdout + result.stderr


def test_check_all_ok_table_exits_0(sm: Any, ztr_env: dict[str, str]) -> None:
    _seed(sm)
    result = ztr.run(["check", *PRESET], ztr_env)
    assert result.code == 0, result.stderr
    assert "VARIABLE" in result.stdout
    assert "DATABASE_PASSWORD" in result.stdout
    assert "value-of-" not in result.stdout + result.stderr


def test_check_access_denied_row_exits_77(
    sm: Any, ztr_env: dict[str, str], iam_user: Any, enforce: Any
) -> None:
    _seed(sm)
    iam, env = iam_user
    iam.put_user_policy(
        UserName="ztr",
        PolicyName="ztr",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": ["secretsmanager:ListSecrets"], "Resource": "*"}],
            }
        ),
    )
    enforce(True)
    result = ztr.run(["check", *PRESET, "--format", "json", "--timeout", "5s"], env)
    rows = {row["variable"]: row for row in json.loads(result.stdout)["secrets"]}
    assert rows["DATABASE_PASSWORD"]["result"] == "access denied"
    assert result.code == 77


def test_metrics_after_load_refresh_error_and_change(
    sm: Any, ztr_env: dict[str, str], fault_proxy: FaultProxy, shm: Path
) -> None:
    _seed(sm)
    env = dict(ztr_env, AWS_ENDPOINT_URL_SECRETS_MANAGER=fault_proxy.url)
    proc = Proc(
        [
            ztr.ZTR_RUN,
            *PRESET,
            "--refresh-interval",
            "1h",
            "--debounce",
            "0s",
            "--min-uptime",
            "0s",
            "--timeout",
            "2s",
            "--",
            "sleep",
            "600",
        ],
        env,
    )
    try:
        base = proc.metrics_addr()
        proc.wait_log("Started the app")
        page = http(base + "/metrics")[1]
        assert metric(page, "ztr_secrets_loaded") == 4
        assert metric(page, "ztr_child_up") == 1
        assert metric(page, "ztr_stale") == 0
        assert (metric(page, "ztr_last_success_timestamp_seconds") or 0) > 1.7e9
        assert (
            metric(page, "ztr_api_calls_total", {"operation": "BatchGetSecretValue", "result": "success"})
            == 1
        )
        assert metric(page, "ztr_fetch_duration_seconds_count") == 1
        assert metric(page, "process_resident_memory_bytes") is not None
        fault_proxy.fail_next(50, "throttle")
        status, _ = http(base + "/refresh", method="POST")
        assert status == 502
        page = http(base + "/metrics")[1]
        assert metric(page, "ztr_refresh_total", {"result": "error"}) == 1
        assert (
            metric(
                page, "ztr_api_calls_total", {"operation": "DescribeSecret", "result": "ThrottlingException"}
            )
            or 0
        ) >= 1
        fault_proxy.clear_faults()
        old = metric(page, "ztr_secret_version_info", {"name": "DATABASE_PASSWORD"})
        assert old == 1
        sm.put_secret_value(SecretId=BASE + "database-password", SecretString="rotated")
        assert http(base + "/refresh", method="POST")[0] == 200
        proc.wait_log("Started the app", count=2)
        page = http(base + "/metrics")[1]
        assert metric(page, "ztr_secret_changes_total", {"name": "DATABASE_PASSWORD"}) == 1
        assert metric(page, "ztr_child_restarts_total") == 1
        assert metric(page, "ztr_refresh_total", {"result": "success"}) == 1
        versions = [
            line
            for line in page.splitlines()
            if line.startswith('ztr_secret_version_info{name="DATABASE_PASSWORD"')
        ]
        assert len(versions) == 1  # the old version's series is gone
        assert "rotated" not in page
        assert "value-of-" not in page
    finally:
        proc.stop()


def test_readyz_flips_on_first_load_and_on_staleness(
    sm: Any, ztr_env: dict[str, str], fault_proxy: FaultProxy, shm: Path
) -> None:
    _seed(sm)
    fault_proxy.latency_seconds = 1.0  # a slow first load: /readyz must say 503 meanwhile
    env = dict(ztr_env, AWS_ENDPOINT_URL_SECRETS_MANAGER=fault_proxy.url)
    proc = Proc(
        [
            ztr.ZTR,
            "watch",
            *PRESET,
            "--output",
            str(shm / "app.env"),
            "--refresh-interval",
            "300ms",
            "--max-stale",
            "1s",
            "--timeout",
            "6s",
        ],
        env,
    )
    try:
        base = proc.metrics_addr()
        assert http(base + "/readyz")[0] == 503
        assert http(base + "/healthz")[0] == 200
        proc.wait_log("Wrote secrets; watching for changes")
        fault_proxy.latency_seconds = 0
        assert http(base + "/readyz")[0] == 200
        fault_proxy.set_down(True)
        proc.wait_until(lambda: http(base + "/readyz")[0] == 503, timeout=10, what="stale")
        assert metric(http(base + "/metrics")[1], "ztr_stale") == 1
        assert (shm / "app.env").read_text().count("export") == 4  # last good values kept
        fault_proxy.set_down(False)
        proc.wait_until(lambda: http(base + "/readyz")[0] == 200, timeout=10, what="recovery")
    finally:
        assert proc.stop() == 0


def test_plan_derives_calls_from_fetch_plan(ztr_env: dict[str, str]) -> None:
    for secrets in (4, 20, 21, 100):
        result = ztr.run(["plan", "--pods", "10000", "--secrets", str(secrets), "--format", "json"], ztr_env)
        plan = json.loads(result.stdout)
        assert plan["startup_calls_per_pod"] == {"BatchGetSecretValue": math.ceil(secrets / 20)}
        describe = plan["refresh"][0]
        assert describe["operation"] == "DescribeSecret"
        mean_interval = 300 * 0.9
        assert describe["fleet_tps"] == pytest.approx(10000 * secrets / mean_interval, rel=1e-3)
        assert describe["fleet_tps"] < describe["quota_tps"]


def test_plan_table_shows_quota_and_cost(ztr_env: dict[str, str]) -> None:
    result = ztr.run(["plan", "--pods", "10000", "--secrets", "4"], ztr_env)
    assert result.code == 0
    assert "DescribeSecret" in result.stdout
    assert "40000" in result.stdout
    assert "$" in result.stdout


def test_demo_runs_and_exits_0(ztr_env: dict[str, str]) -> None:
    result = ztr.run(["demo"], ztr_env, timeout=60)
    assert result.code == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Restarting the app with the new secrets" in result.stdout
    assert "/readyz -> 200" in result.stdout
    assert "ztr_child_restarts_total 1.0" in result.stdout
    assert "ztr-run exited 0." in result.stdout
