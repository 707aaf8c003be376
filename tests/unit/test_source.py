"""SecretsManagerSource against botocore's Stubber: request shapes, batching, and every error
shape moto cannot produce, each mapped to its error class, exit code and message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from botocore import exceptions as bce
from botocore.stub import Stubber

from sidecar.errors import (
    AccessDeniedError,
    ConfigError,
    SecretNotFoundError,
    TransientError,
    ZtrError,
)
from sidecar.refs import FetchKey
from sidecar.source import BATCH_LIMIT, SecretsManagerSource, SecretVersion, arn_pattern

REGION = "us-east-1"
ACCOUNT_ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:"
VERSION = "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE"


def arn(name: str) -> str:
    return f"{ACCOUNT_ARN}{name}-AbCdEf"


def entry(name: str, value: str | bytes = "v", version: str = VERSION) -> dict[str, Any]:
    out: dict[str, Any] = {"ARN": arn(name), "Name": name, "VersionId": version,
                           "VersionStages": ["AWSCURRENT"]}
    out["SecretBinary" if isinstance(value, bytes) else "SecretString"] = value
    return out


@pytest.fixture(scope="module")
def session() -> Any:
    return botocore.session.get_session()  # its loader cache makes each client cheap


@pytest.fixture
def client(session: Any) -> Any:
    return session.create_client(
        "secretsmanager", region_name=REGION, endpoint_url="https://secretsmanager.example",
        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def stub(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def source(client: Any) -> SecretsManagerSource:
    return SecretsManagerSource(client, region=REGION)


def current(*names: str) -> list[FetchKey]:
    return [FetchKey(name) for name in names]


# -- request shapes ---------------------------------------------------------------------------


def test_get_many_several_current_secrets_use_one_batch_call(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_response("batch_get_secret_value",
                      {"SecretValues": [entry("a", "1"), entry("b", b"2")], "Errors": []},
                      {"SecretIdList": ["a", "b"]})
    results = source.get_many(current("a", "b"))
    assert {key.secret_id: v.value for key, v in results.items() if isinstance(v, SecretVersion)} == {
        "a": "1", "b": b"2"}


@pytest.mark.parametrize("count", [20, 21, 45])
def test_get_many_n_secrets_use_ceil_n_over_20_batch_calls(
    stub: Stubber, source: SecretsManagerSource, count: int
) -> None:
    names = [f"s{i:03d}" for i in range(count)]
    for start in range(0, count, BATCH_LIMIT):
        chunk = names[start : start + BATCH_LIMIT]
        stub.add_response("batch_get_secret_value",
                          {"SecretValues": [entry(n, n) for n in chunk], "Errors": []},
                          {"SecretIdList": chunk})
    results = source.get_many(current(*names))
    assert len(results) == count
    assert all(isinstance(v, SecretVersion) and v.value == k.secret_id for k, v in results.items())


def test_get_many_one_secret_uses_get_secret_value(stub: Stubber, source: SecretsManagerSource) -> None:
    stub.add_response("get_secret_value", entry("a", "1"), {"SecretId": "a"})
    assert source.get_many(current("a"))[FetchKey("a")].value == "1"  # type: ignore[union-attr]


def test_get_many_stage_and_version_use_get_secret_value(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_response("batch_get_secret_value",
                      {"SecretValues": [entry("a"), entry("b")], "Errors": []},
                      {"SecretIdList": ["a", "b"]})
    stub.add_response("get_secret_value", entry("c", "old"),
                      {"SecretId": "c", "VersionStage": "AWSPREVIOUS"})
    stub.add_response("get_secret_value", entry("d", "pinned"), {"SecretId": "d", "VersionId": VERSION})
    results = source.get_many([*current("a", "b"), FetchKey("c", "AWSPREVIOUS"),
                               FetchKey("d", None, VERSION)])
    assert results[FetchKey("c", "AWSPREVIOUS")].value == "old"  # type: ignore[union-attr]
    assert results[FetchKey("d", None, VERSION)].value == "pinned"  # type: ignore[union-attr]


def test_get_many_arn_ids_match_batch_entries(stub: Stubber, source: SecretsManagerSource) -> None:
    partial = ACCOUNT_ARN + "b"  # an ARN without the random suffix
    stub.add_response("batch_get_secret_value",
                      {"SecretValues": [entry("a", "1"), entry("b", "2")], "Errors": []},
                      {"SecretIdList": [arn("a"), partial]})
    results = source.get_many(current(arn("a"), partial))
    assert results[FetchKey(arn("a"))].value == "1"  # type: ignore[union-attr]
    assert results[FetchKey(partial)].value == "2"  # type: ignore[union-attr]


def test_list_names_follows_every_page(stub: Stubber, source: SecretsManagerSource) -> None:
    filters = [{"Key": "name", "Values": ["app/"]}]
    stub.add_response("list_secrets", {"SecretList": [{"Name": "app/a"}, {"Name": "other"}],
                                       "NextToken": "t1"},
                      {"MaxResults": 100, "Filters": filters})
    stub.add_response("list_secrets", {"SecretList": [{"Name": "app/b"}]},
                      {"MaxResults": 100, "Filters": filters, "NextToken": "t1"})
    assert source.list_names("app/") == ["app/a", "app/b"]


# -- batch Errors[] and the fallback ------------------------------------------------------------


def test_get_many_batch_errors_become_per_secret_errors(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_response("batch_get_secret_value", {
        "SecretValues": [entry("ok")],
        "Errors": [
            {"SecretId": "gone", "ErrorCode": "ResourceNotFoundException", "Message": "not found"},
            {"SecretId": "kms", "ErrorCode": "DecryptionFailure", "Message": "KMS said no"},
            {"SecretId": "deny", "ErrorCode": "AccessDeniedException", "Message": "no"},
        ],
    }, {"SecretIdList": ["ok", "gone", "kms", "deny"]})
    results = source.get_many(current("ok", "gone", "kms", "deny"))
    assert isinstance(results[FetchKey("ok")], SecretVersion)
    assert isinstance(results[FetchKey("gone")], SecretNotFoundError)
    assert isinstance(results[FetchKey("kms")], AccessDeniedError)
    assert "kms:Decrypt" in str(results[FetchKey("kms")])
    assert "secretsmanager:GetSecretValue" in str(results[FetchKey("deny")])


def test_get_many_throttled_entry_in_batch_errors_raises_transient(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_response("batch_get_secret_value", {
        "SecretValues": [entry("ok")],
        "Errors": [{"SecretId": "hot", "ErrorCode": "ThrottlingException", "Message": "slow down"}],
    }, {"SecretIdList": ["ok", "hot"]})
    with pytest.raises(TransientError, match="hot"):
        source.get_many(current("ok", "hot"))


def test_get_many_batch_denied_falls_back_to_single_calls(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_client_error("batch_get_secret_value", "AccessDeniedException", "not authorized",
                          400, expected_params={"SecretIdList": ["a", "b"]})
    stub.add_response("get_secret_value", entry("a", "1"), {"SecretId": "a"})
    stub.add_response("get_secret_value", entry("b", "2"), {"SecretId": "b"})
    first = source.get_many(current("a", "b"))
    # The fallback sticks: the next load goes straight to GetSecretValue.
    stub.add_response("get_secret_value", entry("a", "1"), {"SecretId": "a"})
    stub.add_response("get_secret_value", entry("b", "2"), {"SecretId": "b"})
    second = source.get_many(current("a", "b"))
    assert [v.value for v in first.values()] == ["1", "2"]  # type: ignore[union-attr]
    assert [v.value for v in second.values()] == ["1", "2"]  # type: ignore[union-attr]


def test_get_many_batch_throttled_falls_back_to_single_calls(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_client_error("batch_get_secret_value", "ThrottlingException", "Rate exceeded", 400)
    for name in ("a", "b"):
        arn = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-AbCdEf"
        stub.add_response("get_secret_value", {"Name": name, "ARN": arn, "VersionId": VERSION,
                                               "SecretString": name})
    results = source.get_many(current("a", "b"))
    assert sorted(v.value for v in results.values() if not isinstance(v, Exception)) == ["a", "b"]
    stub.assert_no_pending_responses()


def test_get_many_batch_and_single_throttled_raises_transient(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_client_error("batch_get_secret_value", "ThrottlingException", "Rate exceeded", 400)
    stub.add_client_error("get_secret_value", "ThrottlingException", "Rate exceeded", 400)
    with pytest.raises(TransientError, match="ThrottlingException"):
        source.get_many(current("a", "b"))


@pytest.mark.parametrize(
    "response",
    [{}, {"ResponseMetadata": {"HTTPStatusCode": 200}}],
)
def test_get_many_empty_batch_response_raises_transient_not_empty_values(
    stub: Stubber, source: SecretsManagerSource, response: dict[str, Any]
) -> None:
    stub.add_response("batch_get_secret_value", response)
    with pytest.raises(TransientError, match="incomplete BatchGetSecretValue response"):
        source.get_many(current("a", "b"))


def test_get_one_response_without_value_raises_transient(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_response("get_secret_value", {"Name": "a", "VersionId": VERSION})
    with pytest.raises(TransientError, match="incomplete GetSecretValue response"):
        source.get_one(FetchKey("a"))


# -- error translation --------------------------------------------------------------------------

SCHEDULED = ("You can't perform this operation on the secret because it was marked for deletion.")


@pytest.mark.parametrize(
    ("code", "status", "message", "error", "exit_code", "fragments"),
    [
        ("ResourceNotFoundException", 400, "Secrets Manager can't find the specified secret.",
         SecretNotFoundError, 66, ["prod/db: not found in us-east-1"]),
        ("InvalidRequestException", 400, SCHEDULED, SecretNotFoundError, 66,
         ["scheduled for deletion", "restore-secret --secret-id prod/db"]),
        ("AccessDeniedException", 400, "User is not authorized", AccessDeniedError, 77,
         ["access denied", "secretsmanager:GetSecretValue",
          f"arn:aws:secretsmanager:{REGION}:*:secret:prod/db-??????", "ztr iam-policy"]),
        ("403", 403, "", AccessDeniedError, 77, ["access denied", "secretsmanager:GetSecretValue"]),
        ("Forbidden", 403, "", AccessDeniedError, 77, ["access denied"]),
        ("UnrecognizedClientException", 400, "The security token is invalid", AccessDeniedError, 77,
         ["access denied"]),
        ("DecryptionFailure", 400, "can't decrypt", AccessDeniedError, 77,
         ["KMS refused to decrypt", "kms:Decrypt"]),
        ("AccessDeniedException", 400, "Access to KMS is not allowed", AccessDeniedError, 77,
         ["KMS refused", "kms:Decrypt"]),
        ("InvalidParameterException", 400, "bad", ConfigError, 64, ["rejected the request"]),
        ("InvalidRequestException", 400, "bad stage", ConfigError, 64, ["rejected the request"]),
        ("ThrottlingException", 400, "Rate exceeded", TransientError, 69,
         ["ThrottlingException", "https://secretsmanager.example"]),
        ("InternalServiceError", 500, "boom", TransientError, 69, ["InternalServiceError"]),
        ("InternalServiceError", 400, "boom", TransientError, 69, ["InternalServiceError"]),
        ("ServiceUnavailable", 503, "", TransientError, 69, ["HTTP 503"]),
        ("SomethingNew", 502, "", TransientError, 69, ["HTTP 502"]),
    ],
)
def test_translate_error_code_maps_to_class_and_exit_code(
    stub: Stubber, source: SecretsManagerSource, code: str, status: int, message: str,
    error: type[ZtrError], exit_code: int, fragments: list[str],
) -> None:
    stub.add_client_error("get_secret_value", code, message, status)
    with pytest.raises(ZtrError) as caught:
        source.get_one(FetchKey("prod/db"))
    assert type(caught.value) is error or isinstance(caught.value, error)
    assert caught.value.exit_code == exit_code
    assert str(caught.value).startswith("prod/db")
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert isinstance(caught.value.__cause__, bce.ClientError)  # chained, for --log-level debug


@pytest.mark.parametrize(
    "exc",
    [
        bce.EndpointConnectionError(endpoint_url="https://secretsmanager.example"),
        bce.ConnectTimeoutError(endpoint_url="https://secretsmanager.example"),
        bce.ReadTimeoutError(endpoint_url="https://secretsmanager.example"),
        bce.ConnectionClosedError(endpoint_url="https://secretsmanager.example"),
        bce.ResponseStreamingError(error="IncompleteRead"),
    ],
)
def test_translate_network_errors_are_transient_with_endpoint_and_hint(
    source: SecretsManagerSource, exc: Exception
) -> None:
    error = source.translate(exc, "prod/db", "GetSecretValue")
    assert isinstance(error, TransientError)
    assert error.exit_code == 69
    assert "cannot reach Secrets Manager at https://secretsmanager.example" in str(error)
    assert "VPC endpoint" in str(error)
    assert "security group allows HTTPS (443) out" in str(error)


def test_translate_no_credentials_is_access_denied_naming_the_role(source: SecretsManagerSource) -> None:
    error = source.translate(bce.NoCredentialsError(), "prod/db", "GetSecretValue")
    assert isinstance(error, AccessDeniedError)
    assert "no AWS credentials" in str(error)
    assert "task role" in str(error)


def test_translate_param_validation_is_a_config_error(source: SecretsManagerSource) -> None:
    error = source.translate(bce.ParamValidationError(report="Invalid length for parameter VersionId"),
                             "prod/db", "GetSecretValue")
    assert isinstance(error, ConfigError)
    assert "VersionId" in str(error)


def test_translate_unknown_client_error_is_generic_and_names_code(source: SecretsManagerSource) -> None:
    exc = bce.ClientError({"Error": {"Code": "Weird", "Message": "?"},
                           "ResponseMetadata": {"HTTPStatusCode": 409}}, "GetSecretValue")
    error = source.translate(exc, "prod/db", "GetSecretValue")
    assert type(error) is ZtrError
    assert "Weird" in str(error)
    assert "HTTP 409" in str(error)


def test_arn_pattern_names_and_arns() -> None:
    assert arn_pattern("a/b", "eu-west-1") == "arn:aws:secretsmanager:eu-west-1:*:secret:a/b-??????"
    assert arn_pattern(arn("a"), "eu-west-1") == arn("a")


# -- describe and the "did you mean" hint -------------------------------------------------------


def test_describe_scheduled_for_deletion_raises_not_found(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_response("describe_secret", {"Name": "prod/db", "ARN": arn("prod/db"),
                                          "DeletedDate": "2026-12-01T00:00:00Z"})
    with pytest.raises(SecretNotFoundError, match="scheduled for deletion"):
        source.describe("prod/db")


def test_describe_empty_response_raises_transient(stub: Stubber, source: SecretsManagerSource) -> None:
    stub.add_response("describe_secret", {})
    with pytest.raises(TransientError, match="incomplete DescribeSecret"):
        source.describe("prod/db")


def test_current_version_finds_the_stage(stub: Stubber, source: SecretsManagerSource) -> None:
    stub.add_response("describe_secret", {"Name": "a", "VersionIdsToStages": {
        VERSION: ["AWSCURRENT"], "OLD" + VERSION[3:]: ["AWSPREVIOUS"]}})
    info = source.describe("a")
    assert info.version_for("AWSCURRENT") == VERSION
    assert info.version_for("AWSPREVIOUS") == "OLD" + VERSION[3:]
    assert info.version_for("AWSPENDING") is None


def test_not_found_costs_no_list_call_until_explained(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_client_error("get_secret_value", "ResourceNotFoundException", "nope", 400)
    with pytest.raises(SecretNotFoundError) as caught:
        source.get_one(FetchKey("prod/app/databse-password"))
    stub.assert_no_pending_responses()  # no ListSecrets call so far
    stub.add_response("list_secrets", {"SecretList": [
        {"Name": "prod/app/database-password"}, {"Name": "prod/app/session-secret"}]},
        {"MaxResults": 100, "Filters": [{"Key": "name", "Values": ["prod/app/"]}]})
    explained = source.explain_missing(caught.value)
    assert "did you mean prod/app/database-password" in str(explained)
    assert explained.exit_code == 66


def test_explain_missing_list_denied_still_gives_a_hint(
    stub: Stubber, source: SecretsManagerSource
) -> None:
    stub.add_client_error("get_secret_value", "ResourceNotFoundException", "nope", 400)
    stub.add_client_error("list_secrets", "AccessDeniedException", "no", 400)
    with pytest.raises(SecretNotFoundError) as caught:
        source.get_one(FetchKey("prod/app/x"))
    explained = source.explain_missing(caught.value)
    assert str(explained) == "prod/app/x: not found in us-east-1: check the name and the environment prefix"


def test_secret_version_repr_hides_the_value() -> None:
    version = SecretVersion("a", "a", arn("a"), VERSION, "CANARY-repr")
    assert "CANARY" not in repr(version)
    assert VERSION in repr(version)



def test_partition_of_a_region_is_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """It is asked for every AccessDenied on every refresh: one botocore session, not one each."""
    from sidecar import clients, source

    made: list[object] = []
    real = clients.new_session

    def counted(**kwargs: Any) -> Any:
        made.append(kwargs)
        return real(**kwargs)

    source.partition.cache_clear()
    monkeypatch.setattr(clients, "new_session", counted)
    try:
        assert [source.partition("cn-north-1") for _ in range(3)] == ["aws-cn"] * 3
        assert source.arn("secretsmanager", "cn-north-1", "1", "secret:x").startswith("arn:aws-cn:")
    finally:
        source.partition.cache_clear()
    assert len(made) == 1
