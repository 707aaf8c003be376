"""Small AWS helpers shared by check and iam-policy: the caller's identity via STS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from mypy_boto3_sts import STSClient  # boto3-stubs, dev only


@dataclass(frozen=True)
class Identity:
    account: str | None
    arn: str | None
    error: str | None = None


def caller_identity(region: str, timeout_seconds: float) -> Identity:
    """STS GetCallerIdentity on boto3's default chain (AWS_ENDPOINT_URL_STS is honoured).

    Never raises: the identity is context for a report, not a reason to fail.
    """
    import botocore.config
    import botocore.session

    try:
        client = cast("STSClient", botocore.session.get_session().create_client(
            "sts", region_name=region,
            config=botocore.config.Config(connect_timeout=min(5.0, timeout_seconds),
                                          read_timeout=min(10.0, timeout_seconds),
                                          retries={"mode": "standard", "total_max_attempts": 2})))
        response = client.get_caller_identity()
    except Exception as exc:  # noqa: BLE001 - context for a report: never fail on it
        code = getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__
        return Identity(None, None, str(code))
    return Identity(str(response.get("Account")), str(response.get("Arn")))
