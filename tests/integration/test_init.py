"""``ztr init`` as a real subprocess against a moto server over HTTP: declaring, fetching
(batch and single), JSON keys, binary, optional, stages and versions, the gate, outputs."""

from __future__ import annotations

import base64
import json
import math
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faultproxy import FaultProxy
from tests.helpers.ztr import Result, run

RDS = {"username": "app", "password": "pw-1", "engine": "postgres", "host": "db.internal",
       "port": 5432, "ssl": True, "ratio": 1.5, "options": {"sslmode": "require"},
       "replicas": ["r1", "r2"], "nothing": None}


def init(env: dict[str, str], out: Path, *args: str, fmt: str = "json") -> Result:
    return run(["init", "--output", str(out), "--format", fmt, *args], env)


def loaded(result: Result, out: Path) -> dict[str, str]:
    assert result.code == 0, result.stderr
    values: dict[str, str] = json.loads(out.read_bytes())
    return values


def error_line(result: Result) -> dict[str, Any]:
    errors = [e for e in result.logs() if e.get("level") == "error"]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def through(proxy: FaultProxy, env: dict[str, str]) -> dict[str, str]:
    return dict(env, AWS_ENDPOINT_URL_SECRETS_MANAGER=proxy.url)


# -- fetching -------------------------------------------------------------------------------


def test_init_batch_path_loads_several_secrets_in_one_call(
    sm: Any, ztr_env: dict[str, str], shm: Path, fault_proxy: FaultProxy
) -> None:
    for name in ("app/a", "app/b", "app/c"):
        sm.create_secret(Name=name, SecretString=f"value of {name}")
    out = shm / "env.json"
    result = init(through(fault_proxy, ztr_env), out,
                  "--secret", "A=app/a", "--secret", "B=app/b", "--secret", "C=app/c")
    assert loaded(result, out) == {"A": "value of app/a", "B": "value of app/b", "C": "value of app/c"}
    assert fault_proxy.calls("BatchGetSecretValue") == 1
    assert fault_proxy.calls("GetSecretValue") == 0


@pytest.mark.parametrize("count", [1, 21, 45])
def test_init_n_secrets_cost_ceil_n_over_20_value_calls(
    sm: Any, ztr_env: dict[str, str], shm: Path, fault_proxy: FaultProxy, count: int
) -> None:
    secrets = ",".join(f"S{i}=n/s{i}" for i in range(count))
    for i in range(count):
        sm.create_secret(Name=f"n/s{i}", SecretString=str(i))
    out = shm / "env.json"
    values = loaded(init(dict(through(fault_proxy, ztr_env), ZTR_SECRETS=secrets), out), out)
    assert values == {f"S{i}": str(i) for i in range(count)}
    value_calls = fault_proxy.calls("BatchGetSecretValue") + fault_proxy.calls("GetSecretValue")
    assert value_calls == math.ceil(count / 20)
    assert fault_proxy.calls() == value_calls  # nothing else: no ListSecrets, no DescribeSecret


def test_init_prefix_over_100_secrets_follows_pages(
    sm: Any, ztr_env: dict[str, str], shm: Path, fault_proxy: FaultProxy
) -> None:
    for i in range(120):
        sm.create_secret(Name=f"big/app/key-{i:03d}", SecretString=f"v{i}")
    sm.create_secret(Name="big/other", SecretString="not under the prefix")
    out = shm / "env.json"
    values = loaded(init(through(fault_proxy, ztr_env), out, "--prefix", "big/app/"), out)
    assert values == {f"KEY_{i:03d}": f"v{i}" for i in range(120)}
    assert fault_proxy.calls("ListSecrets") == 2  # 100 a page
    assert fault_proxy.calls("BatchGetSecretValue") == 6  # 20 a call


def test_init_stage_and_version_use_get_secret_value(
    sm: Any, ztr_env: dict[str, str], shm: Path, fault_proxy: FaultProxy
) -> None:
    first = sm.create_secret(Name="rot/db", SecretString="old")["VersionId"]
    sm.put_secret_value(SecretId="rot/db", SecretString="new")
    out = shm / "env.json"
    result = init(through(fault_proxy, ztr_env), out, "--secret", "CUR=rot/db",
                  "--secret", "PREV=rot/db?stage=AWSPREVIOUS", "--secret", f"PIN=rot/db?version={first}")
    assert loaded(result, out) == {"CUR": "new", "PREV": "old", "PIN": "old"}
    assert fault_proxy.calls("GetSecretValue") == 3
    assert fault_proxy.calls("BatchGetSecretValue") == 0


