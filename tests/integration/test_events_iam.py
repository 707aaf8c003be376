"""``ztr iam-policy --events-topic`` proven under moto's IAM enforcement: with the printed policy
attached to the user whose keys ztr uses, ``ztr watch --events-topic`` gets its stream up and acts
on an event; without a statement the stream stays down with one warning while loading works.

What moto 5.2.5 checks, and so what this proves (read in moto/core/responses.py call_action,
moto/iam/access_control.py, moto/sqs/responses.py):
- Every SQS and SNS request is authenticated and its action checked against the user's
  policies, as for Secrets Manager, so the action lists are proven: a missing action is denied.
- Resources: SQS calls that name an existing queue are checked against that queue's ARN, so the
  ``ztr-*`` scoping of EventsOwnQueue is exercised for GetQueueAttributes, SetQueueAttributes,
  TagQueue, ReceiveMessage, DeleteMessage(Batch), ListQueueTags and DeleteQueue (and a queue not
  named ``ztr-*`` is refused: test_events_iam_own_queue_statement_is_scoped_to_ztr_queues).
  CreateQueue (the queue does not exist yet), ListQueues and every SNS and Secrets Manager call are
  checked against Resource "*", which no exact ARN matches: for moto those statements keep their
  actions with Resource "*" (CreateQueue split out of EventsOwnQueue for that). The exact
  resources are asserted on the printed policy itself.
- moto names the action after the operation: DeleteMessageBatch is checked as
  ``sqs:DeleteMessageBatch``, which AWS authorises as ``sqs:DeleteMessage``; the moto copy adds
  that one name next to ``sqs:DeleteMessage``.
- Not checked by moto at all: ``sqs:TagQueue`` for tags given to CreateQueue, and the queue policy
  (SNS delivers to the queue whatever the policy says). Those two rest on AWS's documentation.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import REGION
from tests.helpers.proc import Proc, http, metric
from tests.helpers.ztr import ZTR, run

NAME = "ev/iam/db"
ACCOUNT = "123456789012"


def _set_auth(endpoint: str, count: str) -> None:
    request = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=count.encode(),
                                     method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def enforce(endpoint: str) -> Iterator[Any]:
    """Turns moto's IAM enforcement on (INITIAL_NO_AUTH_ACTION_COUNT 0), and off after the test."""
    yield lambda: _set_auth(endpoint, "0")
    _set_auth(endpoint, "inf")


def _client(service: Any, endpoint: str, keys: dict[str, str]) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=keys["AccessKeyId"],
                        aws_secret_access_key=keys["SecretAccessKey"])


@pytest.fixture
def iam(endpoint: str) -> Any:
    return _client("iam", endpoint, {"AccessKeyId": "testing", "SecretAccessKey": "testing"})


def _user(iam: Any, name: str) -> dict[str, str]:
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}


@pytest.fixture
def admin(iam: Any, endpoint: str) -> dict[str, Any]:
    """Clients of a user allowed everything: what the test itself does once enforcement is on."""
    keys = _user(iam, "admin")
    iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    return {service: _client(service, endpoint, keys) for service in ("secretsmanager", "sns", "sqs")}


@pytest.fixture
def arranged(sm: Any, iam: Any, endpoint: str, ztr_env: dict[str, str]) -> dict[str, Any]:
    """The secret, the topic, the printed policy, and the env of a user "ztr" with no policy yet."""
    created = sm.create_secret(Name=NAME, SecretString="v1")
    sns = _client("sns", endpoint, {"AccessKeyId": "testing", "SecretAccessKey": "testing"})
    topic = sns.create_topic(Name="ztr-events-iam")["TopicArn"]
    result = run(["iam-policy", "--secret", f"DB={NAME}", "--events-topic", topic],
                 dict(ztr_env, AWS_ENDPOINT_URL_STS=endpoint))
    assert result.code == 0, result.stderr
    keys = _user(iam, "ztr")
    env = dict(ztr_env, AWS_ACCESS_KEY_ID=keys["AccessKeyId"],
               AWS_SECRET_ACCESS_KEY=keys["SecretAccessKey"],
               AWS_ENDPOINT_URL_SQS=endpoint, AWS_ENDPOINT_URL_SNS=endpoint)
    return {"created": created, "topic": topic, "policy": json.loads(result.stdout), "env": env,
            "keys": keys}


