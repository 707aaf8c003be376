"""The reference grammar and the variable naming rules, table-driven."""

from __future__ import annotations

import pytest

from sidecar import refs
from sidecar.errors import ConfigError

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/app/db-AbCdEf"
VERSION = "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prod/app/db", refs.SecretRef("prod/app/db")),
        ("sm://prod/app/db", refs.SecretRef("prod/app/db")),
        ("prod/app/db#password", refs.SecretRef("prod/app/db", key="password")),
        ("prod/app/db#*", refs.SecretRef("prod/app/db", key="*")),
        ("prod/app/db?optional", refs.SecretRef("prod/app/db", optional=True)),
        ("prod/app/db?stage=AWSPREVIOUS", refs.SecretRef("prod/app/db", stage="AWSPREVIOUS")),
        (f"prod/app/db?version={VERSION}", refs.SecretRef("prod/app/db", version=VERSION)),
        ("blob?encoding=base64", refs.SecretRef("blob", encoding="base64")),
        (
            "sm://prod/app/db#port?optional&stage=AWSPENDING",
            refs.SecretRef("prod/app/db", key="port", optional=True, stage="AWSPENDING"),
        ),
        ("a.b_c+d=e@f-g", refs.SecretRef("a.b_c+d=e@f-g")),
        (ARN, refs.SecretRef(ARN)),
        (ARN + "#user?optional", refs.SecretRef(ARN, key="user", optional=True)),
        (
            "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:x",
            refs.SecretRef("arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:x"),
        ),
        (
            "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:x-AbCdEf",
            refs.SecretRef("arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:x-AbCdEf"),
        ),
    ],
)
def test_parse_ref_valid_shapes_parse(text: str, expected: refs.SecretRef) -> None:
    assert refs.parse_ref(text, "--secret X") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty secret id"),
        ("sm://", "empty secret id"),
        ("#key", "empty secret id"),
        ("?optional", "empty secret id"),
        ("prod app", "not a valid secret name or ARN"),
        ("prod:app", "not a valid secret name or ARN"),
        ("prod/app*", "not a valid secret name or ARN"),
        ("x" * 513, "not a valid secret name or ARN"),
        ("arn:aws:secretsmanager:us-east-1:123:secret:x", "not a valid secret name or ARN"),
        ("arn:aws:s3:us-east-1:123456789012:secret:x", "not a valid secret name or ARN"),
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:", "not a valid secret name or ARN"),
        ("prod/db#", "empty JSON key"),
        ("prod/db#?optional", "empty JSON key"),
        ("prod/db?required", "unknown option 'required'"),
        ("prod/db?optional&", "unknown option ''"),
        ("prod/db?optional&optional", "given twice"),
        ("prod/db?stage=A&stage=B", "given twice"),
        (f"prod/db?stage=AWSPREVIOUS&version={VERSION}", "either stage= or version="),
        ("prod/db?version=abc", "'abc' is not a version id"),
        ("prod/db?version=" + "v" * 65, "is not a version id"),
        ("prod/db?optional=true", "'optional' takes no value"),
        ("prod/db?stage", "'stage' needs a value"),
        ("prod/db?stage=", "'stage' needs a value"),
        ("prod/db?version=", "'version' needs a value"),
        ("prod/db?encoding=hex", "encoding must be 'base64'"),
        ("prod/db?encoding", "'encoding' needs a value"),
    ],
)
def test_parse_ref_malformed_raises_config_error_naming_origin(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        refs.parse_ref(text, "--secret X")
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("--secret X: ")
    assert caught.value.exit_code == 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("database-password", "DATABASE_PASSWORD"),
        ("session.secret", "SESSION_SECRET"),
        ("jwt_secret", "JWT_SECRET"),
        ("a/b/c", "A_B_C"),
        ("9lives", "_9LIVES"),
        ("Ünïcode", "_N_CODE"),
        ("already_OK_1", "ALREADY_OK_1"),
        ("a+b=c@d", "A_B_C_D"),
    ],
)
def test_to_env_name_any_text_gives_upper_snake(text: str, expected: str) -> None:
    assert refs.to_env_name(text) == expected
    assert refs.is_valid_env_name(expected)


