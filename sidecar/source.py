"""Secrets Manager access behind a typed boundary: fetch keys in, ``SecretVersion`` and
``SecretInfo`` out, botocore errors translated into the error tree.

Knows nothing of processes or files. Every botocore error is translated here, by error code,
and chained; messages name the secret and the likely fix, never a value. No AWS response dict
leaves this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

from .errors import (
    AccessDeniedError,
    ConfigError,
    DeletedSecretError,
    KmsDeniedError,
    MissingSecretError,
    SecretNotFoundError,
    TransientError,
    ZtrError,
)
from .refs import FetchKey

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient  # boto3-stubs, dev only

__all__ = ["FetchKey", "Identity", "SecretInfo", "SecretSource", "SecretVersion",
           "SecretsManagerSource", "arn_pattern", "caller_identity", "make_client", "plan_fetch"]

BATCH_LIMIT = 20  # BatchGetSecretValue's documented maximum ids per call
BATCH_CONCURRENCY = 2  # batch calls in flight during one load

CallRecorder = Callable[[str, str], None]  # (operation, result)

_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalServiceError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
_DENIED_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "403",  # moto's IAM enforcement answers a bare 403 with an XML body
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
    }
)
_NETWORK_HINT = (
    "check that a VPC endpoint for Secrets Manager exists or the subnet has a route out, "
    "and that the security group allows HTTPS (443) out"
)


class SecretVersion(NamedTuple):  # a NamedTuple for import speed (see refs.FetchKey)
    """One fetched secret version. ``value`` is SecretString (str) or SecretBinary (bytes)."""

    secret_id: str
    name: str
    arn: str
    version_id: str
    value: str | bytes

    def __repr__(self) -> str:  # the value never reaches a repr, a log or a traceback
        return f"SecretVersion(name={self.name!r}, version_id={self.version_id!r})"


_NO_STAGES: Mapping[str, tuple[str, ...]] = MappingProxyType({})


class SecretInfo(NamedTuple):
    """What DescribeSecret says about a secret, parsed once: no value, only metadata."""

    name: str
    arn: str
    stages: Mapping[str, tuple[str, ...]] = _NO_STAGES  # version id -> labels
    kms_key_id: str | None = None
    rotation_enabled: bool = False
    last_changed: datetime | None = None
    last_rotated: datetime | None = None
    next_rotation: datetime | None = None

    def version_for(self, stage: str) -> str | None:
        """The version id that carries ``stage`` now, or None."""
        return next((version for version, labels in self.stages.items() if stage in labels), None)

    @classmethod
    def parse(cls, response: Mapping[str, Any]) -> SecretInfo:
        stages = response.get("VersionIdsToStages") or {}

        def when(key: str) -> datetime | None:
            value = response.get(key)
            return value if isinstance(value, datetime) else None

        return cls(
            name=str(response.get("Name", "")),
            arn=str(response.get("ARN", "")),
            stages={str(v): tuple(str(label) for label in labels) for v, labels in stages.items()},
            kms_key_id=str(response["KmsKeyId"]) if response.get("KmsKeyId") else None,
            rotation_enabled=bool(response.get("RotationEnabled", False)),
            last_changed=when("LastChangedDate"),
            last_rotated=when("LastRotatedDate"),
            next_rotation=when("NextRotationDate"),
        )


class SecretSource(Protocol):
    """What the loader, ``check`` and ``iam-policy`` need from Secrets Manager."""

    region: str

    @property
    def endpoint(self) -> str: ...

    def list_names(self, prefix: str, limit: int | None = None) -> list[str]: ...

    def get_one(self, key: FetchKey) -> SecretVersion: ...

    def get_many(self, keys: Sequence[FetchKey]) -> dict[FetchKey, SecretVersion | ZtrError]: ...

    def describe(self, secret_id: str) -> SecretInfo: ...

    def explain_missing(self, error: SecretNotFoundError) -> SecretNotFoundError: ...


class Identity(NamedTuple):
    """The caller, for reports (STS GetCallerIdentity); ``error`` says why it is unknown."""

    account: str | None
    arn: str | None
    error: str | None = None


def _client_config(region: str, timeout_seconds: float, *, attempts: int = 2) -> Any:
    import botocore.config

    # Leave room for at least three attempts inside the load's deadline.
    attempt_timeout = max(1.0, min(10.0, timeout_seconds / 3))
    return botocore.config.Config(
        region_name=region,
        connect_timeout=min(5.0, attempt_timeout),
        read_timeout=attempt_timeout,
        # ztr's own tenacity policy does the patient retrying; botocore's stays small so
        # the two do not multiply into a storm of attempts.
        retries={"mode": "standard", "total_max_attempts": attempts},
        user_agent_extra="ztr",
    )


def make_client(region: str, endpoint_url: str | None, timeout_seconds: float) -> SecretsManagerClient:
    """A Secrets Manager client on boto3's default credential chain and endpoint settings.

    Uses botocore's session (what boto3 wraps) directly: same credential chain, same
    AWS_ENDPOINT_URL_SECRETS_MANAGER handling, without importing boto3's resource layer.
    """
    return cast("SecretsManagerClient",
                _create_client("secretsmanager", endpoint_url, _client_config(region, timeout_seconds)))


def _create_client(service: str, endpoint_url: str | None, config: Any) -> Any:
    from . import clients  # botocore's session on a selection of its data: start-up cost

    return clients.create_client(service, region=config.region_name, endpoint_url=endpoint_url,
                                 config=config)


def attempt_recorder(record: CallRecorder) -> Callable[..., None]:
    """A botocore ``needs-retry`` handler that reports every HTTP attempt as (operation, result):
    success, an error code, or network_error."""

    def on_attempt(response: Any = None, operation: Any = None,
                   caught_exception: BaseException | None = None, **_: Any) -> None:
        name = getattr(operation, "name", "Unknown")
        if caught_exception is not None:
            result = "network_error"
        elif response is not None:
            http, parsed = response
            code = (parsed or {}).get("Error", {}).get("Code")
            result = "success" if http.status_code < 300 else str(code or http.status_code)
        else:
            result = "unknown"
        record(name, result)

    return on_attempt


def caller_identity(region: str, timeout_seconds: float) -> Identity:
    """STS GetCallerIdentity on boto3's default chain (AWS_ENDPOINT_URL_STS is honoured).

    Never raises: the identity is context for a report, not a reason to fail.
    """
    try:
        client = _create_client("sts", None, _client_config(region, timeout_seconds))
        response = client.get_caller_identity()
    except Exception as exc:  # noqa: BLE001 - context for a report: never fail on it
        return Identity(None, None, error_code(exc))
    return Identity(str(response.get("Account")), str(response.get("Arn")))


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore exception, else the exception's type name."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) or type(exc).__name__


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


@functools.cache  # a session per call read the config file (and data) for every AccessDenied
def partition(region: str) -> str:
    """The ARN partition of ``region`` (aws, aws-cn, aws-us-gov, ...), from botocore's own
    partition data; ``aws`` when botocore does not know the region."""
    from . import clients

    try:
        return str(clients.new_session().get_partition_for_region(region))
    except Exception:  # noqa: BLE001 - an unknown region is most likely a new commercial one
        return "aws"


def arn(service: str, region: str, account: str | None, resource: str) -> str:
    """An ARN in ``region``'s partition; ``*`` for an unknown account."""
    return f"arn:{partition(region)}:{service}:{region}:{account or '*'}:{resource}"


