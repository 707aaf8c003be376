"""sidecar.eventstream against in-memory SQS and SNS fakes: lifecycle, failures, orphan sweep.

The fakes keep what the stream relies on (long polls that wake on a message, receipt handles,
tags, subscriptions) and fail on demand with botocore's own ClientError. The moto suite
(tests/integration/test_events_moto.py) runs the same paths over HTTP.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from sidecar import eventstream
from sidecar.events import DUPLICATE, IGNORED, MALFORMED, MATCHED, Hint, Matcher
from sidecar.eventstream import (
    TAG_HEARTBEAT,
    TAG_OWNER,
    TAG_SUBSCRIPTION,
    TAG_TOPIC,
    EventStream,
    OrphanSweeper,
    queue_name_prefix,
)
from tests.helpers.faultproxy import wait_for
from tests.helpers.records import Records

ACCOUNT = "123456789012"
REGION = "us-east-1"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:ztr-events"
SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/db-AbCdEf"
GONE = "AWS.SimpleQueueService.NonExistentQueue"


def client_error(code: str, operation: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "fake"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


class Faults:
    """Failures to raise, per operation, in call order."""

    def __init__(self) -> None:
        self.pending: dict[str, deque[BaseException]] = {}
        self.lock = threading.Lock()

    def add(self, operation: str, *errors: BaseException) -> None:
        with self.lock:
            self.pending.setdefault(operation, deque()).extend(errors)

    def check(self, operation: str) -> None:
        with self.lock:
            queue = self.pending.get(operation)
            error = queue.popleft() if queue else None
        if error is not None:
            raise error


class FakeQueue:
    def __init__(self, name: str, tags: dict[str, str]) -> None:
        self.name = name
        self.url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"
        self.arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
        self.tags = dict(tags)
        self.attributes: dict[str, str] = {}
        self.visible: deque[tuple[str, str]] = deque()  # (message id, body)
        self.in_flight: dict[str, str] = {}  # receipt handle -> body
        self.deleted = False


class FakeSQS:
    """The SQS calls of eventstream.QueueClient, in memory."""

    def __init__(self) -> None:
        self.queues: dict[str, FakeQueue] = {}
        self.calls: list[str] = []
        self.timeline: list[str] = []  # SQS and SNS calls in order
        self.faults = Faults()
        self.cond = threading.Condition()
        self.receivers = 0
        self._serial = 0

    def _enter(self, operation: str) -> None:
        with self.cond:
            self.calls.append(operation)
            self.timeline.append(f"sqs:{operation}")
        self.faults.check(operation)

    def _queue(self, url: str) -> FakeQueue:
        name = url.rsplit("/", 1)[-1]
        queue = self.queues.get(name)
        if queue is None:
            raise client_error(GONE, "queue")
        return queue

    def by_arn(self, arn: str) -> FakeQueue | None:
        return next((q for q in self.queues.values() if q.arn == arn), None)

    def create_queue(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("CreateQueue")
        with self.cond:
            queue = self.queues.setdefault(kwargs["QueueName"],
                                           FakeQueue(kwargs["QueueName"], kwargs.get("tags") or {}))
            queue.attributes.update(kwargs.get("Attributes") or {})
        return {"QueueUrl": queue.url}

    def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("GetQueueAttributes")
        return {"Attributes": {"QueueArn": self._queue(kwargs["QueueUrl"]).arn}}

    def set_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("SetQueueAttributes")
        self._queue(kwargs["QueueUrl"]).attributes.update(kwargs["Attributes"])
        return {}

    def tag_queue(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("TagQueue")
        self._queue(kwargs["QueueUrl"]).tags.update(kwargs["Tags"])
        return {}

    def list_queue_tags(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("ListQueueTags")
        return {"Tags": dict(self._queue(kwargs["QueueUrl"]).tags)}

    def list_queues(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("ListQueues")
        prefix, limit = kwargs.get("QueueNamePrefix", ""), kwargs.get("MaxResults", 1000)
        urls = sorted(q.url for q in self.queues.values() if q.name.startswith(prefix))
        page: dict[str, Any] = {"QueueUrls": urls[:limit]} if urls else {}
        if len(urls) > limit:
            page["NextToken"] = "more"
        return page

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("ReceiveMessage")
        deadline = time.monotonic() + kwargs.get("WaitTimeSeconds", 0)
        with self.cond:
            self.receivers += 1
            try:
                while True:
                    queue = self._queue(kwargs["QueueUrl"])
                    if queue.visible:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return {}
                    self.cond.wait(remaining)
                messages = []
                while queue.visible and len(messages) < kwargs.get("MaxNumberOfMessages", 1):
                    message_id, text = queue.visible.popleft()
                    self._serial += 1
                    handle = f"rh-{self._serial}"
                    queue.in_flight[handle] = text
                    messages.append({"MessageId": message_id, "ReceiptHandle": handle, "Body": text,
                                     "Attributes": {"SentTimestamp": "1800000000250"}})
                return {"Messages": messages}
            finally:
                self.receivers -= 1

    def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("DeleteMessageBatch")
        queue = self._queue(kwargs["QueueUrl"])
        ok, failed = [], []
        with self.cond:
            for entry in kwargs["Entries"]:
                if queue.in_flight.pop(entry["ReceiptHandle"], None) is None:
                    failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True})
                else:
                    ok.append({"Id": entry["Id"]})
        return {"Successful": ok, "Failed": failed}

    def delete_queue(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("DeleteQueue")
        with self.cond:
            queue = self._queue(kwargs["QueueUrl"])
            queue.deleted = True
            del self.queues[queue.name]
            self.cond.notify_all()
        return {}

    # -- for tests ---------------------------------------------------------------------------

    def send(self, queue: FakeQueue, text: str) -> None:
        with self.cond:
            self._serial += 1
            queue.visible.append((f"m-{self._serial}", text))
            self.cond.notify_all()

    def add_queue(self, name: str, tags: dict[str, str]) -> FakeQueue:
        queue = FakeQueue(name, tags)
        self.queues[name] = queue
        return queue


class FakeSNS:
    """The SNS calls of eventstream.TopicClient, delivering to FakeSQS queues."""

    def __init__(self, sqs: FakeSQS, topics: tuple[str, ...] = (TOPIC,)) -> None:
        self.sqs = sqs
        self.topics = set(topics)
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.faults = Faults()

    def _enter(self, operation: str) -> None:
        self.calls.append(operation)
        with self.sqs.cond:
            self.sqs.timeline.append(f"sns:{operation}")
        self.faults.check(operation)

    def subscribe(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("Subscribe")
        if kwargs["TopicArn"] not in self.topics:
            raise client_error("NotFound", "Subscribe", 404)
        arn = f"{kwargs['TopicArn']}:sub-{len(self.subscriptions) + 1}"
        self.subscriptions[arn] = {"SubscriptionArn": arn, "TopicArn": kwargs["TopicArn"],
                                   "Endpoint": kwargs["Endpoint"], "Protocol": kwargs["Protocol"],
                                   "Attributes": kwargs.get("Attributes") or {}}
        return {"SubscriptionArn": arn}

    def unsubscribe(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("Unsubscribe")
        if self.subscriptions.pop(kwargs["SubscriptionArn"], None) is None:
            raise client_error("NotFound", "Unsubscribe", 404)
        return {}

    def list_subscriptions_by_topic(self, **kwargs: Any) -> dict[str, Any]:
        self._enter("ListSubscriptionsByTopic")
        subs = [s for s in self.subscriptions.values() if s["TopicArn"] == kwargs["TopicArn"]]
        return {"Subscriptions": [{k: v for k, v in s.items() if k != "Attributes"} for s in subs]}

    def publish(self, text: str, topic: str = TOPIC) -> None:
        for sub in list(self.subscriptions.values()):
            if sub["TopicArn"] == topic:
                queue = self.sqs.by_arn(sub["Endpoint"])
                assert queue is not None, "a subscription points at a deleted queue"
                self.sqs.send(queue, text)


class Recorder:
    """The stream's callbacks, recorded."""

    def __init__(self) -> None:
        self.hints: list[tuple[set[str], Hint]] = []
        self.results: list[str] = []
        self.states: list[bool] = []
        self.errors: list[tuple[str, str]] = []

    def hooks(self) -> dict[str, Any]:
        return {"on_hint": lambda ids, hint: self.hints.append((ids, hint)),
                "on_result": self.results.append, "on_state": self.states.append,
                "on_error": lambda operation, code: self.errors.append((operation, code))}


class WallClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now




@pytest.fixture
def aws() -> tuple[FakeSQS, FakeSNS]:
    sqs = FakeSQS()
    return sqs, FakeSNS(sqs)


def native(event_id: str, name: str = "prod/db", version: str = "v2") -> str:
    return json.dumps({"version": "0", "id": event_id, "detail-type": "Secret Label Updated",
                       "source": "aws.secretsmanager", "time": "2024-02-06T16:43:48Z",
                       "resources": [SECRET_ARN.replace("prod/db", name)],
                       "detail": {"name": name, "labelUpdated": "AWSCURRENT", "versionId": version}})


def make_stream(sqs: FakeSQS, sns: FakeSNS | None, recorder: Recorder, **overrides: Any) -> EventStream:
    options: dict[str, Any] = {"sqs": sqs, "matcher": Matcher(["prod/db"]), "wait_seconds": 5,
                               "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.05,
                               "rng": random.Random(7), **recorder.hooks()}
    if sns is not None and "queue_url" not in overrides:
        options.update(sns=sns, topic_arn=TOPIC)
    options.update(overrides)
    return EventStream(**options)


@pytest.fixture
def running(aws: tuple[FakeSQS, FakeSNS]) -> Iterator[tuple[EventStream, Recorder, FakeSQS, FakeSNS]]:
    sqs, sns = aws
    recorder = Recorder()
    stream = make_stream(sqs, sns, recorder)
    stream.start()
    # ``up`` turns true just before on_state is called: wait for the callback too.
    assert wait_for(lambda: stream.up and recorder.states)
    yield stream, recorder, sqs, sns
    stream.close()