def _for_moto(policy: dict[str, Any]) -> str:
    """The printed policy as moto can check it (module docstring): actions unchanged, exact
    resources kept where moto supplies the resource (SQS calls on an existing queue), "*" where
    it supplies only "*", and DeleteMessageBatch under its operation name."""
    statements = []
    for statement in json.loads(json.dumps(policy))["Statement"]:
        actions = list(statement["Action"])
        if statement["Sid"] == "EventsOwnQueue":
            actions.remove("sqs:CreateQueue")
            statements.append({"Sid": "EventsCreateQueueMoto", "Effect": "Allow",
                               "Action": ["sqs:CreateQueue"], "Resource": "*"})
            actions.insert(actions.index("sqs:DeleteMessage") + 1, "sqs:DeleteMessageBatch")
            statements.append({**statement, "Action": actions})
            continue
        statement.pop("Condition", None)
        statements.append({**statement, "Resource": "*"})
    return json.dumps({"Version": policy["Version"], "Statement": statements})


def _without(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    return {**policy, "Statement": [s for s in policy["Statement"] if s["Sid"] != sid]}


def label_updated(created: dict[str, Any], version_id: str, event_id: str) -> str:
    return json.dumps({
        "version": "0", "id": event_id, "detail-type": "Secret Label Updated",
        "source": "aws.secretsmanager", "account": ACCOUNT, "time": "2026-12-02T10:00:00Z",
        "region": REGION, "resources": [created["ARN"]],
        "detail": {"name": created["Name"], "labelUpdated": "AWSCURRENT", "versionId": version_id},
    })


def _page(proc: Proc) -> str:
    return http(proc.metrics_addr() + "/metrics")[1]


def _failed_calls(page: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.labels["operation"], s.labels["result"]): s.value
            for family in text_string_to_metric_families(page) for s in family.samples
            if s.name == "ztr_api_calls_total" and s.labels["result"] != "success" and s.value}


def _ztr_queues(sqs: Any) -> list[str]:
    return [url for url in sqs.list_queues().get("QueueUrls", [])
            if url.rsplit("/", 1)[-1].startswith("ztr-")]


def test_events_iam_printed_policy_scopes_stream_statements(arranged: dict[str, Any]) -> None:
    statements = {s["Sid"]: s for s in arranged["policy"]["Statement"]}
    topic = arranged["topic"]
    assert statements["EventsOwnQueue"]["Resource"] == f"arn:aws:sqs:{REGION}:{ACCOUNT}:ztr-*"
    assert statements["EventsListQueues"] == {"Sid": "EventsListQueues", "Effect": "Allow",
                                              "Action": ["sqs:ListQueues"], "Resource": "*"}
    assert statements["EventsSubscribe"]["Resource"] == [topic, f"{topic}:*"]
    assert set(statements) == {"ReadDeclaredSecrets", "EventsOwnQueue", "EventsListQueues",
                               "EventsSubscribe"}