def arn_pattern(secret_id: str, region: str, account: str | None = None) -> str:
    """The resource an IAM policy must allow for a secret named or ARN'd ``secret_id``: a name
    gets the six random characters AWS appends to its ARN as ``-??????``."""
    if secret_id.startswith("arn:"):
        return secret_id
    return arn("secretsmanager", region, account, f"secret:{secret_id}-??????")


class SecretsManagerSource:
    """Reads secrets and their versions. Collaborators are injected: ``client``, ``record``."""

    def __init__(
        self,
        client: SecretsManagerClient,
        *,
        region: str,
        record: CallRecorder | None = None,
    ) -> None:
        self._client = client
        self.region = region
        self._record = record or (lambda operation, result: None)
        self._batch_allowed = True
        # Count every HTTP attempt, botocore's own retries included: that is what AWS bills.
        client.meta.events.register_first("needs-retry.secrets-manager",
                                          attempt_recorder(self._record))

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    # -- translation -------------------------------------------------------------------

    def translate(self, exc: BaseException, secret_id: str, action: str) -> ZtrError:
        """Map a botocore exception for ``secret_id`` to the error tree (by error code)."""
        from botocore import exceptions as bce

        if isinstance(exc, ZtrError):
            return exc
        if isinstance(exc, bce.NoCredentialsError):
            return AccessDeniedError(
                f"{secret_id}: no AWS credentials found: give the pod or task an IAM role "
                "(IRSA, EKS Pod Identity, ECS task role) or set AWS_PROFILE / access keys"
            )
        if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError)):
            return TransientError(
                f"{secret_id}: cannot reach Secrets Manager at {self.endpoint} "
                f"({type(exc).__name__}): {_NETWORK_HINT}"
            )
        if isinstance(exc, bce.ParamValidationError):
            # botocore checks ids before sending: the report names parameters, never values.
            report = str(exc).splitlines()[-1]
            return ConfigError(f"{secret_id}: botocore rejected the request before sending ({report})")
        code = error_code(exc)
        message = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Message", ""))
        status = _status(exc)
        if code in _TRANSIENT_CODES or status >= 500:
            return TransientError(
                f"{secret_id}: Secrets Manager at {self.endpoint} answered {code} "
                f"(HTTP {status}); retrying until the deadline",
                throttled=code in _THROTTLING_CODES,
            )
        if code == "DecryptionFailure" or (code in _DENIED_CODES and "kms" in message.lower()):
            return KmsDeniedError(
                f"{secret_id}: KMS refused to decrypt it ({code}): grant kms:Decrypt on the "
                "secret's KMS key to the role ztr runs as"
            )
        if code in _DENIED_CODES or status == 403:
            return AccessDeniedError(
                f"{secret_id}: access denied ({code}): grant secretsmanager:{action} on "
                f"{arn_pattern(secret_id, self.region)} to the role ztr runs as "
                "(see `ztr iam-policy`)"
            )
        if code == "ResourceNotFoundException":
            return MissingSecretError(secret_id, f"{secret_id}: not found in {self.region}")
        if code == "InvalidRequestException" and "delet" in message.lower():
            return _deleted(secret_id)
        if code in ("InvalidParameterException", "InvalidRequestException", "ValidationException"):
            return ConfigError(f"{secret_id}: Secrets Manager rejected the request ({code})")
        return ZtrError(f"{secret_id}: unexpected error from Secrets Manager ({code}, HTTP {status})")

    def explain_missing(self, error: SecretNotFoundError) -> SecretNotFoundError:
        """``error`` with the closest existing names added, when it is a plain "not found".

        Called only for an error that is about to be reported: the hint costs ListSecrets calls.
        """
        if not isinstance(error, MissingSecretError):
            return error
        return SecretNotFoundError(error.message + self._similar(error.secret_id))

    def _similar(self, secret_id: str) -> str:
        """Best effort: the closest existing names under the same prefix, for the message."""
        if secret_id.startswith("arn:"):
            return ""
        parent = secret_id.rpartition("/")[0]
        try:
            names = self.list_names(parent + "/" if parent else "", limit=200)
        except Exception:  # noqa: BLE001 - a hint must never mask the real error
            return ": check the name and the environment prefix"
        import difflib  # only for an error that is being reported

        # Compare what follows the shared prefix: "prod/db" vs "prod/tok" share most letters.
        start = len(parent) + 1 if parent else 0
        by_rest = {name[start:]: name for name in names}
        close = [by_rest[rest] for rest in
                 difflib.get_close_matches(secret_id[start:], list(by_rest), n=3, cutoff=0.6)]
        if close:
            return f"; did you mean {', '.join(close)}?"
        return ": check the name and the environment prefix"

    # -- reads -------------------------------------------------------------------------

    def list_names(self, prefix: str, limit: int | None = None) -> list[str]:
        """Names of every secret whose name starts with ``prefix`` (all pages)."""
        names: list[str] = []
        kwargs: dict[str, Any] = {"MaxResults": 100}
        if prefix:
            kwargs["Filters"] = [{"Key": "name", "Values": [prefix]}]
        try:
            while True:
                page = self._client.list_secrets(**kwargs)
                if "SecretList" not in page:
                    raise self._malformed(prefix + "*", "ListSecrets")
                names.extend(
                    entry["Name"] for entry in page.get("SecretList", [])
                    if entry["Name"].startswith(prefix)
                )
                token = page.get("NextToken")
                if not token or (limit is not None and len(names) >= limit):
                    return sorted(names)
                kwargs["NextToken"] = token
        except Exception as exc:
            raise self.translate(exc, prefix + "*", "ListSecrets") from exc

    def get_one(self, key: FetchKey) -> SecretVersion:
        kwargs: dict[str, Any] = {"SecretId": key.secret_id}
        if key.stage:
            kwargs["VersionStage"] = key.stage
        if key.version:
            kwargs["VersionId"] = key.version
        try:
            response = self._client.get_secret_value(**kwargs)
        except Exception as exc:
            error = self.translate(exc, key.secret_id, "GetSecretValue")
            if isinstance(error, MissingSecretError) and not key.at_current:
                raise self._no_such_version(key) from exc
            raise error from exc
        return self._to_version(key.secret_id, response)

    def _no_such_version(self, key: FetchKey) -> ZtrError:
        """A pinned stage or version that is not there: the secret may well exist, so say
        which versions and stages it has (metadata, never values) instead of "did you mean"."""
        wanted = f"version {key.version}" if key.version else f"no version labelled {key.stage}"
        try:
            info = self.describe(key.secret_id)
        except ZtrError as exc:
            return exc
        have = "; ".join(f"{version} [{', '.join(labels) or 'no label'}]"
                         for version, labels in sorted(info.stages.items())) or "none"
        what = f"has no {wanted}" if key.version else f"has {wanted}"
        return SecretNotFoundError(
            f"{key.secret_id}: {what} (its versions and stages: {have}): fix ?version= or "
            "?stage= in the reference")

    def get_many(self, keys: Sequence[FetchKey]) -> dict[FetchKey, SecretVersion | ZtrError]:
        """Fetch several secrets in as few calls as possible.

        Secrets at AWSCURRENT go through BatchGetSecretValue, 20 ids a call; pinned stages
        and versions through GetSecretValue. Per-secret failures come back as values; a
        failure of a whole call (network, throttling) raises.
        """
        results: dict[FetchKey, SecretVersion | ZtrError] = {}
        chunks, single = plan_fetch(keys)
        if len(chunks) > 1:
            # Two chunks in flight: N=500 takes about half as long, while one pod stays far
            # below BatchGetSecretValue's 100 calls/s account quota.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=BATCH_CONCURRENCY) as pool:
                outcomes = list(pool.map(self._fetch_chunk, chunks))
        else:
            outcomes = [self._fetch_chunk(chunk) for chunk in chunks]
        for fetched, fallback in outcomes:
            results.update(fetched)
            single.extend(fallback)
        for key in single:
            try:
                results[key] = self.get_one(key)
            except TransientError:
                raise
            except ZtrError as exc:
                results[key] = exc
        for outcome in results.values():
            if isinstance(outcome, TransientError):  # e.g. throttled inside a batch's Errors[]
                raise outcome
        return results

    def _fetch_chunk(
        self, chunk: list[FetchKey]
    ) -> tuple[dict[FetchKey, SecretVersion | ZtrError], list[FetchKey]]:
        """One BatchGetSecretValue; returns its results, or the keys to fetch one by one."""
        if not self._batch_allowed:
            return {}, chunk
        try:
            return self._batch(chunk), []
        except AccessDeniedError:
            # No BatchGetSecretValue permission: fall back to one call a secret.
            self._batch_allowed = False
            from . import logs

            logs.warning(
                "BatchGetSecretValue denied: falling back to one GetSecretValue per "
                "secret; grant secretsmanager:BatchGetSecretValue on * for "
                "ceil(N/20) calls", secrets=len(chunk))
        except TransientError as exc:
            if not exc.throttled:
                raise
            # BatchGetSecretValue's quota is 100/s per account, GetSecretValue's 10,000/s:
            # when a fleet rollout exhausts the first, this load uses the second.
            from . import logs

            logs.warning("BatchGetSecretValue throttled: this load uses GetSecretValue",
                         secrets=len(chunk))
        return {}, chunk

    def _batch(self, chunk: Sequence[FetchKey]) -> dict[FetchKey, SecretVersion | ZtrError]:
        by_id = {key.secret_id: key for key in chunk}
        results: dict[FetchKey, SecretVersion | ZtrError] = {}
        try:
            response = self._client.batch_get_secret_value(SecretIdList=list(by_id))
        except Exception as exc:
            raise self.translate(exc, f"{len(chunk)} secrets", "BatchGetSecretValue") from exc
        if "SecretValues" not in response and "Errors" not in response:
            raise self._malformed(f"{len(chunk)} secrets", "BatchGetSecretValue")
        for entry in response.get("SecretValues", []):
            # One secret may be declared by name and by ARN: every id it answers gets it.
            for key in _matches(by_id, entry):
                results[key] = self._to_version(key.secret_id, entry)
        for error in response.get("Errors", []):
            failed = by_id.get(error.get("SecretId", ""))
            if failed is None:
                continue
            fake = _FakeClientError(error.get("ErrorCode", ""), error.get("Message", ""))
            results[failed] = self.translate(fake, failed.secret_id, "GetSecretValue")
        for key in chunk:  # an id in neither list: treat as not found rather than hang on it
            results.setdefault(key, SecretNotFoundError(
                f"{key.secret_id}: not returned by Secrets Manager"))
        return results

    def describe(self, secret_id: str) -> SecretInfo:
        """DescribeSecret: versions and stages, no value transferred."""
        try:
            response: dict[str, Any] = dict(self._client.describe_secret(SecretId=secret_id))
        except Exception as exc:
            raise self.translate(exc, secret_id, "DescribeSecret") from exc
        if "Name" not in response and "ARN" not in response:
            raise self._malformed(secret_id, "DescribeSecret")
        if response.get("DeletedDate"):
            raise _deleted(secret_id)
        return SecretInfo.parse(response)

    def _malformed(self, secret_id: str, operation: str) -> TransientError:
        # botocore turns a truncated or non-JSON 200 body into an empty result: never take
        # that for an empty secret.
        return TransientError(
            f"{secret_id}: Secrets Manager at {self.endpoint} sent an incomplete {operation} "
            "response (connection cut or a proxy in the way); retrying until the deadline"
        )

    def _to_version(self, secret_id: str, response: Mapping[str, Any]) -> SecretVersion:
        value: str | bytes
        if response.get("SecretString") is not None:
            value = response["SecretString"]
        elif response.get("SecretBinary") is not None:
            value = bytes(response["SecretBinary"])
        else:
            raise self._malformed(secret_id, "GetSecretValue")
        return SecretVersion(
            secret_id=secret_id,
            name=str(response.get("Name", secret_id)),
            arn=str(response.get("ARN", "")),
            version_id=str(response.get("VersionId", "")),
            value=value,
        )