def test_init_unknown_stage_fails_66(sm: Any, ztr_env: dict[str, str], shm: Path) -> None:
    sm.create_secret(Name="rot/db", SecretString="v")
    result = init(ztr_env, shm / "env.json", "--secret", "A=rot/db?stage=NOPE")
    assert result.code == 66
    assert "rot/db" in error_line(result)["msg"]


def test_init_by_arn_loads_the_secret(sm: Any, ztr_env: dict[str, str], shm: Path) -> None:
    arn = sm.create_secret(Name="arn/db", SecretString="by arn")["ARN"]
    sm.create_secret(Name="arn/other", SecretString="other")
    out = shm / "env.json"
    assert loaded(init(ztr_env, out, "--secret", f"A={arn}", "--secret", "B=arn/other"), out) == {
        "A": "by arn", "B": "other"}


# -- JSON, binary, optional -------------------------------------------------------------------


def test_init_json_keys_and_all_keys_give_text_of_every_type(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="prod/rds/app", SecretString=json.dumps(RDS))
    out = shm / "env.json"
    values = loaded(init(ztr_env, out, "--secret", "PW=prod/rds/app#password",
                         "--secret", "PORT=prod/rds/app#port", "--secret", "DB_=prod/rds/app#*"), out)
    assert values["PW"] == "pw-1"
    assert values["PORT"] == "5432"
    assert {k: v for k, v in values.items() if k.startswith("DB_")} == {
        "DB_USERNAME": "app", "DB_PASSWORD": "pw-1", "DB_ENGINE": "postgres",
        "DB_HOST": "db.internal", "DB_PORT": "5432", "DB_SSL": "true", "DB_RATIO": "1.5",
        "DB_OPTIONS": '{"sslmode":"require"}', "DB_REPLICAS": '["r1","r2"]', "DB_NOTHING": "null"}


@pytest.mark.parametrize(
    ("secret", "ref", "fragment"),
    [
        ("plain text", "A=j/s#password", "is not a JSON object, so #password cannot select a key"),
        ('{"user": "u"}', "A=j/s#password", "has no JSON key 'password' (keys: user)"),
    ],
)
def test_init_value_not_fitting_reference_fails_65(
    sm: Any, ztr_env: dict[str, str], shm: Path, secret: str, ref: str, fragment: str
) -> None:
    sm.create_secret(Name="j/s", SecretString=secret)
    out = shm / "env.json"
    result = init(ztr_env, out, "--secret", ref)
    assert result.code == 65
    assert fragment in error_line(result)["msg"]
    assert not out.exists()


def test_init_binary_utf8_loads_as_text(sm: Any, ztr_env: dict[str, str], shm: Path) -> None:
    sm.create_secret(Name="bin/text", SecretBinary="héllo ✓".encode())
    out = shm / "env.json"
    assert loaded(init(ztr_env, out, "--secret", "A=bin/text"), out) == {"A": "héllo ✓"}


def test_init_binary_not_utf8_fails_65_unless_base64(sm: Any, ztr_env: dict[str, str], shm: Path) -> None:
    blob = bytes(range(256))
    sm.create_secret(Name="bin/blob", SecretBinary=blob)
    out = shm / "env.json"
    failed = init(ztr_env, out, "--secret", "A=bin/blob")
    assert failed.code == 65
    assert "?encoding=base64" in error_line(failed)["msg"]
    values = loaded(init(ztr_env, out, "--secret", "A=bin/blob?encoding=base64"), out)
    assert base64.b64decode(values["A"]) == blob


def test_init_optional_missing_is_left_out(sm: Any, ztr_env: dict[str, str], shm: Path) -> None:
    sm.create_secret(Name="o/here", SecretString="here")
    out = shm / "env.json"
    values = loaded(init(ztr_env, out, "--secret", "A=o/here", "--secret", "B=o/absent?optional"), out)
    assert values == {"A": "here"}


