"""The event stream over HTTP against a moto server: a real SNS topic delivering to real SQS
queues (moto serves both on one port and delivers Publish to SQS subscriptions at once).

Queue and subscription while running and gone after close; both event kinds, raw through ztr's
own queue and in the SNS envelope through a user's queue; what is not acted on is deleted and
counted; a SIGKILLed owner's queue is swept by another process; SQS down at start and mid-run
(a fault proxy in front of moto) warns, counts and recovers. Synchronisation polls with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from sidecar.events import DUPLICATE, IGNORED, MALFORMED, MATCHED, OUT_OF_ORDER, Hint, Matcher
from sidecar.eventstream import (
    STALE_AFTER_SECONDS,
    TAG_HEARTBEAT,
    TAG_SUBSCRIPTION,
    WAIT_SECONDS,
    EventStream,
    make_clients,
    queue_name_prefix,
)
from tests.conftest import FAKE_CREDENTIALS, REGION
from tests.helpers.faultproxy import FaultProxy, wait_for
from tests.helpers.records import Records

ACCOUNT = "123456789012"  # moto's default account


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def sns(endpoint: str, credentials: None) -> Any:
    return boto3.client("sns", endpoint_url=endpoint, region_name=REGION)


@pytest.fixture
def sqs(endpoint: str, credentials: None) -> Any:
    return boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)


@pytest.fixture
def topic(sns: Any) -> str:
    return str(sns.create_topic(Name="ztr-events")["TopicArn"])


class Recorder:
    def __init__(self) -> None:
        self.hints: list[tuple[set[str], Hint]] = []
        self.results: list[str] = []
        self.states: list[bool] = []
        self.errors: list[tuple[str, str]] = []
        self.calls: list[tuple[str, str]] = []

    def hooks(self) -> dict[str, Any]:
        return {"on_hint": lambda ids, hint: self.hints.append((ids, hint)),
                "on_result": self.results.append, "on_state": self.states.append,
                "on_error": lambda operation, code: self.errors.append((operation, code))}


Starter = Callable[..., tuple[EventStream, Recorder]]


@pytest.fixture
def start(endpoint: str, credentials: None) -> Iterator[Starter]:
    """Starts streams on real botocore clients (as ztr makes them); closes them all after."""
    streams: list[EventStream] = []

    def starter(*, sqs_endpoint: str | None = None, secrets: tuple[str, ...] = ("prod/db",),
                prefixes: tuple[str, ...] = (), wait_up: bool = True, **options: Any
                ) -> tuple[EventStream, Recorder]:
        recorder = Recorder()
        queue_client, _ = make_clients(REGION, endpoint_url=sqs_endpoint or endpoint,
                                       record=lambda op, result: recorder.calls.append((op, result)))
        _, topic_client = make_clients(REGION, topic_arn=options.get("topic_arn"), endpoint_url=endpoint)
        settings: dict[str, Any] = {"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2,
                                    **recorder.hooks(), **options}
        if "topic_arn" in options:
            settings["sns"] = topic_client
        stream = EventStream(sqs=queue_client, matcher=Matcher(secrets, prefixes, region=REGION), **settings)
        streams.append(stream)
        stream.start()
        if wait_up:
            assert wait_for(lambda: stream.up, timeout=15), recorder.errors
        return stream, recorder

    yield starter
    for stream in streams:
        stream.close()


SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/db-AbCdEf"


def native_event(event_id: str = "n-1", *, name: str = "prod/db", arn: str = SECRET_ARN,
                 time_text: str = "2026-11-02T10:00:00Z") -> str:
    return json.dumps({
        "version": "0", "id": event_id, "detail-type": "Secret Label Updated",
        "source": "aws.secretsmanager", "account": ACCOUNT, "time": time_text, "region": REGION,
        "resources": [arn], "detail": {"name": name, "labelUpdated": "AWSCURRENT", "versionId": "v-new"},
    })


def cloudtrail_event(event_id: str = "c-1", *, secret_id: str = SECRET_ARN.rsplit("-", 1)[0]) -> str:
    return json.dumps({
        "version": "0", "id": event_id, "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.secretsmanager", "account": ACCOUNT, "time": "2026-11-02T10:00:01Z",
        "region": REGION, "resources": [],
        "detail": {"eventSource": "secretsmanager.amazonaws.com", "eventName": "PutSecretValue",
                   "eventTime": "2026-11-02T10:00:01Z", "requestParameters": {"secretId": secret_id},
                   "responseElements": {"aRN": SECRET_ARN, "versionId": "v-new"}},
    })


def queue_names(sqs: Any) -> list[str]:
    return [url.rsplit("/", 1)[-1] for url in sqs.list_queues().get("QueueUrls", [])]


def subscriptions(sns: Any, topic: str) -> list[dict[str, Any]]:
    return list(sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"])


def messages_left(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


# -- lifecycle -------------------------------------------------------------------------------


def test_events_moto_queue_and_subscription_exist_while_running_gone_after_close(
        start: Starter, sqs: Any, sns: Any, topic: str) -> None:
    stream, recorder = start(topic_arn=topic)
    name = str(stream.queue_url).rsplit("/", 1)[-1]
    assert queue_names(sqs) == [name]
    assert name.startswith(queue_name_prefix(topic))
    (sub,) = subscriptions(sns, topic)
    attributes = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
    assert attributes["RawMessageDelivery"] == "true"
    assert attributes["Endpoint"].endswith(":" + name)
    tags = sqs.list_queue_tags(QueueUrl=stream.queue_url)["Tags"]
    assert tags[TAG_SUBSCRIPTION] == sub["SubscriptionArn"]
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=stream.queue_url,
                                                 AttributeNames=["Policy"])["Attributes"]["Policy"])
    assert policy["Statement"][0]["Condition"] == {"ArnEquals": {"aws:SourceArn": topic}}

    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 2.0  # a 20 s long poll was in flight
    assert queue_names(sqs) == []
    assert subscriptions(sns, topic) == []
    sns.publish(TopicArn=topic, Message=native_event())  # no subscription left at a deleted queue
    assert recorder.states == [True, False]
    assert recorder.errors == []


def test_events_moto_make_clients_read_timeout_outlasts_long_poll(credentials: None) -> None:
    queue_client, topic_client = make_clients(REGION, topic_arn=f"arn:aws:sns:eu-west-1:{ACCOUNT}:t")
    assert getattr(queue_client, "meta").config.read_timeout > WAIT_SECONDS
    assert getattr(topic_client, "meta").region_name == "eu-west-1"  # SNS where the topic is


# -- both kinds, both deliveries -----------------------------------------------------------------


@pytest.fixture
def user_queue(sqs: Any, sns: Any, topic: str) -> str:
    """A queue the user made and subscribed without raw delivery: messages in the SNS envelope."""
    url = str(sqs.create_queue(QueueName="app-events")["QueueUrl"])
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return url


@pytest.mark.parametrize("kind", ["native", "cloudtrail"])
@pytest.mark.parametrize("delivery", ["raw-own-queue", "enveloped-user-queue"])
def test_events_moto_event_through_topic_reaches_on_hint(
        start: Starter, sqs: Any, sns: Any, topic: str, request: pytest.FixtureRequest,
        kind: str, delivery: str) -> None:
    if delivery == "raw-own-queue":
        stream, recorder = start(topic_arn=topic, secrets=("prod/db", SECRET_ARN))
    else:
        url = request.getfixturevalue("user_queue")
        stream, recorder = start(queue_url=url, secrets=("prod/db", SECRET_ARN))
    published = time.time()
    sns.publish(TopicArn=topic, Message=native_event() if kind == "native" else cloudtrail_event())
    assert wait_for(lambda: recorder.hints, timeout=10)
    ((ids, hint),) = recorder.hints
    assert ids == {"prod/db", SECRET_ARN}
    assert hint.version_id == "v-new"
    assert hint.received_time is not None
    assert hint.queued_time is not None
    assert published - 1.0 <= hint.queued_time <= hint.received_time < published + 2.0
    assert (hint.published_time is not None) == (delivery == "enveloped-user-queue")
    assert wait_for(lambda: messages_left(sqs, str(stream.queue_url)) == 0)


def test_events_moto_prefix_secret_created_after_start(start: Starter, sns: Any, topic: str) -> None:
    _, recorder = start(topic_arn=topic, secrets=(), prefixes=("prod/app/",))
    arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/app/new-Zz9Yy8"
    sns.publish(TopicArn=topic, Message=native_event(name="prod/app/new", arn=arn))
    assert wait_for(lambda: recorder.hints)
    assert recorder.hints[0][0] == {"prod/app/new"}


def test_events_moto_unacted_messages_deleted_and_counted(
        start: Starter, sqs: Any, sns: Any, topic: str) -> None:
    stream, recorder = start(topic_arn=topic)
    url = str(stream.queue_url)
    sns.publish(TopicArn=topic, Message=native_event("n-1", time_text="2026-11-02T10:00:05Z"))
    sns.publish(TopicArn=topic, Message=native_event("n-1", time_text="2026-11-02T10:00:05Z"))
    sns.publish(TopicArn=topic, Message=native_event("n-0", time_text="2026-11-02T10:00:00Z"))
    other = SECRET_ARN.replace("prod/db", "prod/other")
    sns.publish(TopicArn=topic, Message=native_event("o-1", name="prod/other", arn=other))
    sns.publish(TopicArn=topic, Message="not an event")  # the subscription's filter drops it
    sqs.send_message(QueueUrl=url, MessageBody="{not json")  # straight into the queue
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"source": "aws.secretsmanager"}))
    assert wait_for(lambda: len(recorder.results) == 6, timeout=10), recorder.results
    expected = [MATCHED, DUPLICATE, OUT_OF_ORDER, IGNORED, MALFORMED, MALFORMED]
    assert sorted(recorder.results) == sorted(expected)
    assert len(recorder.hints) == 1
    assert wait_for(lambda: messages_left(sqs, url) == 0)


# -- orphans -----------------------------------------------------------------------------------

OWNER_SCRIPT = """
import sys, threading
from sidecar.events import Matcher
from sidecar.eventstream import EventStream, make_clients
endpoint, topic = sys.argv[1], sys.argv[2]
sqs, sns = make_clients("us-east-1", topic_arn=topic, endpoint_url=endpoint)
up = threading.Event()
stream = EventStream(sqs=sqs, sns=sns, topic_arn=topic, matcher=Matcher(["prod/db"]),
                     on_hint=lambda ids, hint: None, on_state=lambda ok: ok and up.set())