def _deleted(secret_id: str) -> DeletedSecretError:
    return DeletedSecretError(
        f"{secret_id}: scheduled for deletion: restore it with "
        f"`aws secretsmanager restore-secret --secret-id {secret_id}` or remove it from ztr"
    )


class _FakeClientError(Exception):
    """A batch ``Errors[]`` entry, shaped like a ClientError so one translator serves both."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {}}


def _matches(by_id: dict[str, FetchKey], entry: Mapping[str, Any]) -> list[FetchKey]:
    """The requested ids a batch entry answers: its name, its ARN, or a partial ARN (an ARN
    without the six random characters)."""
    name, full_arn = str(entry.get("Name", "")), str(entry.get("ARN", ""))
    return [key for secret_id, key in by_id.items()
            if secret_id in (name, full_arn)
            or (secret_id.startswith("arn:") and full_arn.startswith(secret_id + "-")
                and len(full_arn) == len(secret_id) + 7)]


def plan_fetch(keys: Sequence[FetchKey]) -> tuple[list[list[FetchKey]], list[FetchKey]]:
    """How a load fetches ``keys``: BatchGetSecretValue chunks of up to 20 ids for secrets at
    AWSCURRENT, and GetSecretValue for pinned stages or versions. A lone id goes through
    GetSecretValue: the same single call, and one IAM action fewer. ``iam-policy`` and
    ``plan`` derive their answers from this too."""
    keys = unique(keys)
    current = [key for key in keys if key.at_current]
    single = [key for key in keys if key not in current]
    if len(current) == 1:
        return [], single + current
    chunks = [current[start : start + BATCH_LIMIT] for start in range(0, len(current), BATCH_LIMIT)]
    return chunks, single


def unique(keys: Iterable[FetchKey]) -> list[FetchKey]:
    return list(dict.fromkeys(keys))