@pytest.mark.parametrize(
    ("prefix", "key", "expected"),
    [("DB_", "username", "DB_USERNAME"), ("", "port", "PORT"), ("", "2fa", "_2FA"),
     ("DB_", "host-name", "DB_HOST_NAME")],
)
def test_expand_key_name_prefix_and_key_give_one_name(prefix: str, key: str, expected: str) -> None:
    assert refs.expand_key_name(prefix, key) == expected


@pytest.mark.parametrize(
    ("secret", "prefix", "expected"),
    [
        ("prod/app/database-password", "prod/app/", "DATABASE_PASSWORD"),
        ("prod/app/db/password", "prod/app/", "DB_PASSWORD"),
        ("prod/app/db", "prod/app", "DB"),
        ("prod/app-db", "prod/app", "DB"),
        ("prod/app", "prod/app", "APP"),
        ("prod/app/2fa-seed", "prod/app/", "_2FA_SEED"),
    ],
)
def test_prefixed_env_name_rest_of_name_gives_variable(secret: str, prefix: str, expected: str) -> None:
    assert refs.prefixed_env_name(secret, prefix) == expected


@pytest.mark.parametrize(
    ("entry", "name", "ref"),
    [
        ("DB_PASSWORD=prod/db#password", "DB_PASSWORD", refs.SecretRef("prod/db", key="password")),
        ("  TOKEN = sm://tok?optional ", "TOKEN", refs.SecretRef("tok", optional=True)),
        ("DB_=prod/rds#*", "DB_", refs.SecretRef("prod/rds", key="*")),
        ("=prod/rds#*", "", refs.SecretRef("prod/rds", key="*")),
        ("_x=a", "_x", refs.SecretRef("a")),
        ("K=a=b", "K", refs.SecretRef("a=b")),
    ],
)
def test_parse_binding_valid_entries_parse(entry: str, name: str, ref: refs.SecretRef) -> None:
    binding = refs.parse_binding(entry, "--secret")
    assert (binding.name, binding.ref, binding.origin) == (name, ref, "--secret")
    assert binding.is_wildcard == (ref.key == "*")


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("NOEQUALS", "expected NAME=REF"),
        ("NAME=", "expected NAME=REF"),
        ("NAME=   ", "expected NAME=REF"),
        ("=prod/db", "'' is not a valid environment variable name"),
        ("1ABC=prod/db", "'1ABC' is not a valid environment variable name"),
        ("MY-VAR=prod/db", "'MY-VAR' is not a valid environment variable name"),
        ("MY VAR=prod/db", "'MY VAR' is not a valid environment variable name"),
        ("DB-=prod/db#*", "'DB-' is not a valid variable name prefix"),
        ("X=bad id", "not a valid secret name or ARN"),
        ("X=prod/db?bogus", "unknown option 'bogus'"),
    ],
)
def test_parse_binding_malformed_raises_config_error(entry: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        refs.parse_binding(entry, "--secret")
    assert str(caught.value).startswith("--secret")
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        ("A=a,B=b", ["A=a", "B=b"]),
        ("A=a\nB=b\n", ["A=a", "B=b"]),
        (" A=a , ,\n\n B=b?optional ", ["A=a", "B=b?optional"]),
        ("", []),
    ],
)
def test_split_entries_commas_and_newlines_split(text: str, entries: list[str]) -> None:
    assert refs.split_entries(text) == entries


def test_parse_ref_empty_query_means_no_options() -> None:
    assert refs.parse_ref("prod/db?", "t") == refs.SecretRef("prod/db")


def test_secret_ref_fetch_key_ignores_key_and_optional() -> None:
    a = refs.parse_ref("db#user?optional", "t")
    b = refs.parse_ref("db#password", "t")
    assert a.fetch_key == b.fetch_key == refs.FetchKey("db")
    assert refs.parse_ref("db?stage=AWSPREVIOUS", "t").fetch_key == refs.FetchKey("db", "AWSPREVIOUS")
    assert refs.parse_ref(f"db?version={VERSION}", "t").fetch_key.version == VERSION
    assert refs.parse_ref("db", "t").fetch_key.tracked_stage == "AWSCURRENT"
    assert refs.parse_ref("db?stage=AWSPENDING", "t").fetch_key.tracked_stage == "AWSPENDING"