stream.start()
up.wait(30)
print(stream.queue_url, flush=True)
threading.Event().wait()
"""


def test_events_moto_sigkilled_owner_queue_swept_by_another_process(
        start: Starter, endpoint: str, sqs: Any, sns: Any, topic: str) -> None:
    env = {**os.environ, **FAKE_CREDENTIALS}
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, endpoint, topic], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        dead_url = owner.stdout.readline().strip()
        assert dead_url.startswith("http")
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
    dead_name = dead_url.rsplit("/", 1)[-1]
    assert queue_names(sqs) == [dead_name]  # SIGKILL: nothing cleaned up

    # A live process that has not yet waited out the staleness bound leaves it alone...
    stream, watching = start(topic_arn=topic, sweep_seconds=0.05)
    assert wait_for(lambda: watching.calls.count(("ListQueueTags", "success")) >= 2)  # it looked
    assert sorted(queue_names(sqs)) == sorted([dead_name, str(stream.queue_url).rsplit("/", 1)[-1]])
    stream.close()

    # ...one whose clock is past the bound (the owner's last heartbeat is > 30 min old) removes
    # the queue and its subscription; its own queue, heartbeat fresh, stays.
    later = lambda: time.time() + STALE_AFTER_SECONDS + 100  # noqa: E731
    survivor, recorder = start(topic_arn=topic, sweep_seconds=0.05, wall_clock=later)
    own_name = str(survivor.queue_url).rsplit("/", 1)[-1]
    assert wait_for(lambda: queue_names(sqs) == [own_name], timeout=10), queue_names(sqs)
    assert [s["Endpoint"].rsplit(":", 1)[-1] for s in subscriptions(sns, topic)] == [own_name]
    own_beat = float(sqs.list_queue_tags(QueueUrl=survivor.queue_url)["Tags"][TAG_HEARTBEAT])
    assert own_beat > time.time() + STALE_AFTER_SECONDS
    sns.publish(TopicArn=topic, Message=native_event())  # no subscription at a deleted queue
    assert wait_for(lambda: recorder.hints)


# -- failures ----------------------------------------------------------------------------------




def test_events_moto_sqs_down_at_start_then_mid_run_warns_and_recovers(
        start: Starter, fault_proxy: FaultProxy, sqs: Any, sns: Any, topic: str,
        ztr_records: Records) -> None:
    fault_proxy.set_down(True)
    stream, recorder = start(topic_arn=topic, sqs_endpoint=fault_proxy.url, wait_up=False, wait_seconds=1)
    assert wait_for(lambda: len(recorder.errors) >= 2)
    assert not stream.up
    assert queue_names(sqs) == []
    assert {op for op, _ in recorder.errors} == {"CreateQueue"}
    fault_proxy.set_down(False)
    assert wait_for(lambda: stream.up, timeout=10)
    sns.publish(TopicArn=topic, Message=native_event("before"))
    assert wait_for(lambda: len(recorder.hints) == 1)

    fault_proxy.set_down(True)
    assert wait_for(lambda: not stream.up, timeout=10)
    sns.publish(TopicArn=topic, Message=native_event("during"))  # waits in the queue
    fault_proxy.set_down(False)
    assert wait_for(lambda: stream.up, timeout=10)
    assert wait_for(lambda: len(recorder.hints) == 2, timeout=10)
    assert recorder.states == [False, True, False, True]
    warnings = ztr_records.at(logging.WARNING)
    assert len(warnings) == 2, warnings  # one per outage, however many retries
    assert ("ReceiveMessage", "network_error") in recorder.calls
    assert all("before" not in str(r.__dict__) for r in ztr_records.records)  # no body in any record


def test_events_moto_topic_created_after_start_is_picked_up(
        start: Starter, sqs: Any, sns: Any) -> None:
    missing = f"arn:aws:sns:{REGION}:{ACCOUNT}:later"
    stream, recorder = start(topic_arn=missing, wait_up=False)
    assert wait_for(lambda: any(op == "Subscribe" for op, _ in recorder.errors))
    assert not stream.up
    sns.create_topic(Name="later")
    assert wait_for(lambda: stream.up, timeout=10)
    sns.publish(TopicArn=missing, Message=native_event())
    assert wait_for(lambda: recorder.hints)