def own_queue(sqs: FakeSQS) -> FakeQueue:
    (queue,) = sqs.queues.values()
    return queue


# -- lifecycle -------------------------------------------------------------------------------


def test_stream_topic_creates_tagged_queue_sending_only_from_topic(running: Any) -> None:
    stream, recorder, sqs, sns = running
    queue = own_queue(sqs)
    assert queue.name.startswith(queue_name_prefix(TOPIC))
    assert queue.name.startswith("ztr-")
    assert len(queue.name) <= 80
    assert stream.queue_url == queue.url
    assert queue.tags[TAG_TOPIC] == TOPIC
    assert queue.tags[TAG_OWNER]
    assert abs(float(queue.tags[TAG_HEARTBEAT]) - time.time()) < 60
    (sub,) = sns.subscriptions.values()
    assert queue.tags[TAG_SUBSCRIPTION] == sub["SubscriptionArn"]
    assert (sub["Endpoint"], sub["Protocol"]) == (queue.arn, "sqs")
    assert sub["Attributes"]["RawMessageDelivery"] == "true"
    assert sub["Attributes"]["FilterPolicyScope"] == "MessageBody"
    assert json.loads(sub["Attributes"]["FilterPolicy"]) == {"source": ["aws.secretsmanager"]}
    (statement,) = json.loads(queue.attributes["Policy"])["Statement"]
    assert statement == {"Sid": "OnlyTheTopicSends", "Effect": "Allow",
                         "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
                         "Resource": queue.arn, "Condition": {"ArnEquals": {"aws:SourceArn": TOPIC}}}
    assert recorder.states == [True]
    assert recorder.errors == []


