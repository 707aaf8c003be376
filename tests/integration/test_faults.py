"""Faults AWS can produce and moto cannot, injected by a proxy in front of moto, through the
real ``ztr init``: transient ones are retried to success; an endpoint that never answers
ends in exit 69 at the deadline; every non-retryable error exits with its own code at once."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faultproxy import FaultProxy
from tests.helpers.ztr import Result, run

VALUE_CALLS = {"GetSecretValue", "BatchGetSecretValue"}


@pytest.fixture
def env(sm: Any, ztr_env: dict[str, str], fault_proxy: FaultProxy) -> dict[str, str]:
    """Two secrets in moto; ztr talks to them through the proxy."""
    sm.create_secret(Name="f/a", SecretString="alpha")
    sm.create_secret(Name="f/b", SecretString=json.dumps({"k": "beta"}))
    return dict(ztr_env, AWS_ENDPOINT_URL_SECRETS_MANAGER=fault_proxy.url,
                ZTR_SECRETS="A=f/a,B=f/b#k")


def init(env: dict[str, str], out: Path, *args: str) -> Result:
    return run(["init", "--output", str(out), "--format", "json", *args], env, timeout=60)


def the_error(result: Result) -> str:
    assert "Traceback" not in result.stderr
    errors = [e for e in result.logs() if e.get("level") == "error"]
    assert len(errors) == 1, result.stderr
    assert errors[0]["exit_code"] == result.code
    return str(errors[0]["msg"])


@pytest.mark.parametrize(
    ("kind", "failures"),
    [("500", 2), ("reset", 1), ("truncated", 1), ("malformed", 1)],
)
def test_faults_transient_then_success_loads(
    env: dict[str, str], shm: Path, fault_proxy: FaultProxy, kind: str, failures: int
) -> None:
    fault_proxy.fail_next(failures, kind, VALUE_CALLS)
    out = shm / "env.json"
    result = init(env, out)
    assert result.code == 0, result.stderr
    assert json.loads(out.read_bytes()) == {"A": "alpha", "B": "beta"}
    assert fault_proxy.calls("BatchGetSecretValue") == failures + 1
    if failures > 1:  # botocore absorbs one failure a call; ztr's policy, logged, the others
        retries = [e for e in result.logs() if e["msg"] == "Secrets Manager call failed; retrying"]
        assert retries
        assert all(f"Secrets Manager at {fault_proxy.url} answered" in e["error"] for e in retries)


def test_faults_batch_throttled_falls_back_to_get_secret_value(
    env: dict[str, str], shm: Path, fault_proxy: FaultProxy
) -> None:
    # BatchGetSecretValue has a 100/s account quota, GetSecretValue 10,000/s: a throttled batch
    # (both of botocore's attempts) is served by single calls instead of waiting.
    fault_proxy.fail_next(2, "throttle", {"BatchGetSecretValue"})
    out = shm / "env.json"
    result = init(env, out)
    assert result.code == 0, result.stderr
    assert json.loads(out.read_bytes()) == {"A": "alpha", "B": "beta"}
    assert fault_proxy.calls("BatchGetSecretValue") == 2
    assert fault_proxy.calls("GetSecretValue") == 2
    assert "BatchGetSecretValue throttled: this load uses GetSecretValue" in result.messages()


def test_faults_throttling_everywhere_then_success_loads(
    env: dict[str, str], shm: Path, fault_proxy: FaultProxy
) -> None:
    fault_proxy.fail_next(5, "throttle", VALUE_CALLS)
    out = shm / "env.json"
    result = init(env, out)
    assert result.code == 0, result.stderr
    assert json.loads(out.read_bytes()) == {"A": "alpha", "B": "beta"}
    assert any(e["msg"] == "Secrets Manager call failed; retrying" for e in result.logs())


def test_faults_slow_answer_times_out_and_is_retried(
    env: dict[str, str], shm: Path, fault_proxy: FaultProxy
) -> None:
    fault_proxy.slow_seconds = 5.0
    fault_proxy.fail_next(1, "slow", VALUE_CALLS)
    out = shm / "env.json"
    started = time.monotonic()
    result = init(env, out, "--timeout", "3s")  # 1 s a read: room for three attempts
    assert result.code == 0, result.stderr
    assert json.loads(out.read_bytes())["A"] == "alpha"
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize("how", ["down", "refused"])
def test_faults_unreachable_endpoint_exits_69_at_the_deadline(
    env: dict[str, str], shm: Path, fault_proxy: FaultProxy, how: str
) -> None:
    endpoint = fault_proxy.url if how == "down" else "http://127.0.0.1:9"
    fault_proxy.set_down(True)
    out = shm / "env.json"
    started = time.monotonic()
    result = init(dict(env, AWS_ENDPOINT_URL_SECRETS_MANAGER=endpoint), out, "--timeout", "1s")
    elapsed = time.monotonic() - started
    assert result.code == 69
    message = the_error(result)
    assert f"cannot reach Secrets Manager at {endpoint}" in message
    assert "VPC endpoint for Secrets Manager" in message
    assert "security group allows HTTPS (443) out" in message
    assert "gave up: deadline reached" in message
    assert elapsed < 1.0 + 3.0  # the deadline plus start-up, not botocore's own patience
    assert not out.exists()


def test_faults_throttled_until_the_deadline_exits_69(
    env: dict[str, str], shm: Path, fault_proxy: FaultProxy
) -> None:
    fault_proxy.fail_next(10**6, "throttle")
    result = init(env, shm / "env.json", "--timeout", "1s")
    assert result.code == 69
    message = the_error(result)
    assert "ThrottlingException" in message
    assert "gave up: deadline reached" in message
    assert fault_proxy.calls("BatchGetSecretValue") >= 2  # tried again, then gave up in time


def test_faults_batch_denied_falls_back_to_get_secret_value(
    env: dict[str, str], shm: Path, fault_proxy: FaultProxy
) -> None:
    fault_proxy.fail_next(1, "denied", {"BatchGetSecretValue"})
    out = shm / "env.json"
    result = init(env, out)
    assert result.code == 0, result.stderr
    assert json.loads(out.read_bytes()) == {"A": "alpha", "B": "beta"}
    assert fault_proxy.calls("BatchGetSecretValue") == 1
    assert fault_proxy.calls("GetSecretValue") == 2


@pytest.mark.parametrize(
    ("kind", "code", "fragments"),
    [
        ("denied", 77, ["f/a: access denied (AccessDeniedException)", "secretsmanager:GetSecretValue",
                        "arn:aws:secretsmanager:us-east-1:*:secret:f/a-??????"]),
        ("decrypt", 77, ["f/a: KMS refused to decrypt it", "kms:Decrypt"]),
        ("notfound", 66, ["f/a: not found in us-east-1"]),
        ("deleted", 66, ["f/a: scheduled for deletion", "restore-secret --secret-id f/a"]),
        ("invalid", 64, ["f/a: Secrets Manager rejected the request (InvalidParameterException)"]),
    ],
)
def test_faults_non_retryable_error_exits_with_its_code_at_once(
    env: dict[str, str], shm: Path, fault_proxy: FaultProxy, kind: str, code: int,
    fragments: list[str],
) -> None:
    fault_proxy.fail_next(10**6, kind, {"GetSecretValue"})
    out = shm / "env.json"
    result = init(dict(env, ZTR_SECRETS="A=f/a"), out)  # one secret: GetSecretValue
    assert result.code == code
    message = the_error(result)
    for fragment in fragments:
        assert fragment in message
    assert fault_proxy.calls("GetSecretValue") == 1  # never retried
    assert not out.exists()


def test_faults_denied_everywhere_exits_77_naming_the_secret(
    env: dict[str, str], shm: Path, fault_proxy: FaultProxy
) -> None:
    fault_proxy.fail_next(10**6, "denied", VALUE_CALLS)
    result = init(env, shm / "env.json")
    assert result.code == 77
    assert "f/a: access denied" in the_error(result)
    assert fault_proxy.calls("BatchGetSecretValue") == 1


@pytest.mark.parametrize("kind", ["throttle", "malformed"])
def test_faults_prefix_listing_fails_then_success(
    env: dict[str, str], shm: Path, fault_proxy: FaultProxy, kind: str
) -> None:
    fault_proxy.fail_next(2, kind, {"ListSecrets"})
    out = shm / "env.json"
    result = init(dict(env, ZTR_SECRETS=""), out, "--prefix", "f/")
    assert result.code == 0, result.stderr
    assert json.loads(out.read_bytes()) == {"A": "alpha", "B": '{"k": "beta"}'}
    assert fault_proxy.calls("ListSecrets") == 3