def test_init_required_missing_fails_66_naming_close_names(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="prod/app/database-password", SecretString="x")
    sm.create_secret(Name="prod/app/session-secret", SecretString="y")
    out = shm / "env.json"
    result = init(ztr_env, out, "--secret", "A=prod/app/database-pasword",
                  "--secret", "B=prod/app/session-secret")
    assert result.code == 66
    message = error_line(result)["msg"]
    assert message.startswith("prod/app/database-pasword: not found in us-east-1")
    assert "did you mean prod/app/database-password" in message
    assert not out.exists()


@pytest.mark.parametrize("others", [[], ["--secret", "B=d/kept"]])
def test_init_scheduled_for_deletion_fails_66(
    sm: Any, ztr_env: dict[str, str], shm: Path, others: list[str]
) -> None:
    sm.create_secret(Name="d/gone", SecretString="x")
    sm.create_secret(Name="d/kept", SecretString="y")
    sm.delete_secret(SecretId="d/gone", RecoveryWindowInDays=7)
    result = init(ztr_env, shm / "env.json", "--secret", "A=d/gone", *others)
    assert result.code == 66
    message = error_line(result)["msg"]
    assert "d/gone" in message
    assert "restore-secret" in message or "not found" in message


# -- declaring: sm:// variables, --config, preset, logs ------------------------------------


def test_init_sm_variables_declare_secrets(sm: Any, ztr_env: dict[str, str], shm: Path) -> None:
    sm.create_secret(Name="e/db", SecretString=json.dumps({"password": "pw"}))
    out = shm / "env.json"
    env = dict(ztr_env, DATABASE_PASSWORD="sm://e/db#password", OPTIONAL_ONE="sm://e/nope?optional")
    assert loaded(init(env, out), out) == {"DATABASE_PASSWORD": "pw"}


def test_init_config_file_declares_settings_and_secrets(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="c/a", SecretString="from toml")
    out = shm / "env"
    config = shm / "ztr.toml"
    config.write_text(f'output = "{out}"\nformat = "dotenv"\n[secrets]\nA = "c/a"\n')
    result = run(["init", "--config", str(config)], ztr_env)
    assert result.code == 0, result.stderr
    assert out.read_text() == "A='from toml'\n"


def test_init_preset_uses_node_env_and_skips_missing_optional(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="development/zero-to-running/database-password", SecretString="db")
    sm.create_secret(Name="development/zero-to-running/session-secret", SecretString="sess")
    sm.create_secret(Name="development/zero-to-running/jwt-secret", SecretString="jwt")
    out = shm / "env.json"
    env = dict(ztr_env, NODE_ENV="development", ZTR_PRESET="zero-to-running")
    assert loaded(init(env, out), out) == {"DATABASE_PASSWORD": "db", "SESSION_SECRET": "sess",
                                           "JWT_SECRET": "jwt"}


def test_init_logs_loading_and_loaded_names_never_values(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="l/a", SecretString="VALUE-IN-LOG-CHECK")
    result = init(ztr_env, shm / "env.json", "--secret", "A=l/a")
    assert result.code == 0
    messages = result.messages()
    assert "Loading secrets from AWS Secrets Manager" in messages
    success = next(e for e in result.logs()
                   if e["msg"] == "Successfully loaded secrets from AWS Secrets Manager")
    assert success["loaded"] == ["A"]
    assert "VALUE-IN-LOG-CHECK" not in result.stderr + result.stdout


# -- the gate --------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", [{"USE_AWS_SECRETS": "false"}, {"ZTR_ENABLED": "false"}])
def test_init_gate_closed_contacts_nothing_writes_nothing_exits_0(
    ztr_env: dict[str, str], shm: Path, fault_proxy: FaultProxy, gate: dict[str, str]
) -> None:
    out = shm / "env.json"
    env = dict(through(fault_proxy, ztr_env), **gate)
    result = init(env, out, "--secret", "A=never/fetched")
    assert result.code == 0, result.stderr
    assert not out.exists()
    assert fault_proxy.calls() == 0
    disabled = [e for e in result.logs() if "disabled" in e["msg"]]
    assert len(disabled) == 1
    assert disabled[0]["reason"] == next(f"{k}={v}" for k, v in gate.items())


def test_init_gate_closed_with_dead_endpoint_still_exits_0(ztr_env: dict[str, str], shm: Path) -> None:
    env = dict(ztr_env, USE_AWS_SECRETS="false", AWS_ENDPOINT_URL_SECRETS_MANAGER="http://127.0.0.1:9",
               DB="sm://never/fetched")
    assert init(env, shm / "env.json").code == 0