def test_stream_messages_handled_then_all_deleted(running: Any) -> None:
    _stream, recorder, sqs, sns = running
    for text in (native("e-1"), native("e-other", name="prod/other"), "not json", native("e-1")):
        sns.publish(text)
    assert wait_for(lambda: len(recorder.results) == 4)
    assert recorder.results == [MATCHED, IGNORED, MALFORMED, DUPLICATE]
    ((ids, hint),) = recorder.hints
    assert ids == {"prod/db"}
    assert (hint.version_id, hint.event_id) == ("v2", "e-1")
    assert hint.queued_time == 1_800_000_000.25  # SQS's SentTimestamp: the latency's start
    queue = own_queue(sqs)
    assert wait_for(lambda: not queue.in_flight and not queue.visible)


def test_stream_close_removes_queue_and_subscription_without_waiting_for_long_poll(
        aws: tuple[FakeSQS, FakeSNS]) -> None:
    sqs, sns = aws
    recorder = Recorder()
    stream = make_stream(sqs, sns, recorder, wait_seconds=20)
    stream.start()
    assert wait_for(lambda: stream.up and sqs.receivers == 1)  # in a 20 s long poll
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 1.0
    assert sqs.queues == {}
    assert sns.subscriptions == {}
    # unsubscribed first: SNS never delivers to a deleted queue (moto's Publish would fail)
    assert sqs.timeline.index("sns:Unsubscribe") < sqs.timeline.index("sqs:DeleteQueue")
    assert recorder.states == [True, False]


def test_stream_no_callback_after_close_returns(aws: tuple[FakeSQS, FakeSNS]) -> None:
    """A long poll in flight at close is abandoned: what it brings back is neither handled nor
    deleted (SQS hands it out again to the queue's next reader)."""
    sqs, _ = aws
    queue = sqs.add_queue("app-events", {})
    recorder = Recorder()
    stream = make_stream(sqs, None, recorder, queue_url=queue.url)
    before = set(threading.enumerate())
    stream.start()
    (poller,) = set(threading.enumerate()) - before
    assert wait_for(lambda: stream.up and sqs.receivers == 1)
    stream.close()
    assert poller.is_alive()  # close did not wait for the long poll
    sqs.send(queue, native("late"))
    poller.join(5)
    assert not poller.is_alive()
    assert (recorder.results, recorder.states) == ([], [True, False])
    assert "DeleteMessageBatch" not in sqs.calls
    assert list(queue.in_flight.values()) == [native("late")]


def test_stream_close_during_setup_leaves_nothing_behind(aws: tuple[FakeSQS, FakeSNS]) -> None:
    sqs, sns = aws
    sns.faults.add("Subscribe", *[client_error("AuthorizationError", "Subscribe", 403)] * 1000)
    recorder = Recorder()
    stream = make_stream(sqs, sns, recorder)
    stream.start()
    assert wait_for(lambda: len(recorder.errors) >= 3)
    assert len(sqs.queues) == 1  # created, but never subscribed
    stream.close()
    assert sqs.queues == {}
    assert sns.subscriptions == {}
    assert recorder.states == [False]
    assert set(recorder.errors) == {("Subscribe", "AuthorizationError")}


def test_stream_given_queue_only_read_never_created_nor_deleted(aws: tuple[FakeSQS, FakeSNS]) -> None:
    sqs, _ = aws
    queue = sqs.add_queue("app-events", {})
    recorder = Recorder()
    stream = make_stream(sqs, None, recorder, queue_url=queue.url)
    assert stream.mode == "queue"
    stream.start()
    assert wait_for(lambda: stream.up)
    sqs.send(queue, native("e-1"))
    assert wait_for(lambda: recorder.results == [MATCHED])
    stream.close()
    assert "app-events" in sqs.queues
    assert set(sqs.calls) <= {"ReceiveMessage", "DeleteMessageBatch"}
    assert wait_for(lambda: not queue.in_flight)


