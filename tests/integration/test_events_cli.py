"""Push rotation through the real CLI: ``ztr watch`` and ``ztr-run`` with ``--events-topic`` or
``--events-queue`` against a moto server that serves Secrets Manager, SNS and SQS on one port.

The refresh interval is an hour, so anything that happens within seconds happened because of an
event."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import REGION
from tests.helpers.proc import Proc, http, metric
from tests.helpers.ztr import ZTR, ZTR_RUN, run

NAME = "ev/app/db"


@pytest.fixture
def sns(endpoint: str) -> Any:
    return boto3.client("sns", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def sqs(endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def topic(sns: Any) -> str:
    return str(sns.create_topic(Name="ztr-events-cli")["TopicArn"])


@pytest.fixture
def env(ztr_env: dict[str, str], endpoint: str) -> dict[str, str]:
    return {**ztr_env, "AWS_ENDPOINT_URL_SQS": endpoint, "AWS_ENDPOINT_URL_SNS": endpoint}


def label_updated(created: dict[str, Any], version_id: str, event_id: str) -> str:
    """The native event Secrets Manager sends when AWSCURRENT moves."""
    return json.dumps({
        "version": "0", "id": event_id, "detail-type": "Secret Label Updated",
        "source": "aws.secretsmanager", "account": "123456789012", "time": "2026-12-02T10:00:00Z",
        "region": REGION, "resources": [created["ARN"]],
        "detail": {"name": created["Name"], "labelUpdated": "AWSCURRENT", "versionId": version_id},
    })


def put_secret_call(secret_id: str, event_id: str) -> str:
    """A CloudTrail-derived event, the id as the caller typed it (here: a partial ARN)."""
    return json.dumps({
        "version": "0", "id": event_id, "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.secretsmanager", "account": "123456789012", "time": "2026-12-02T10:00:01Z",
        "region": REGION, "resources": [],
        "detail": {"eventSource": "secretsmanager.amazonaws.com", "eventName": "PutSecretValue",
                   "eventTime": "2026-12-02T10:00:01Z", "requestParameters": {"secretId": secret_id}},
    })


def ztr_queues(sqs: Any) -> list[str]:
    urls = sqs.list_queues().get("QueueUrls", [])
    return [url for url in urls if url.rsplit("/", 1)[-1].startswith("ztr-")]


def test_watch_events_topic_rewrites_file_within_seconds_and_cleans_up(
    sm: Any, sns: Any, sqs: Any, topic: str, env: dict[str, str], shm: Path
) -> None:
    created = sm.create_secret(Name=NAME, SecretString="v1")
    out = shm / "app.env"
    proc = Proc([ZTR, "watch", "--secret", f"DB={NAME}", "--output", str(out), "--format", "json",
                 "--events-topic", topic, "--log-level", "debug"], env)
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        proc.wait_until(lambda: len(ztr_queues(sqs)) == 1, what="ztr's own queue")
        proc.wait_until(lambda: metric(http(proc.metrics_addr() + "/metrics")[1], "ztr_events_up") == 1,
                        what="the event stream up")
        assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
        version = sm.put_secret_value(SecretId=NAME, SecretString="v2")["VersionId"]
        sent = time.monotonic()
        sns.publish(TopicArn=topic, Message=label_updated(created, version, "e-1"))
        proc.wait_until(lambda: json.loads(out.read_text()) == {"DB": "v2"}, timeout=10,
                        what="the file rewritten after the event")
        assert time.monotonic() - sent < 5  # not the hourly poll
        # The same event again, and one about the version now in use: no API call at all.
        calls_before = _describe_calls(proc)
        sns.publish(TopicArn=topic, Message=label_updated(created, version, "e-1"))
        sns.publish(TopicArn=topic, Message=label_updated(created, version, "e-2"))
        # SNS drops a non-JSON message under the subscription's body filter: put it on the queue.
        sqs.send_message(QueueUrl=ztr_queues(sqs)[0], MessageBody="not json at all")
        other = {**created, "Name": "other/secret", "ARN": created["ARN"].replace(NAME, "other/secret")}
        sns.publish(TopicArn=topic, Message=label_updated(other, version, "e-3"))
        proc.wait_until(lambda: sum(_events(proc).values()) >= 5, timeout=10, what="five events counted")
        counts = _events(proc)
        assert counts["matched"] == 2  # e-1 and e-2 (the second is about the version in use)
        assert counts["duplicate"] == 1
        assert counts["malformed"] == 1
        assert counts["ignored"] == 1
        # Counted before it is acted on: wait for the decision about e-2, then count calls.
        proc.wait_log("Event about the version already in use: nothing to check")
        assert _describe_calls(proc) == calls_before
    finally:
        assert proc.stop() == 0
    assert ztr_queues(sqs) == []
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
    assert "not json at all" not in "\n".join(proc.stderr)


def _events(proc: Proc) -> dict[str, float]:
    page = http(proc.metrics_addr() + "/metrics")[1]
    return {result: metric(page, "ztr_events_received_total", {"result": result}) or 0.0
            for result in ("matched", "ignored", "duplicate", "out_of_order", "malformed")}


def _describe_calls(proc: Proc) -> float:
    page = http(proc.metrics_addr() + "/metrics")[1]
    return metric(page, "ztr_api_calls_total", {"operation": "DescribeSecret", "result": "success"}) or 0.0


def test_run_events_queue_burst_causes_one_restart(
    sm: Any, sqs: Any, env: dict[str, str]
) -> None:
    """A queue the user owns (raw events sent straight to it, e.g. as an EventBridge target):
    a burst of events about one rotation restarts the app once; the queue is left in place."""
    sm.create_secret(Name=NAME, SecretString="v1")
    queue = sqs.create_queue(QueueName="my-own-queue")["QueueUrl"]
    proc = Proc([ZTR_RUN, "--secret", f"DB={NAME}", "--events-queue", queue, "--debounce", "1s",
                 "--min-uptime", "0s", "--", "sh", "-c", 'echo "value=$DB"; exec sleep 60'], env)
    try:
        proc.wait_stdout("value=v1")
        sm.put_secret_value(SecretId=NAME, SecretString="v2")
        partial = sm.describe_secret(SecretId=NAME)["ARN"][:-7]
        for i in range(5):
            sqs.send_message(QueueUrl=queue, MessageBody=put_secret_call(partial, f"burst-{i}"))
        proc.wait_stdout("value=v2", timeout=10)
        proc.wait_until(lambda: _events(proc)["matched"] >= 5, timeout=10, what="the burst counted")
        page = http(proc.metrics_addr() + "/metrics")[1]
        assert metric(page, "ztr_child_restarts_total") == 1.0
        assert proc.stdout.count("value=v2") == 1
    finally:
        proc.stop()
    assert queue in sqs.list_queues().get("QueueUrls", [])


def test_watch_events_unreachable_sqs_keeps_loading_and_polling(
    sm: Any, topic: str, ztr_env: dict[str, str], endpoint: str, shm: Path
) -> None:
    sm.create_secret(Name=NAME, SecretString="v1")
    env = {**ztr_env, "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:9", "AWS_ENDPOINT_URL_SNS": endpoint}
    out = shm / "app.env"
    proc = Proc([ZTR, "watch", "--secret", f"DB={NAME}", "--output", str(out), "--format", "json",
                 "--events-topic", topic], env)
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        assert http(proc.metrics_addr() + "/readyz")[0] == 200
        page = http(proc.metrics_addr() + "/metrics")[1]
        assert metric(page, "ztr_events_up") == 0.0
        sm.put_secret_value(SecretId=NAME, SecretString="v2")
        status, body = http(proc.metrics_addr() + "/refresh", method="POST", timeout=30)
        assert status == 200, body
        assert json.loads(out.read_text()) == {"DB": "v2"}
        proc.wait_until(lambda: any(e.get("level") == "warning" for e in proc.logs()), timeout=15,
                        what="the event stream's warning")
        warnings = [e for e in proc.logs() if e.get("level") == "warning"]
        assert 1 <= len(warnings) <= 3, warnings  # one per outage, not one per retry
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize(("flag", "value"), [
    ("--events-topic", "arn:aws:sqs:us-east-1:123456789012:not-a-topic"),
    ("--events-topic", "my-topic"),
    ("--events-queue", "sqs.us-east-1.amazonaws.com/123/q"),
])
def test_events_malformed_topic_or_queue_exits_64(flag: str, value: str, env: dict[str, str],
                                                   shm: Path) -> None:
    result = run(["watch", "--secret", "DB=x", "--output", str(shm / "e"), flag, value], env)
    assert result.code == 64, result.stderr
    assert flag in result.stderr


def test_events_default_floor_is_an_hour(env: dict[str, str], topic: str) -> None:
    from sidecar import config as config_mod

    on = config_mod.load("watch", {"output": "/dev/shm/x", "events_topic": topic, "secret": ["A=a"]},
                         environ={})
    off = config_mod.load("watch", {"output": "/dev/shm/x", "secret": ["A=a"]}, environ={})
    given = config_mod.load("watch", {"output": "/dev/shm/x", "events_topic": topic, "secret": ["A=a"],
                                      "refresh_interval": "10m"}, environ={})
    assert (on.refresh_interval_seconds, off.refresh_interval_seconds) == (3600.0, 300.0)
    assert given.refresh_interval_seconds == 600.0


def test_iam_policy_with_events_topic_adds_exactly_the_stream_actions(
    sm: Any, topic: str, env: dict[str, str]
) -> None:
    from sidecar.eventstream import SNS_ACTIONS_TOPIC, SQS_ACTIONS_LIST, SQS_ACTIONS_TOPIC

    sm.create_secret(Name=NAME, SecretString="v1")
    result = run(["iam-policy", "--secret", f"DB={NAME}", "--events-topic", topic], env)
    assert result.code == 0, result.stderr
    statements = {s["Sid"]: s for s in json.loads(result.stdout)["Statement"]}
    assert statements["EventsOwnQueue"]["Action"] == list(SQS_ACTIONS_TOPIC)
    assert statements["EventsOwnQueue"]["Resource"].endswith(":ztr-*")
    assert statements["EventsListQueues"]["Action"] == list(SQS_ACTIONS_LIST)
    assert statements["EventsSubscribe"]["Resource"] == [topic, f"{topic}:*"]
    assert statements["EventsSubscribe"]["Action"] == list(SNS_ACTIONS_TOPIC)
    assert not any(action.endswith("*") for s in statements.values()
                   for action in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))


def test_plan_events_prices_both(env: dict[str, str]) -> None:
    result = run(["plan", "--pods", "10000", "--events", "--format", "json"], env)
    assert result.code == 0, result.stderr
    plans = json.loads(result.stdout)
    assert plans["polling"]["api_cost_per_month"] == 1920.0
    assert plans["events"]["interval_seconds"] == 3600.0
    assert plans["events"]["api_cost_per_month"] < plans["polling"]["api_cost_per_month"]


def test_watch_sigterm_with_events_exits_promptly(
    sm: Any, topic: str, env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name=NAME, SecretString="v1")
    proc = Proc([ZTR, "watch", "--secret", f"DB={NAME}", "--output", str(shm / "e"),
                 "--events-topic", topic], env)
    try:
        proc.wait_log("Listening for Secrets Manager events")
        proc.wait_until(lambda: metric(http(proc.metrics_addr() + "/metrics")[1], "ztr_events_up") == 1,
                        what="the event stream up")
        sent = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - sent < 5  # the long poll in flight is not waited for
    finally:
        proc.stop()