def test_events_iam_exact_policy_brings_stream_up_and_acts_on_event(
    arranged: dict[str, Any], iam: Any, admin: dict[str, Any], enforce: Any, shm: Path
) -> None:
    iam.put_user_policy(UserName="ztr", PolicyName="ztr", PolicyDocument=_for_moto(arranged["policy"]))
    enforce()
    out = shm / "app.env"
    proc = Proc([ZTR, "watch", "--secret", f"DB={NAME}", "--output", str(out), "--format", "json",
                 "--refresh-interval", "1h", "--events-topic", arranged["topic"]], arranged["env"])
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        proc.wait_until(lambda: metric(_page(proc), "ztr_events_up") == 1, what="the event stream up")
        assert len(_ztr_queues(admin["sqs"])) == 1
        version = admin["secretsmanager"].put_secret_value(SecretId=NAME, SecretString="v2")["VersionId"]
        admin["sns"].publish(TopicArn=arranged["topic"],
                             Message=label_updated(arranged["created"], version, "iam-1"))
        proc.wait_until(lambda: json.loads(out.read_text()) == {"DB": "v2"}, timeout=10,
                        what="the file rewritten after the event (the floor is an hour)")
        page = _page(proc)
        assert metric(page, "ztr_events_received_total", {"result": "matched"}) == 1.0
        assert _failed_calls(page) == {}  # nothing denied along the way
        assert not [e for e in proc.logs() if e.get("level") == "warning"]
    finally:
        assert proc.stop() == 0
    # Unsubscribe and DeleteQueue were allowed too: nothing left behind.
    assert _ztr_queues(admin["sqs"]) == []
    assert admin["sns"].list_subscriptions_by_topic(TopicArn=arranged["topic"])["Subscriptions"] == []


@pytest.mark.parametrize(("sid", "denied"), [
    ("EventsOwnQueue", "CreateQueue"),
    ("EventsSubscribe", "Subscribe"),
])
def test_events_iam_without_stream_statement_stays_down_and_loading_works(
    sid: str, denied: str, arranged: dict[str, Any], iam: Any, admin: dict[str, Any],
    enforce: Any, shm: Path
) -> None:
    policy = _without(arranged["policy"], sid)
    iam.put_user_policy(UserName="ztr", PolicyName="ztr", PolicyDocument=_for_moto(policy))
    enforce()
    out = shm / "app.env"
    proc = Proc([ZTR, "watch", "--secret", f"DB={NAME}", "--output", str(out), "--format", "json",
                 "--refresh-interval", "1h", "--events-topic", arranged["topic"]], arranged["env"])
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        assert json.loads(out.read_text()) == {"DB": "v1"}
        proc.wait_until(lambda: any(op == denied for op, _ in _failed_calls(_page(proc))),
                        what=f"{denied} denied and counted")
        proc.wait_until(lambda: [e for e in proc.logs() if e.get("level") == "warning"],
                        what="the warning")
        page = _page(proc)
        assert metric(page, "ztr_events_up") == 0.0
        assert http(proc.metrics_addr() + "/readyz")[0] == 200
        # Polling is the floor: a check through the usual path still loads the new value.
        admin["secretsmanager"].put_secret_value(SecretId=NAME, SecretString="v2")
        status, body = http(proc.metrics_addr() + "/refresh", method="POST", timeout=30)
        assert status == 200, body
        assert json.loads(out.read_text()) == {"DB": "v2"}
        warnings = [e for e in proc.logs() if e.get("level") == "warning"]
        assert len(warnings) == 1, warnings  # one per outage, not one per retry
    finally:
        assert proc.stop() == 0
    assert _ztr_queues(admin["sqs"]) == []  # a half-made queue is removed too (DeleteQueue allowed)


def test_events_iam_own_queue_statement_is_scoped_to_ztr_queues(
    arranged: dict[str, Any], iam: Any, admin: dict[str, Any], enforce: Any, endpoint: str
) -> None:
    """moto checks SQS calls on an existing queue against its ARN: the printed ``ztr-*`` scope
    lets ztr's keys read a ztr- queue and nothing else."""
    own = admin["sqs"].create_queue(QueueName="ztr-scope-check")["QueueUrl"]
    other = admin["sqs"].create_queue(QueueName="app-queue")["QueueUrl"]
    iam.put_user_policy(UserName="ztr", PolicyName="ztr", PolicyDocument=_for_moto(arranged["policy"]))
    enforce()
    sqs = _client("sqs", endpoint, arranged["keys"])
    sqs.receive_message(QueueUrl=own, WaitTimeSeconds=0)
    with pytest.raises(ClientError, match=r"403|AccessDenied"):
        sqs.receive_message(QueueUrl=other, WaitTimeSeconds=0)