# -- failures --------------------------------------------------------------------------------


def test_stream_unreachable_at_start_warns_once_counts_each_and_recovers(
        aws: tuple[FakeSQS, FakeSNS], ztr_records: Records) -> None:
    sqs, sns = aws
    down = EndpointConnectionError(endpoint_url="https://sqs.us-east-1.amazonaws.com/")
    sqs.faults.add("CreateQueue", down, down, client_error("ThrottlingException", "CreateQueue"))
    recorder = Recorder()
    stream = make_stream(sqs, sns, recorder)
    stream.start()
    try:
        # The state hook runs after ``up`` turns true: wait for the hook, the last step.
        assert wait_for(lambda: recorder.states == [False, True]), recorder.states
        assert stream.up
        assert recorder.errors == [("CreateQueue", "EndpointConnectionError")] * 2 + [
            ("CreateQueue", "ThrottlingException")]
        assert len(ztr_records.at(logging.WARNING)) == 1
        assert len(sqs.queues) == 1  # the retries reused the name: no second queue
    finally:
        stream.close()


def test_stream_topic_missing_then_created_is_retried(aws: tuple[FakeSQS, FakeSNS]) -> None:
    sqs, sns = aws
    sns.topics.clear()
    recorder = Recorder()
    stream = make_stream(sqs, sns, recorder)
    stream.start()
    try:
        assert wait_for(lambda: ("Subscribe", "NotFound") in recorder.errors)
        assert not stream.up
        sns.topics.add(TOPIC)
        assert wait_for(lambda: stream.up)
    finally:
        stream.close()


def test_stream_receive_failing_mid_run_warns_again_after_recovery(
        running: Any, ztr_records: Records) -> None:
    _stream, recorder, sqs, _sns = running
    sqs.faults.add("ReceiveMessage", client_error("InternalError", "ReceiveMessage", 500))
    sqs.send(own_queue(sqs), native("wake"))  # end the long poll in flight
    assert wait_for(lambda: recorder.states == [True, False, True])
    sqs.faults.add("ReceiveMessage", client_error("AccessDenied", "ReceiveMessage", 403))
    sqs.send(own_queue(sqs), native("wake-2"))
    assert wait_for(lambda: recorder.states == [True, False, True, False, True])
    assert len(ztr_records.at(logging.WARNING)) == 2  # one per outage
    assert ("ReceiveMessage", "AccessDenied") in recorder.errors


def test_stream_queue_deleted_behind_its_back_is_replaced(running: Any) -> None:
    stream, recorder, sqs, sns = running
    first = own_queue(sqs)
    sqs.delete_queue(QueueUrl=first.url)
    assert wait_for(lambda: len(sqs.queues) == 1 and stream.up and stream.queue_url != first.url)
    second = own_queue(sqs)
    assert second.name != first.name
    (sub,) = sns.subscriptions.values()  # the old subscription went with the old queue
    assert sub["Endpoint"] == second.arn
    sns.publish(native("after"))
    assert wait_for(lambda: MATCHED in recorder.results)


def test_stream_failed_deletes_are_counted_and_redelivery_is_a_duplicate(running: Any) -> None:
    _stream, recorder, sqs, sns = running
    sqs.faults.add("DeleteMessageBatch", client_error("ServiceUnavailable", "DeleteMessageBatch", 503))
    sns.publish(native("e-1"))
    assert wait_for(lambda: ("DeleteMessageBatch", "ServiceUnavailable") in recorder.errors)
    queue = own_queue(sqs)
    with sqs.cond:  # the visibility timeout ends: SQS hands the message out again
        for handle, text in list(queue.in_flight.items()):
            del queue.in_flight[handle]
            queue.visible.append(("again", text))
        sqs.cond.notify_all()
    assert wait_for(lambda: recorder.results == [MATCHED, DUPLICATE])
    assert len(recorder.hints) == 1
    assert wait_for(lambda: not queue.in_flight)


