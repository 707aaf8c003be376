"""The event stream: long-polls one SQS queue in a thread and hands on the hints it carries.

With ``topic_arn`` the queue is this process's own: created and subscribed to the topic on
start, kept alive by a heartbeat tag, unsubscribed and deleted on close; queues of processes
that died without closing are swept by the living ones. With ``queue_url`` the queue is the
user's: it is only read. Knows nothing of processes or files. A failure never reaches the
caller: it is counted, warned about once per outage and retried with backoff.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from secrets import token_hex
from typing import Any, Protocol, cast

from . import logs
from .errors import TransientError, UnavailableError
from .events import SOURCE, Classifier, Hint, Matcher, topic_region
from .retry import RetryPolicy
from .source import CallRecorder, attempt_recorder, error_code

QUEUE_PREFIX = "ztr-"  # every queue ztr creates; IAM policies scope SQS actions to ztr-*
WAIT_SECONDS = 20  # SQS's longest long poll
RECEIVE_BATCH = 10  # ReceiveMessage's and DeleteMessageBatch's maximum
MESSAGE_RETENTION_SECONDS = 3600  # an hour-old hint is still worth a check; older, polling has it
# Orphans go within STALE_AFTER + SWEEP (an hour) of their owner's last heartbeat. Per pod-month
# this costs ~4,800 TagQueue and <= 14,400 sweep calls: $0.008, a seventh of the long poll's.
HEARTBEAT_SECONDS = 600.0
STALE_AFTER_SECONDS = 1800.0  # three heartbeats: two may fail (throttling) without harm
SWEEP_SECONDS = 1800.0
SWEEP_INSPECT = 8  # queues inspected per sweep: an orphan escapes one sweep round with p ~ e^-8
LIST_PAGE = 1000  # ListQueues' largest page
MAX_SHARD_DEPTH = 4  # 16^4 shards: far more queues than one topic's fleet will have
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 120.0
CLOSE_JOIN_SECONDS = 2.0
POLLER_THREAD = "ztr-events"
KEEPER_THREAD = "ztr-events-keeper"

TAG_TOPIC = "ztr:topic"
TAG_OWNER = "ztr:owner"
TAG_HEARTBEAT = "ztr:heartbeat"  # epoch seconds of the owner's last sign of life
TAG_SUBSCRIPTION = "ztr:subscription"
_TAG_VALUE_LIMIT = 256

# Error codes meaning "that queue / subscription is not there (any more)". botocore reports
# SQS's query-compatible code (AWS.SimpleQueueService.NonExistentQueue) where it has one.
_QUEUE_GONE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
                         "NonExistentQueue"})
_SUBSCRIPTION_GONE = frozenset({"NotFound", "NotFoundException"})
_HEX = "0123456789abcdef"

HintHook = Callable[[set[str], Hint], None]  # (declared secret ids, hint); on the stream's thread
ResultHook = Callable[[str], None]  # one of events.RESULTS, once per message
StateHook = Callable[[bool], None]  # True when the stream is up, False when it goes down
ErrorHook = Callable[[str, str], None]  # (operation, error code), once per failed call


class QueueClient(Protocol):
    """The SQS calls ztr makes, keyword arguments as botocore takes them."""

    def create_queue(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def get_queue_attributes(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def set_queue_attributes(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def tag_queue(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def list_queue_tags(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def list_queues(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def receive_message(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def delete_message_batch(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def delete_queue(self, **kwargs: Any) -> Mapping[str, Any]: ...


class TopicClient(Protocol):
    """The SNS calls ztr makes, keyword arguments as botocore takes them."""

    def subscribe(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def unsubscribe(self, **kwargs: Any) -> Mapping[str, Any]: ...
    def list_subscriptions_by_topic(self, **kwargs: Any) -> Mapping[str, Any]: ...


# The actions each mode calls, for `ztr iam-policy` (resource: the ztr-* queues, the topic).
SQS_ACTIONS_TOPIC = ("sqs:CreateQueue", "sqs:TagQueue", "sqs:GetQueueAttributes",
                     "sqs:SetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage",
                     "sqs:ListQueueTags", "sqs:DeleteQueue")
SQS_ACTIONS_LIST = ("sqs:ListQueues",)  # no resource-level permissions: Resource "*"
SNS_ACTIONS_TOPIC = ("sns:Subscribe", "sns:Unsubscribe", "sns:ListSubscriptionsByTopic")
SQS_ACTIONS_QUEUE = ("sqs:ReceiveMessage", "sqs:DeleteMessage")


class EventsCallError(TransientError):
    """One failed SQS or SNS call. Every such failure is retried: a denied call may be allowed
    after an IAM change, a topic that does not exist may be created."""

    def __init__(self, operation: str, code: str) -> None:
        super().__init__(f"{operation} failed ({code})", throttled="Throttl" in code)
        self.operation = operation
        self.code = code


class StreamClosedError(Exception):
    """The stream was closed while a step was under way."""


def _call(operation: str, fn: Callable[..., Mapping[str, Any]], **kwargs: Any) -> Mapping[str, Any]:
    try:
        return fn(**kwargs)
    except Exception as exc:  # any failure of a hint channel is retried, never fatal
        raise EventsCallError(operation, error_code(exc)) from exc


def topic_key(topic_arn: str) -> str:
    """Eight hex digits naming a topic inside queue names (an ARN does not fit in 80 chars)."""
    return hashlib.sha256(topic_arn.encode()).hexdigest()[:8]


def queue_name_prefix(topic_arn: str) -> str:
    """``ztr-TOPICKEY-``: every queue ztr creates for ``topic_arn`` starts with it."""
    return f"{QUEUE_PREFIX}{topic_key(topic_arn)}-"


def _tag_value(text: str) -> str:
    if len(text) <= _TAG_VALUE_LIMIT:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def default_owner() -> str:
    """What the owner tag says: the host (the pod's name on Kubernetes) and the pid."""
    return f"{socket.gethostname()}/{os.getpid()}"[:_TAG_VALUE_LIMIT]


def queue_policy(queue_arn: str, topic_arn: str) -> str:
    """The queue's resource policy: only ``topic_arn``, through SNS, may send to it."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "OnlyTheTopicSends",
            "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
        }],
    }, separators=(",", ":"))


# The subscription's filter: only Secrets Manager events reach the queue. Matching the
# declared secrets here too would need "$or" (name and ARN live under different keys in the
# two event kinds) or wildcards, which moto cannot run (HTTP 500 on every Publish), and a too
# narrow filter loses hints silently. Scope the rule to the application's secrets instead
# (the CloudFormation template's SecretNamePrefix): that is exact, and costs nothing per pod.
FILTER_POLICY = json.dumps({"source": [SOURCE]}, separators=(",", ":"))


class OwnedQueue:
    """This process's queue on the topic: created on connect, heartbeat-tagged, released.

    Each step is recorded when it succeeds, so a failed connect resumes where it stopped and
    release() removes whatever exists, even half-way. Thread-safe: one step at a time.
    """

    def __init__(self, sqs: QueueClient, sns: TopicClient, topic_arn: str, *, owner: str,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.sqs, self.sns, self.topic_arn = sqs, sns, topic_arn
        self.owner = owner[:_TAG_VALUE_LIMIT]
        self.wall_clock = wall_clock
        self.url: str | None = None
        self.arn: str | None = None
        self.subscription_arn: str | None = None
        self._name: str | None = None
        self._created_tags: dict[str, str] = {}
        self._policy_set = False
        self._subscription_tagged = False
        self._abandoned: list[str] = []  # subscriptions of a queue that vanished under us
        self._released = False
        self._lock = threading.Lock()

    @property
    def name(self) -> str | None:
        return self._name

    def connect(self) -> str:
        """Create and subscribe the queue, or finish doing so; returns its URL."""
        while True:
            with self._lock:
                if self._released:
                    raise StreamClosedError
                if self._abandoned:
                    self._unsubscribe(self._abandoned[0])
                    self._abandoned.pop(0)
                elif self.url is None:
                    self._create()
                elif self.arn is None:
                    self._read_arn()
                elif not self._policy_set:
                    _call("SetQueueAttributes", self.sqs.set_queue_attributes, QueueUrl=self.url,
                          Attributes={"Policy": queue_policy(self.arn, self.topic_arn)})
                    self._policy_set = True
                elif self.subscription_arn is None:
                    self._subscribe()
                elif not self._subscription_tagged:
                    if len(self.subscription_arn) <= _TAG_VALUE_LIMIT:  # else the sweep looks it up
                        _call("TagQueue", self.sqs.tag_queue, QueueUrl=self.url,
                              Tags={TAG_SUBSCRIPTION: self.subscription_arn})
                    self._subscription_tagged = True
                else:
                    return self.url

    def _create(self) -> None:
        # The same name and tags on every retry: CreateQueue is idempotent for identical
        # attributes, so an answer lost on the way back does not leave a second queue.
        if self._name is None:
            self._name = queue_name_prefix(self.topic_arn) + token_hex(10)
            self._created_tags = {
                TAG_TOPIC: _tag_value(self.topic_arn),
                TAG_OWNER: self.owner,
                TAG_HEARTBEAT: str(int(self.wall_clock())),
            }
        response = _call("CreateQueue", self.sqs.create_queue, QueueName=self._name,
                         Attributes={"MessageRetentionPeriod": str(MESSAGE_RETENTION_SECONDS)},
                         tags=self._created_tags)
        url = response.get("QueueUrl")
        if not isinstance(url, str):
            raise EventsCallError("CreateQueue", "IncompleteResponse")
        self.url = url

    def _read_arn(self) -> None:
        response = _call("GetQueueAttributes", self.sqs.get_queue_attributes, QueueUrl=self.url,
                         AttributeNames=["QueueArn"])
        arn = (response.get("Attributes") or {}).get("QueueArn")
        if not isinstance(arn, str):
            raise EventsCallError("GetQueueAttributes", "IncompleteResponse")
        self.arn = arn

    def _subscribe(self) -> None:
        response = _call("Subscribe", self.sns.subscribe, TopicArn=self.topic_arn, Protocol="sqs",
                         Endpoint=self.arn, ReturnSubscriptionArn=True,
                         Attributes={"RawMessageDelivery": "true",
                                     "FilterPolicyScope": "MessageBody",
                                     "FilterPolicy": FILTER_POLICY})
        arn = response.get("SubscriptionArn")
        if not isinstance(arn, str) or not arn.startswith("arn:"):
            raise EventsCallError("Subscribe", "IncompleteResponse")
        self.subscription_arn = arn

    def _unsubscribe(self, arn: str) -> None:
        try:
            _call("Unsubscribe", self.sns.unsubscribe, SubscriptionArn=arn)
        except EventsCallError as exc:
            if exc.code not in _SUBSCRIPTION_GONE:
                raise

    def heartbeat(self) -> None:
        """Tag the queue with the time now: proof of life for other processes' sweeps."""
        with self._lock:
            if self.url is None or self._released:
                return
            _call("TagQueue", self.sqs.tag_queue, QueueUrl=self.url,
                  Tags={TAG_HEARTBEAT: str(int(self.wall_clock()))})

    def forget(self) -> None:
        """The queue vanished (deleted by hand, or swept while this process was frozen): the
        next connect unsubscribes what is left and starts over under a new name (SQS refuses a
        deleted queue's name for 60 s)."""
        with self._lock:
            if self.subscription_arn:
                self._abandoned.append(self.subscription_arn)
            self.url = self.arn = self.subscription_arn = self._name = None
            self._policy_set = self._subscription_tagged = False

    def release(self) -> list[EventsCallError]:
        """Unsubscribe and delete the queue (never raises; returns what failed). When the
        subscription cannot be removed the queue stays too, so that the sweep removes both."""
        with self._lock:
            self._released = True
            failures: list[EventsCallError] = []
            for arn in [*self._abandoned, *([self.subscription_arn] if self.subscription_arn else [])]:
                try:
                    self._unsubscribe(arn)
                except EventsCallError as exc:
                    failures.append(exc)
            if self.url is not None and not failures:
                try:
                    _call("DeleteQueue", self.sqs.delete_queue, QueueUrl=self.url)
                except EventsCallError as exc:
                    if exc.code not in _QUEUE_GONE:
                        failures.append(exc)
            if not failures:
                self.url = self.arn = self.subscription_arn = None
                self._abandoned.clear()
            return failures


class OrphanSweeper:
    """Removes queues (and their subscriptions) left on a topic by processes that died without
    closing: those whose heartbeat tag is older than ``stale_after_seconds``.

    Each sweep lists one random shard of the topic's queues (a name prefix one hex digit
    longer per 16x more queues, so the listing is one page) and inspects up to
    ``inspect_limit`` of them at random. Every queue is thus inspected with probability about
    inspect_limit/N per live process per sweep: an orphan survives a round of sweeps by the
    whole fleet with probability about e^-inspect_limit, and at once when N <= inspect_limit.
    """

    def __init__(self, sqs: QueueClient, sns: TopicClient, topic_arn: str, *,
                 stale_after_seconds: float = STALE_AFTER_SECONDS, inspect_limit: int = SWEEP_INSPECT,
                 wall_clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 stop: threading.Event | None = None) -> None:
        self.sqs, self.sns, self.topic_arn = sqs, sns, topic_arn
        self.stale_after = stale_after_seconds
        self.inspect_limit = inspect_limit
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.stop = stop or threading.Event()
        self.depth = 0

    def sweep(self, keep: str | None = None) -> list[str]:
        """One sweep; returns the URLs of the queues removed. ``keep`` (this process's own
        queue) is never inspected. Raises EventsCallError when a listing or a removal fails."""
        shard = "".join(self.rng.choice(_HEX) for _ in range(self.depth))
        response = _call("ListQueues", self.sqs.list_queues,
                         QueueNamePrefix=queue_name_prefix(self.topic_arn) + shard, MaxResults=LIST_PAGE)
        listed = [url for url in response.get("QueueUrls") or [] if isinstance(url, str)]
        self._adapt(len(listed), bool(response.get("NextToken")))
        candidates = [url for url in listed if url != keep]
        removed = []
        for url in self.rng.sample(candidates, min(len(candidates), self.inspect_limit)):
            if self.stop.is_set():
                break
            if self._remove_if_orphan(url):
                removed.append(url)
        return removed

    def _adapt(self, count: int, truncated: bool) -> None:
        if truncated and self.depth < MAX_SHARD_DEPTH:
            self.depth += 1
        elif self.depth and count * len(_HEX) < LIST_PAGE // 2:
            self.depth -= 1

    def _remove_if_orphan(self, url: str) -> bool:
        try:
            tags = _call("ListQueueTags", self.sqs.list_queue_tags, QueueUrl=url).get("Tags") or {}
        except EventsCallError as exc:
            if exc.code in _QUEUE_GONE:  # another sweeper was first
                return False
            raise
        if tags.get(TAG_TOPIC) != _tag_value(self.topic_arn):
            return False
        try:
            beat = float(tags.get(TAG_HEARTBEAT, ""))
        except ValueError:
            return False  # not a queue ztr made: not ours to judge
        age = self.wall_clock() - beat
        if age <= self.stale_after:
            return False
        subscription = tags.get(TAG_SUBSCRIPTION)
        for arn in [subscription] if subscription else self._subscriptions_of(url):
            try:
                _call("Unsubscribe", self.sns.unsubscribe, SubscriptionArn=arn)
            except EventsCallError as exc:
                if exc.code not in _SUBSCRIPTION_GONE:
                    raise
        try:
            _call("DeleteQueue", self.sqs.delete_queue, QueueUrl=url)
        except EventsCallError as exc:
            if exc.code not in _QUEUE_GONE:
                raise
        logs.info("events: removed a queue whose owner stopped without cleaning up",
                  queue=url.rsplit("/", 1)[-1], owner=tags.get(TAG_OWNER),
                  heartbeat_age_seconds=round(age))
        return True

    def _subscriptions_of(self, url: str) -> list[str]:
        """The rare path (the owner died between Subscribe and tagging): find the queue's
        subscriptions on the topic by its ARN."""
        try:
            attributes = _call("GetQueueAttributes", self.sqs.get_queue_attributes, QueueUrl=url,
                               AttributeNames=["QueueArn"]).get("Attributes") or {}
        except EventsCallError as exc:
            if exc.code in _QUEUE_GONE:
                return []
            raise
        queue_arn = attributes.get("QueueArn")
        found: list[str] = []
        kwargs: dict[str, Any] = {"TopicArn": self.topic_arn}
        while queue_arn and not self.stop.is_set():
            page = _call("ListSubscriptionsByTopic", self.sns.list_subscriptions_by_topic, **kwargs)
            found += [str(s.get("SubscriptionArn")) for s in page.get("Subscriptions") or []
                      if s.get("Endpoint") == queue_arn and str(s.get("SubscriptionArn")).startswith("arn:")]
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
        return found


class EventStream:
    """Reads hints from SQS in its own thread and calls back; polling stays the caller's floor.

    Exactly one of ``topic_arn`` (then ``sns`` is required: the stream owns a ztr-* queue on
    that topic) and ``queue_url`` (a queue the user owns and this process alone reads). The
    callbacks run on the stream's thread (``on_state`` also on close's): ``on_hint(secret_ids,
    hint)`` for each matched event, ``on_result(result)`` once per message, ``on_state(up)`` on
    every change, ``on_error(operation, code)`` once per failed call. A callback that raises is
    logged and ignored. Collaborators are injectable: clients, ``clock``, ``wall_clock``, ``rng``.
    """

    def __init__(
        self,
        *,
        sqs: QueueClient,
        matcher: Matcher,
        on_hint: HintHook,
        sns: TopicClient | None = None,
        topic_arn: str | None = None,
        queue_url: str | None = None,
        on_result: ResultHook | None = None,
        on_state: StateHook | None = None,
        on_error: ErrorHook | None = None,
        owner: str | None = None,
        wait_seconds: int = WAIT_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stale_after_seconds: float = STALE_AFTER_SECONDS,
        sweep_seconds: float = SWEEP_SECONDS,
        backoff_initial_seconds: float = BACKOFF_INITIAL_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
        recent_limit: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if (topic_arn is None) == (queue_url is None):
            raise ValueError("EventStream needs exactly one of topic_arn and queue_url")
        if topic_arn is not None and sns is None:
            raise ValueError("EventStream(topic_arn=...) needs an SNS client")
        self.sqs = sqs
        self.classifier = Classifier(matcher, recent_limit=recent_limit, wall_clock=wall_clock)
        self.on_hint = on_hint
        self.on_result = on_result or (lambda result: None)
        self.on_state = on_state or (lambda up: None)
        self.on_error = on_error or (lambda operation, code: None)
        self.wait_seconds = wait_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.sweep_seconds = sweep_seconds
        self.clock = clock
        self.rng = rng or random.Random()
        self._stop = threading.Event()
        self._given_url = queue_url
        self.owned: OwnedQueue | None = None
        self.sweeper: OrphanSweeper | None = None
        if topic_arn is not None and sns is not None:
            self.owned = OwnedQueue(sqs, sns, topic_arn, owner=owner or default_owner(),
                                    wall_clock=wall_clock)
            self.sweeper = OrphanSweeper(sqs, sns, topic_arn, stale_after_seconds=stale_after_seconds,
                                         wall_clock=wall_clock, rng=self.rng, stop=self._stop)
        self._retry = RetryPolicy(initial_seconds=backoff_initial_seconds,
                                  max_backoff_seconds=backoff_max_seconds, stop=self._stop,
                                  clock=clock, on_retry=self._failed)
        self._state_lock = threading.Lock()
        self._hook_lock = threading.RLock()  # close() waits for a callback under way (or is in one)
        self._closed = False
        self._receiving = False
        self._up: bool | None = None
        self._warned = False
        self._keeper_warned = False
        self._threads: list[threading.Thread] = []

    # -- public ------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return "topic" if self.owned is not None else "queue"

    @property
    def queue_url(self) -> str | None:
        return self.owned.url if self.owned is not None else self._given_url

    @property
    def up(self) -> bool:
        return bool(self._up)

    def start(self) -> None:
        """Start the poller thread (and, with a topic, the heartbeat-and-sweep thread)."""
        if self._threads:
            return
        self._threads.append(threading.Thread(target=self._poll, name=POLLER_THREAD, daemon=True))
        if self.owned is not None:
            self._threads.append(threading.Thread(target=self._keep, name=KEEPER_THREAD, daemon=True))
        for thread in self._threads:
            thread.start()

    def close(self, timeout_seconds: float = CLOSE_JOIN_SECONDS) -> None:
        """Stop at once: report down, unsubscribe and delete an owned queue, wait for a callback
        under way (none is made after close returns) and up to ``timeout_seconds`` for the
        threads. A long poll in flight is not waited for: its thread (a daemon) drops whatever
        it receives, which SQS hands out again later. May be called from a callback."""
        self._stop.set()
        self._set_up(False)
        if self.owned is not None:
            for failure in self.owned.release():
                self._count(failure.operation, failure.code)
                logs.warning("events: could not remove this process's queue; another ztr on the "
                             "topic removes it once its heartbeat is stale",
                             queue=self.owned.name, operation=failure.operation, code=failure.code,
                             stale_after_seconds=self.sweeper.stale_after if self.sweeper else None)
        with self._hook_lock:
            self._closed = True
        deadline = self.clock() + timeout_seconds
        for thread in self._threads:
            if thread is threading.current_thread() or (thread.name == POLLER_THREAD and self._receiving):
                continue
            thread.join(max(0.0, deadline - self.clock()))

    # -- the poller --------------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._retry.call(self._cycle, math.inf)
            except (UnavailableError, StreamClosedError):
                return  # UnavailableError comes only once stop is set

    def _cycle(self) -> None:
        try:
            url = self.owned.connect() if self.owned is not None else str(self._given_url)
            # Right after (re)connecting, a receive that returns at once says "up" promptly.
            wait = self.wait_seconds if self._up else 0
            self._receiving = True
            try:
                # AttributeNames, not MessageSystemAttributeNames: botocore's models before
                # ~1.34.90 lack the newer name, and SQS keeps the old one for compatibility.
                response = _call("ReceiveMessage", self.sqs.receive_message, QueueUrl=url,
                                 MaxNumberOfMessages=RECEIVE_BATCH, WaitTimeSeconds=wait,
                                 AttributeNames=["SentTimestamp"])
            finally:
                self._receiving = False
            if self._stop.is_set():
                return
            self._set_up(True)
            entries = self._handle(response.get("Messages") or [])
            if entries and not self._stop.is_set():
                result = _call("DeleteMessageBatch", self.sqs.delete_message_batch, QueueUrl=url,
                               Entries=entries)
                for failed in result.get("Failed") or []:
                    # Redelivered after the visibility timeout, then deleted as a duplicate.
                    self._count("DeleteMessageBatch", str(failed.get("Code") or "Failed"))
        except (TransientError, StreamClosedError):
            raise
        except Exception as exc:  # a bug here must not end the stream for good
            raise EventsCallError("internal", type(exc).__name__) from exc

    def _handle(self, messages: list[Any]) -> list[dict[str, str]]:
        entries = []
        for index, message in enumerate(messages):
            message = message if isinstance(message, dict) else {}
            verdict = self.classifier.classify(message.get("Body"), queued_time=_sent_time(message))
            logs.debug("events: message", result=verdict.result, reason=verdict.reason,
                       secrets=sorted(verdict.secret_ids))
            self._notify(self.on_result, verdict.result)
            for secret_ids, hint in verdict.matches:
                self._notify(self.on_hint, set(secret_ids), hint)
            handle = message.get("ReceiptHandle")
            if isinstance(handle, str):
                entries.append({"Id": str(index), "ReceiptHandle": handle})
        return entries

    def _notify(self, hook: Callable[..., None], *args: Any) -> None:
        with self._hook_lock:
            if self._closed:
                return
            try:
                hook(*args)
            except Exception as exc:  # noqa: BLE001 - the caller's bug must not stop the stream
                logs.error("events: a callback raised", callback=getattr(hook, "__name__", "?"),
                           error=type(exc).__name__)

    def _failed(self, attempt: int, exc: BaseException, pause: float) -> None:
        """RetryPolicy's on_retry: count, warn once per outage, mark the stream down."""
        if self._stop.is_set():
            return
        operation, code = ((exc.operation, exc.code) if isinstance(exc, EventsCallError)
                           else ("internal", type(exc).__name__))
        self._count(operation, code)
        if self.owned is not None and code in _QUEUE_GONE:
            self.owned.forget()
        self._set_up(False)
        fields = {"mode": self.mode, "operation": operation, "code": code,
                  "retry_in_seconds": round(pause, 1)}
        if not self._warned:
            self._warned = True
            logs.warning("events: stream down, polling continues as the floor; retrying", **fields)
        else:
            logs.debug("events: still down", attempt=attempt, **fields)

    def _count(self, operation: str, code: str) -> None:
        self._notify(self.on_error, operation, code)

    def _set_up(self, up: bool) -> None:
        with self._state_lock:
            if self._up is up or (up and self._stop.is_set()):
                return
            self._up = up
        if up:
            self._warned = False
            logs.info("events: stream up", mode=self.mode,
                      queue=(self.queue_url or "").rsplit("/", 1)[-1])
        self._notify(self.on_state, up)

    # -- heartbeat and sweep (own queue only) ----------------------------------------------------

    def _keep(self) -> None:
        owned, sweeper = self.owned, self.sweeper
        if owned is None or sweeper is None:
            return
        now = self.clock()
        next_beat = now + self.heartbeat_seconds * self.rng.uniform(0.8, 1.0)
        # Spread a fleet's first sweeps over the period: a rollout starts many at once.
        next_sweep = now + self.sweep_seconds * self.rng.uniform(0.1, 1.0)
        while not self._stop.wait(max(0.0, min(next_beat, next_sweep) - self.clock())):
            now = self.clock()
            if now >= next_beat:
                next_beat = now + self.heartbeat_seconds * self.rng.uniform(0.8, 1.0)
                self._maintain("heartbeat", owned.heartbeat)
            if now >= next_sweep:
                next_sweep = now + self.sweep_seconds * self.rng.uniform(0.8, 1.0)
                self._maintain("sweep", lambda: sweeper.sweep(keep=owned.url))

    def _maintain(self, task: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except EventsCallError as exc:
            if self._stop.is_set():
                return
            self._count(exc.operation, exc.code)
            if not self._keeper_warned:
                self._keeper_warned = True
                logs.warning(f"events: {task} failed; retrying next period", operation=exc.operation,
                             code=exc.code)
            return
        self._keeper_warned = False


def _sent_time(message: Mapping[str, Any]) -> float | None:
    """SQS's SentTimestamp (epoch milliseconds, as text) in seconds."""
    try:
        return int((message.get("Attributes") or {})["SentTimestamp"]) / 1000.0
    except (KeyError, TypeError, ValueError):
        return None


def expected_monthly_requests(mode: str, *, fleet_queues: int = SWEEP_INSPECT + 1) -> dict[str, float]:
    """SQS requests one process makes in a 30-day month with no events, by operation, from the
    constants above (waits are jittered to 0.9 of the period on average): what `ztr plan`
    prices. ``mode`` is "topic" or "queue"; ``fleet_queues`` the queues on the topic."""
    month = 30 * 24 * 3600.0
    requests = {"ReceiveMessage": month / WAIT_SECONDS}
    if mode == "topic":
        sweeps = month / (0.9 * SWEEP_SECONDS)
        requests["TagQueue"] = month / (0.9 * HEARTBEAT_SECONDS)
        requests["ListQueues"] = sweeps
        requests["ListQueueTags"] = sweeps * min(SWEEP_INSPECT, max(0, fleet_queues - 1))
    return requests


def make_clients(region: str, *, topic_arn: str | None = None, endpoint_url: str | None = None,
                 record: CallRecorder | None = None) -> tuple[QueueClient, TopicClient]:
    """SQS and SNS clients on boto3's default credential chain (AWS_ENDPOINT_URL_SQS and
    AWS_ENDPOINT_URL_SNS are honoured). SNS is called in the topic's region, as Subscribe
    requires; SQS in ``region`` (where the queue lives). The SQS read timeout outlasts a long
    poll; botocore's own retries stay small, since the stream retries patiently itself.
    ``record(operation, result)`` sees every HTTP attempt (what AWS bills)."""
    import botocore.config

    from . import clients

    session = clients.new_session()  # one session: SQS and SNS share its credentials

    def config(where: str, read_timeout: float) -> botocore.config.Config:
        return botocore.config.Config(region_name=where, connect_timeout=3.0, read_timeout=read_timeout,
                                      retries={"mode": "standard", "total_max_attempts": 2},
                                      user_agent_extra="ztr")

    sqs = session.create_client("sqs", endpoint_url=endpoint_url,
                                config=config(region, WAIT_SECONDS + 10.0))
    sns = session.create_client("sns", endpoint_url=endpoint_url,
                                config=config(topic_region(topic_arn) if topic_arn else region, 10.0))
    if record is not None:
        for client, service in ((sqs, "sqs"), (sns, "sns")):
            client.meta.events.register_first(f"needs-retry.{service}", attempt_recorder(record))
    return cast("QueueClient", sqs), cast("TopicClient", sns)
