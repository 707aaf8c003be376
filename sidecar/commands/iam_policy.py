"""``ztr iam-policy``: the least-privilege IAM policy the declared secrets need."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from .. import logs
from ..config import Config
from ..errors import ZtrError
from ..signals import SignalInbox
from ..source import arn, arn_pattern, caller_identity, plan_fetch
from ..startup import make_loader

AWS_MANAGED_KEY = "alias/aws/secretsmanager"


def build_policy(*, region: str, account: str | None, secret_arns: list[str], uses_batch: bool,
                 prefix_arn: str | None, kms_keys: list[str]) -> dict[str, Any]:
    """The policy document. Pure, so tests can check each statement."""
    read = sorted(set(secret_arns + ([prefix_arn] if prefix_arn else [])))
    statements: list[dict[str, Any]] = [{
        "Sid": "ReadDeclaredSecrets",
        "Effect": "Allow",
        # DescribeSecret: the refresh loop compares version ids without fetching values.
        "Action": ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"],
        "Resource": read,
    }]
    if uses_batch:
        statements.append({
            "Sid": "BatchFetch",
            "Effect": "Allow",
            # BatchGetSecretValue has no resource-level permissions; GetSecretValue above still
            # limits which secrets it returns.
            "Action": ["secretsmanager:BatchGetSecretValue"],
            "Resource": "*",
        })
    if prefix_arn:
        statements.append({
            "Sid": "ListPrefix",
            "Effect": "Allow",
            "Action": ["secretsmanager:ListSecrets"],
            "Resource": "*",
        })
    if kms_keys:
        statements.append({
            "Sid": "DecryptWithCustomerManagedKeys",
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": sorted(set(kms_keys)),
            "Condition": {"StringEquals": {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}},
        })
    return {"Version": "2012-10-17", "Statement": statements}


def _key_arn(key_id: str, region: str, account: str | None) -> str | None:
    if key_id.startswith("arn:"):
        return key_id
    if key_id == AWS_MANAGED_KEY or key_id.startswith("alias/"):
        return None  # the AWS managed key needs no grant; an alias cannot be a Resource
    return arn("kms", region, account, f"key/{key_id}")


def main(config: Config, redactor: logs.Redactor, inbox: SignalInbox) -> int:
    return report(config)


def report(config: Config, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    loader = make_loader(config)
    identity = caller_identity(config.region, config.timeout_seconds)
    account = identity.account
    arns: list[str] = []
    kms_keys = list(config.kms_keys)
    bindings = list(config.bindings)
    for secret_id in dict.fromkeys(b.ref.secret_id for b in bindings):
        try:
            info = loader.source.describe(secret_id)
        except ZtrError:
            # Not allowed to describe (or not created yet): the name with the ARN's random suffix.
            arns.append(arn_pattern(secret_id, config.region, account))
            continue
        arns.append(info.arn)
        key = _key_arn(info.kms_key_id, config.region, account) if info.kms_key_id else None
        if key:
            kms_keys.append(key)
    prefix_arn = None
    if config.prefix:
        prefix_arn = arn("secretsmanager", config.region, account, f"secret:{config.prefix}*")
    keys = [b.ref.fetch_key for b in bindings]
    chunks, _ = plan_fetch(keys)
    # A prefix adds secrets at AWSCURRENT: with declared ones, or with several matches, batch is used.
    uses_batch = bool(chunks) or bool(config.prefix)
    policy = build_policy(region=config.region, account=account, secret_arns=arns,
                          uses_batch=uses_batch, prefix_arn=prefix_arn, kms_keys=kms_keys)
    policy["Statement"].extend(event_statements(config.events_topic, config.events_queue,
                                                region=config.region, account=account))
    print(json.dumps(policy, indent=2), file=out)
    return 0


def event_statements(topic_arn: str | None, queue_url: str | None, *, region: str,
                     account: str | None) -> list[dict[str, Any]]:
    """What the event stream calls (``--events-topic`` / ``--events-queue``), scoped to ztr's
    own ``ztr-*`` queues and the topic."""
    from ..events import queue_region
    from ..eventstream import (
        QUEUE_PREFIX,
        SNS_ACTIONS_TOPIC,
        SQS_ACTIONS_LIST,
        SQS_ACTIONS_QUEUE,
        SQS_ACTIONS_TOPIC,
    )

    if topic_arn is not None:
        # The queue lives where ztr runs (the SQS client's region), whatever the topic's region.
        queues = arn("sqs", region, account, f"{QUEUE_PREFIX}*")
        return [
            {"Sid": "EventsOwnQueue", "Effect": "Allow", "Action": list(SQS_ACTIONS_TOPIC),
             "Resource": queues},
            # ListQueues has no resource-level permissions; the sweep lists ztr-* queues only.
            {"Sid": "EventsListQueues", "Effect": "Allow", "Action": list(SQS_ACTIONS_LIST),
             "Resource": "*"},
            {"Sid": "EventsSubscribe", "Effect": "Allow", "Action": list(SNS_ACTIONS_TOPIC),
             "Resource": [topic_arn, f"{topic_arn}:*"]},
        ]
    if queue_url is not None:
        where = queue_region(queue_url) or region
        owner, name = queue_url.rstrip("/").split("/")[-2:]
        return [{"Sid": "EventsReadQueue", "Effect": "Allow", "Action": list(SQS_ACTIONS_QUEUE),
                 "Resource": arn("sqs", where, owner, name)}]
    return []