def test_stream_raising_callback_is_logged_and_stream_goes_on(
        aws: tuple[FakeSQS, FakeSNS], ztr_records: Records) -> None:
    sqs, sns = aws
    seen: list[str] = []

    def broken(ids: set[str], hint: Hint) -> None:
        seen.append(hint.event_id or "")
        raise RuntimeError("caller bug")

    recorder = Recorder()
    stream = make_stream(sqs, sns, recorder, on_hint=broken)
    stream.start()
    try:
        assert wait_for(lambda: stream.up)
        sns.publish(native("e-1"))
        sns.publish(native("e-2"))
        assert wait_for(lambda: seen == ["e-1", "e-2"])
        assert any("callback raised" in m for m in ztr_records.at(logging.ERROR))
        assert stream.up
    finally:
        stream.close()


def test_stream_close_that_cannot_unsubscribe_keeps_queue_for_the_sweep(
        running: Any, ztr_records: Records) -> None:
    stream, recorder, sqs, sns = running
    sns.faults.add("Unsubscribe", client_error("Throttling", "Unsubscribe", 400))
    stream.close()
    assert len(sqs.queues) == 1
    assert len(sns.subscriptions) == 1
    assert ("Unsubscribe", "Throttling") in recorder.errors
    assert any("removes it once its heartbeat is stale" in m for m in ztr_records.at(logging.WARNING))


def test_stream_close_from_a_callback_does_not_deadlock(aws: tuple[FakeSQS, FakeSNS]) -> None:
    sqs, sns = aws
    recorder = Recorder()
    closed = threading.Event()

    def close_on_hint(ids: set[str], hint: Hint) -> None:
        stream.close()
        closed.set()

    stream = make_stream(sqs, sns, recorder, on_hint=close_on_hint)
    stream.start()
    assert wait_for(lambda: stream.up)
    sns.publish(native("e-1"))
    assert closed.wait(5)
    assert sqs.queues == {}
    assert recorder.states == [True, False]


def test_stream_needs_exactly_one_source(aws: tuple[FakeSQS, FakeSNS]) -> None:
    sqs, sns = aws
    with pytest.raises(ValueError, match="exactly one"):
        EventStream(sqs=sqs, sns=sns, matcher=Matcher([]), on_hint=lambda ids, hint: None)
    with pytest.raises(ValueError, match="SNS client"):
        EventStream(sqs=sqs, topic_arn=TOPIC, matcher=Matcher([]), on_hint=lambda ids, hint: None)


# -- heartbeat and orphan sweep ----------------------------------------------------------------


def orphan(sqs: FakeSQS, sns: FakeSNS, suffix: str, heartbeat: float, *, topic: str = TOPIC,
           tag_subscription: bool = True) -> FakeQueue:
    queue = sqs.add_queue(queue_name_prefix(topic) + suffix,
                          {TAG_TOPIC: topic, TAG_OWNER: "gone/1", TAG_HEARTBEAT: str(int(heartbeat))})
    sub = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue.arn)["SubscriptionArn"]
    if tag_subscription:
        queue.tags[TAG_SUBSCRIPTION] = sub
    return queue