def test_init_use_aws_secrets_true_loads(sm: Any, ztr_env: dict[str, str], shm: Path) -> None:
    sm.create_secret(Name="g/a", SecretString="on")
    out = shm / "env.json"
    assert loaded(init(dict(ztr_env, USE_AWS_SECRETS="true"), out, "--secret", "A=g/a"), out) == {"A": "on"}


# -- outputs ---------------------------------------------------------------------------------


@pytest.fixture
def one_secret(sm: Any) -> str:
    sm.create_secret(Name="out/a", SecretString="it's a \"value\" with $HOME and \\ and\nnewline")
    return "A=out/a"


def test_init_shell_file_is_sourced_by_sh(ztr_env: dict[str, str], shm: Path, one_secret: str) -> None:
    out = shm / "env.sh"
    assert init(ztr_env, out, "--secret", one_secret, fmt="shell").code == 0
    printed = subprocess.run(["sh", "-c", 'set -a; . "$1"; printf %s "$A"', "sh", str(out)],
                             capture_output=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    assert printed == b"it's a \"value\" with $HOME and \\ and\nnewline"


def test_init_output_dir_writes_one_file_per_variable(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="od/db", SecretString=json.dumps({"user": "u", "password": "p\n"}))
    directory = shm / "secrets"
    result = run(["init", "--output-dir", str(directory), "--secret", "DB_=od/db#*"], ztr_env)
    assert result.code == 0, result.stderr
    files = [p for p in directory.iterdir() if not p.name.startswith(".")]  # not ..ztr-written
    assert {p.name: p.read_bytes() for p in files} == {"DB_USER": b"u", "DB_PASSWORD": b"p\n"}
    assert {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {0o600}


@pytest.mark.parametrize(("args", "mode"), [([], 0o600), (["--file-mode", "0640"], 0o640),
                                             (["--file-mode", "400"], 0o400)])
def test_init_file_mode(ztr_env: dict[str, str], shm: Path, one_secret: str, args: list[str],
                        mode: int) -> None:
    out = shm / "env.json"
    assert init(ztr_env, out, "--secret", one_secret, *args).code == 0
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_init_owner_as_root(ztr_env: dict[str, str], shm: Path, one_secret: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"--owner needs root; this test runs as uid {os.geteuid()}")
    out = shm / "env.json"
    assert init(ztr_env, out, "--secret", one_secret, "--owner", "4242:4343").code == 0
    assert (out.stat().st_uid, out.stat().st_gid) == (4242, 4343)


def test_init_disk_target_refused_73_before_contacting_aws(
    ztr_env: dict[str, str], tmp_path: Path, fault_proxy: FaultProxy, one_secret: str
) -> None:
    from sidecar.outputs import filesystem_type

    if filesystem_type(str(tmp_path)) in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on tmpfs here: no disk to refuse")
    out = tmp_path / "env.json"
    result = init(through(fault_proxy, ztr_env), out, "--secret", one_secret)
    assert result.code == 73
    message = error_line(result)["msg"]
    assert "not tmpfs" in message
    assert "--allow-disk" in message
    assert not out.exists()
    assert fault_proxy.calls() == 0
    allowed = init(through(fault_proxy, ztr_env), out, "--secret", one_secret, "--allow-disk")
    assert allowed.code == 0, allowed.stderr
    assert json.loads(out.read_bytes())["A"].startswith("it's")


def test_init_unchanged_content_is_not_rewritten(ztr_env: dict[str, str], shm: Path, one_secret: str) -> None:
    out = shm / "env.json"
    assert init(ztr_env, out, "--secret", one_secret).code == 0
    before = out.stat()
    second = init(ztr_env, out, "--secret", one_secret)
    assert second.code == 0
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    wrote = next(e for e in second.logs() if e["msg"] == "Wrote secrets")
    assert wrote["rewritten"] is False


def test_init_bad_reference_fails_64_before_aws(ztr_env: dict[str, str], shm: Path,
                                                fault_proxy: FaultProxy) -> None:
    result = init(through(fault_proxy, ztr_env), shm / "env.json", "--secret", "A=x?stage=S&version=V")
    assert result.code == 64
    assert "either stage= or version=" in result.stderr
    assert "Traceback" not in result.stderr
    assert fault_proxy.calls() == 0