def test_sweeper_removes_stale_queues_and_their_subscriptions_only(aws: tuple[FakeSQS, FakeSNS]) -> None:
    sqs, sns = aws
    other_topic = TOPIC + "-other"
    sns.topics.add(other_topic)
    clock = WallClock()
    stale = orphan(sqs, sns, "a" * 20, clock.now - 901)
    stale_untagged = orphan(sqs, sns, "b" * 20, clock.now - 5000, tag_subscription=False)
    fresh = orphan(sqs, sns, "c" * 20, clock.now - 899)
    own = orphan(sqs, sns, "d" * 20, clock.now - 5000)
    foreign = sqs.add_queue(queue_name_prefix(TOPIC) + "e" * 20, {TAG_TOPIC: other_topic,
                                                                 TAG_HEARTBEAT: "0"})
    no_beat = sqs.add_queue(queue_name_prefix(TOPIC) + "f" * 20, {TAG_TOPIC: TOPIC})
    elsewhere = orphan(sqs, sns, "g" * 20, clock.now - 5000, topic=other_topic)
    sweeper = OrphanSweeper(sqs, sns, TOPIC, stale_after_seconds=900, wall_clock=clock,
                            rng=random.Random(1))
    removed = sweeper.sweep(keep=own.url)
    assert sorted(removed) == sorted([stale.url, stale_untagged.url])
    assert set(sqs.queues) == {fresh.name, own.name, foreign.name, no_beat.name, elsewhere.name}
    endpoints = {s["Endpoint"] for s in sns.subscriptions.values()}
    assert endpoints == {fresh.arn, own.arn, elsewhere.arn}
    sns.publish(native("x"))  # no subscription is left pointing at a deleted queue


def test_sweeper_another_sweeper_first_is_not_an_error(aws: tuple[FakeSQS, FakeSNS]) -> None:
    sqs, sns = aws
    clock = WallClock()
    queue = orphan(sqs, sns, "a" * 20, clock.now - 5000)
    sqs.faults.add("ListQueueTags", client_error(GONE, "ListQueueTags"))
    assert OrphanSweeper(sqs, sns, TOPIC, wall_clock=clock).sweep() == []
    sns.subscriptions.clear()  # the other sweeper unsubscribed; deleting is still ours
    assert OrphanSweeper(sqs, sns, TOPIC, wall_clock=clock).sweep() == [queue.url]


def test_sweeper_shards_grow_when_a_listing_is_truncated_and_shrink_back(
        aws: tuple[FakeSQS, FakeSNS]) -> None:
    sqs, sns = aws
    clock = WallClock()
    rng = random.Random(3)
    for _ in range(1100):
        sqs.add_queue(queue_name_prefix(TOPIC) + f"{rng.getrandbits(80):020x}",
                      {TAG_TOPIC: TOPIC, TAG_HEARTBEAT: str(int(clock.now))})
    sweeper = OrphanSweeper(sqs, sns, TOPIC, wall_clock=clock, rng=rng, inspect_limit=2)
    sweeper.sweep()
    assert sweeper.depth == 1
    assert sqs.calls.count("ListQueueTags") == 2  # one page listed, two inspected
    for name in list(sqs.queues)[:1080]:
        del sqs.queues[name]
    sweeper.sweep()
    assert sweeper.depth == 0


def test_sweeper_fleet_removes_an_orphan_within_one_round_almost_always(
        aws: tuple[FakeSQS, FakeSNS]) -> None:
    """N live processes each sweep once a period, inspecting 8 random queues: an orphan is
    missed by a whole round with probability ~e^-8, so over 100 trials none survives two."""
    sqs, sns = aws
    clock = WallClock()
    rng = random.Random(11)
    live = [sqs.add_queue(queue_name_prefix(TOPIC) + f"{rng.getrandbits(80):020x}",
                          {TAG_TOPIC: TOPIC, TAG_HEARTBEAT: str(int(clock.now))}) for _ in range(60)]
    sweepers = [OrphanSweeper(sqs, sns, TOPIC, wall_clock=clock, rng=random.Random(n)) for n in range(60)]
    rounds_needed = []
    for trial in range(100):
        dead = orphan(sqs, sns, f"{rng.getrandbits(80):020x}", clock.now - 5000)
        rounds = 0
        while dead.name in sqs.queues:
            rounds += 1
            for sweeper, own in zip(sweepers, live, strict=True):
                sweeper.sweep(keep=own.url)
        rounds_needed.append(rounds)
    assert max(rounds_needed) <= 2
    assert all(q.name in sqs.queues for q in live)


def test_stream_keeper_heartbeats_and_sweeps_periodically(aws: tuple[FakeSQS, FakeSNS]) -> None:
    sqs, sns = aws
    clock = WallClock()
    recorder = Recorder()
    stream = make_stream(sqs, sns, recorder, wall_clock=clock, heartbeat_seconds=0.02,
                         sweep_seconds=0.02, stale_after_seconds=900)
    stream.start()
    try:
        assert wait_for(lambda: stream.up)
        queue = sqs.queues[str(stream.queue_url).rsplit("/", 1)[-1]]
        clock.now += 600
        assert wait_for(lambda: queue.tags[TAG_HEARTBEAT] == str(int(clock.now)))
        dead = orphan(sqs, sns, "0" * 20, clock.now - 1000)
        assert wait_for(lambda: dead.name not in sqs.queues)
        clock.now += 10_000  # its own heartbeat is refreshed: never swept by itself or others
        assert wait_for(lambda: queue.tags[TAG_HEARTBEAT] == str(int(clock.now)))
        assert queue.name in sqs.queues
        assert recorder.errors == []
    finally:
        stream.close()


def test_stream_keeper_failures_counted_and_warned_once(
        aws: tuple[FakeSQS, FakeSNS], ztr_records: Records) -> None:
    sqs, sns = aws
    sqs.faults.add("ListQueues", *[client_error("AccessDenied", "ListQueues", 403)] * 5)
    recorder = Recorder()
    stream = make_stream(sqs, sns, recorder, heartbeat_seconds=3600, sweep_seconds=0.01)
    stream.start()
    try:
        assert wait_for(lambda: recorder.errors.count(("ListQueues", "AccessDenied")) == 5)
        assert wait_for(lambda: sqs.calls.count("ListQueues") > 6)  # recovered
        assert sum("sweep failed" in m for m in ztr_records.at(logging.WARNING)) == 1
        assert stream.up  # the sweep is housekeeping: the stream stays up
    finally:
        stream.close()


def test_iam_action_lists_cover_every_call_the_fakes_saw(aws: tuple[FakeSQS, FakeSNS]) -> None:
    """What `ztr iam-policy` will grant is exactly what the stream calls."""
    sqs, sns = aws
    clock = WallClock()
    orphan(sqs, sns, "a" * 20, clock.now - 5000, tag_subscription=False)
    recorder = Recorder()
    stream = make_stream(sqs, sns, recorder, wall_clock=clock, sweep_seconds=0.01)
    stream.start()
    assert wait_for(lambda: stream.up and len(sqs.queues) == 1)
    sns.publish(native("e-1"))
    assert wait_for(lambda: recorder.results == [MATCHED])
    stream.close()
    granted = {*eventstream.SQS_ACTIONS_TOPIC, *eventstream.SQS_ACTIONS_LIST, *eventstream.SNS_ACTIONS_TOPIC}
    called = {f"sqs:{op}" for op in sqs.calls} | {f"sns:{op}" for op in sns.calls}
    called = {"sqs:DeleteMessage" if c == "sqs:DeleteMessageBatch" else c for c in called}
    assert called == granted


def test_expected_monthly_requests_are_what_the_docs_price() -> None:
    topic = eventstream.expected_monthly_requests("topic", fleet_queues=100)
    assert topic == {"ReceiveMessage": 129_600, "TagQueue": pytest.approx(4_800),
                     "ListQueues": pytest.approx(1_600), "ListQueueTags": pytest.approx(12_800)}
    assert sum(topic.values()) * 0.40 / 1e6 == pytest.approx(0.0595, abs=1e-4)
    small = eventstream.expected_monthly_requests("topic", fleet_queues=3)
    assert small["ListQueueTags"] == pytest.approx(3_200)  # two other queues to inspect
    assert eventstream.expected_monthly_requests("queue") == {"ReceiveMessage": 129_600}
