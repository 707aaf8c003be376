"""Secrets Manager events as hints (pure): parse a queue message, match it to the declared
secrets, sort out duplicates and stale ones. No I/O; message bodies are never logged or kept."""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

# What the classifier says about one message; the metric label set.
MATCHED = "matched"
IGNORED = "ignored"
DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"
MALFORMED = "malformed"
RESULTS = (MATCHED, IGNORED, DUPLICATE, OUT_OF_ORDER, MALFORMED)

LABEL_UPDATED = "Secret Label Updated"  # the native event's detail-type
API_CALL_SUFFIX = "API Call via CloudTrail"  # "AWS ..." (and "Amazon ..." in some partitions' docs)
SOURCE = "aws.secretsmanager"
EVENT_SOURCE = "secretsmanager.amazonaws.com"
CURRENT = "AWSCURRENT"
# CloudTrail calls that can change what a secret id resolves to. Reads, tags and policies cannot.
RELEVANT_CALLS = frozenset({
    "CreateSecret",  # a --prefix secret created after start, or an optional one appearing
    "PutSecretValue",
    "UpdateSecret",
    "UpdateSecretVersionStage",
    "RotateSecret",
    "RestoreSecret",
    "DeleteSecret",
})
# Calls that attach AWSCURRENT to the new version unless the request names other stages.
_CURRENT_BY_DEFAULT = frozenset({"CreateSecret", "PutSecretValue", "UpdateSecret"})
# CloudTrail keys (compared case-insensitively: some events say "aRN") that name the secret.
_IDENTITY_KEYS = frozenset({"secretid", "arn", "name", "secretarn"})

_SECRET_ARN_RE = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):secretsmanager:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"secret:(?P<rest>[A-Za-z0-9/_+=.@-]{1,512})"
)
_ARN_SUFFIX_RE = re.compile(r"-[A-Za-z0-9]{6}")  # what AWS appends to a name in a full ARN
_TOPIC_ARN_RE = re.compile(
    r"arn:aws[a-z-]*:sns:[a-z]{2,4}(-[a-z]+)+-\d:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?"
)
_QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,80}(\.fifo)?")
_REGION_RE = re.compile(r"[a-z]{2,4}(-[a-z]+)+-\d")  # us-east-1, us-gov-west-1, eusc-de-east-1


class MalformedMessageError(ValueError):
    """A message that is not an event at all; the text says why, never what it contained."""


@dataclass(frozen=True)
class Hint:
    """What one event says about one secret: a reason to look now, never a value.

    ``identities`` are the secret's names and ARNs as the event gives them; ``labels`` the
    staging labels the event says moved to ``version_id`` (empty: unknown). Times are epoch
    seconds: ``event_time`` when AWS says it happened (whole seconds), ``published_time`` when
    SNS sent it (in the envelope only), ``received_time`` when ztr read it, ``queued_time`` when
    SQS took it in (milliseconds; the base of the event-to-reaction latency).
    """

    kind: str  # LABEL_UPDATED or the CloudTrail event name (PutSecretValue, ...)
    identities: tuple[str, ...]
    version_id: str | None = None
    labels: tuple[str, ...] = ()
    event_id: str | None = None
    event_time: float | None = None
    published_time: float | None = None
    received_time: float | None = None
    queued_time: float | None = None


@dataclass(frozen=True)
class Verdict:
    """The classifier's answer for one message: a result from RESULTS, and for MATCHED the
    declared secret ids each hint concerns."""

    result: str
    matches: tuple[tuple[frozenset[str], Hint], ...] = ()
    reason: str = ""  # short, for debug logs: never any part of the body

    @property
    def secret_ids(self) -> frozenset[str]:
        return frozenset(secret_id for ids, _ in self.matches for secret_id in ids)


# -- parsing ---------------------------------------------------------------------------------


def parse_body(body: object) -> list[Hint]:
    """The hints in one SQS message body: an EventBridge event, raw or in an SNS envelope.

    Returns [] for a well-formed message that says nothing about a secret's versions (another
    source, a read, a failed call, an SNS subscription notice). Raises MalformedMessageError for
    anything else; its message never quotes the body.
    """
    if not isinstance(body, str):
        raise MalformedMessageError("body is not text")
    document = _load_object(body, "body")
    published: float | None = None
    envelope_id: str | None = None
    if "Type" in document and "detail-type" not in document:
        kind = document.get("Type")
        if kind in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
            return []
        if kind != "Notification" or not isinstance(document.get("Message"), str):
            raise MalformedMessageError("SNS envelope without a Notification message")
        published = parse_time(document.get("Timestamp"))
        envelope_id = _text(document.get("MessageId"))
        document = _load_object(document["Message"], "SNS Message")
    return _event_hints(document, published, envelope_id)


def _load_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise MalformedMessageError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedMessageError(f"{what} is not a JSON object")
    return value


def _event_hints(event: dict[str, Any], published: float | None, envelope_id: str | None) -> list[Hint]:
    detail_type, detail = event.get("detail-type"), event.get("detail")
    if not isinstance(detail_type, str) or not isinstance(event.get("source"), str):
        raise MalformedMessageError("not an EventBridge event (no source or detail-type)")
    if event["source"] != SOURCE:
        return []
    if not isinstance(detail, dict):
        raise MalformedMessageError("event without a detail object")
    event_id = _text(event.get("id")) or envelope_id or _text(detail.get("eventID"))
    when = parse_time(event.get("time"))
    if detail_type == LABEL_UPDATED:
        identities = _unique([detail.get("name"), *_as_list(event.get("resources"))])
        if not identities:
            raise MalformedMessageError("Secret Label Updated event names no secret")
        label = _text(detail.get("labelUpdated"))
        return [Hint(LABEL_UPDATED, identities, _text(detail.get("versionId")),
                     (label,) if label else (), event_id, when, published)]
    if detail_type.endswith(API_CALL_SUFFIX):
        return _api_call_hints(detail, event_id, when or parse_time(detail.get("eventTime")), published)
    return []


def _api_call_hints(detail: dict[str, Any], event_id: str | None, when: float | None,
                    published: float | None) -> list[Hint]:
    name = _text(detail.get("eventName"))
    if detail.get("eventSource") != EVENT_SOURCE or name not in RELEVANT_CALLS:
        return []
    if detail.get("errorCode"):  # the call failed: nothing changed
        return []
    request = detail.get("requestParameters")
    response = detail.get("responseElements")
    request = request if isinstance(request, dict) else {}
    response = response if isinstance(response, dict) else {}
    identities = _unique([
        *_identity_values(request),
        *_identity_values(response),
        *(_resource_arn(item) for item in _as_list(detail.get("resources"))),
    ])
    if not identities:
        raise MalformedMessageError(f"{name} event names no secret")
    version = _text(response.get("versionId")) or _text(request.get("moveToVersionId"))
    stages = _unique([request.get("versionStage"), *_as_list(request.get("versionStages"))])
    if not stages and name in _CURRENT_BY_DEFAULT and version:
        stages = (CURRENT,)
    return [Hint(name, identities, version, stages, event_id, when, published)]


def _identity_values(parameters: Mapping[str, Any]) -> Iterator[Any]:
    for key, value in parameters.items():
        if isinstance(key, str) and key.lower() in _IDENTITY_KEYS:
            yield value


def _resource_arn(item: Any) -> Any:
    if isinstance(item, dict):
        return next((v for k, v in item.items() if isinstance(k, str) and k.lower() == "arn"), None)
    return item


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _unique(values: Iterable[Any]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if isinstance(v, str) and v and len(v) <= 2048))


def parse_time(value: Any) -> float | None:
    """An ISO 8601 time (``2024-02-06T16:43:48Z``, fractions allowed) as epoch seconds."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


# -- matching --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Identity:
    """A secret id read as a name, or as an ARN whose tail may or may not carry the suffix."""

    text: str
    scope: tuple[str, str, str] | None  # (partition, region, account) for an ARN
    rest: str  # the name (a name) or what follows ":secret:" (an ARN)
    known: frozenset[str] | None = None  # the names it can stand for, when the event says

    @classmethod
    def of(cls, text: str) -> _Identity:
        match = _SECRET_ARN_RE.fullmatch(text)
        if match is None:
            return cls(text, None, text)
        return cls(text, (match["partition"], match["region"], match["account"]), match["rest"])

    def names(self) -> set[str]:
        """Every name this id could stand for: an ARN tail ending in ``-XXXXXX`` is a full ARN's
        (strip it) or a partial ARN of a name that happens to end that way (keep it)."""
        if self.known is not None:
            return set(self.known)
        if self.scope is None:
            return {self.rest}
        names = {self.rest}
        if len(self.rest) > 7 and _ARN_SUFFIX_RE.fullmatch(self.rest[-7:]):
            names.add(self.rest[:-7])
        return names


def _narrowed(seen: list[_Identity]) -> list[_Identity]:
    """An event that gives a secret's name beside its ARN settles how to read the ARN: the
    tail ``prod/db-backup`` is then the name prod/db-backup, not prod/db plus a suffix."""
    given = {i.rest for i in seen if i.scope is None}
    if not given:
        return seen
    return [i if i.scope is None or not (i.names() & given)
            else _Identity(i.text, i.scope, i.rest, frozenset(i.names() & given)) for i in seen]


def _same_arn(a: str, b: str) -> bool:
    """Two ARN tails of one secret: equal, or one is the other plus the random suffix."""
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return len(long) == len(short) + 7 and long.startswith(short) and bool(
        _ARN_SUFFIX_RE.fullmatch(long[len(short):]))


class Matcher:
    """Which declared secrets an event concerns.

    ``secret_ids`` are the ids as declared: names, full ARNs or partial ARNs; ``prefixes`` the
    ``--prefix`` values, which match any secret whose name starts with one (including secrets
    created after start). ``region`` and ``account``, when known, keep a name from matching an
    ARN elsewhere. When unsure whether an ARN is full or partial, both readings are tried: a
    false match costs one check, a missed one waits for the next poll.
    """

    def __init__(self, secret_ids: Iterable[str], prefixes: Iterable[str] = (), *,
                 region: str | None = None, account: str | None = None) -> None:
        self._declared = [(secret_id, _Identity.of(secret_id)) for secret_id in dict.fromkeys(secret_ids)]
        self._prefixes = tuple(p for p in dict.fromkeys(prefixes) if p)
        self._region = region
        self._account = account

    def match(self, identities: Iterable[str]) -> frozenset[str]:
        """The declared ids (and, for a prefix, the event's name or ARN) the identities hit."""
        seen = _narrowed([_Identity.of(text) for text in identities])
        found = {secret_id for secret_id, declared in self._declared
                 if any(self._concerns(declared, other) for other in seen)}
        if self._prefixes:
            found.update(self._prefixed(seen))
        return frozenset(found)

    def _local(self, identity: _Identity) -> bool:
        if identity.scope is None:
            return True
        _, region, account = identity.scope
        return (self._region in (None, region)) and (self._account in (None, account))

    def _concerns(self, declared: _Identity, other: _Identity) -> bool:
        if declared.scope is not None and other.scope is not None:
            return (declared.scope == other.scope and _same_arn(declared.rest, other.rest)
                    and bool(declared.names() & other.names()))
        if declared.scope is None and other.scope is None:
            return declared.rest == other.rest
        arn, name = (declared, other) if declared.scope is not None else (other, declared)
        return self._local(arn) and name.rest in arn.names()

    def _prefixed(self, seen: list[_Identity]) -> set[str]:
        # Report what the watcher can look up as it is: a plain name when the event has one,
        # else the ARN as given (DescribeSecret takes full and partial ARNs alike).
        hits = [i for i in seen if self._local(i)
                and any(n.startswith(p) for n in i.names() for p in self._prefixes)]
        names = [i.text for i in hits if i.scope is None]
        return set(names[:1] or [i.text for i in hits[:1]])


# -- classifying -----------------------------------------------------------------------------


@dataclass
class _Recent:
    """A bounded LRU of keys, each with a value; the oldest entry goes first."""

    limit: int
    entries: OrderedDict[Any, float] = field(default_factory=OrderedDict)

    def get(self, key: Any) -> float | None:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: Any, value: float) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.limit:
            self.entries.popitem(last=False)


class Classifier:
    """Sorts messages into RESULTS. Remembers the last ``recent_limit`` event ids (duplicates:
    SNS and SQS deliver at least once) and, per secret and label, the newest event time seen
    (an older event arriving later says nothing the newer one's check did not already see)."""

    def __init__(self, matcher: Matcher, *, recent_limit: int = 1024,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.matcher = matcher
        self.wall_clock = wall_clock
        self._seen_ids = _Recent(recent_limit)
        self._newest = _Recent(recent_limit)

    def classify(self, body: object, *, queued_time: float | None = None) -> Verdict:
        """Never raises on any body; the verdict carries no part of it. ``queued_time``: when
        SQS took the message in (its SentTimestamp), stamped on the hints with the time now."""
        received = self.wall_clock()
        try:
            hints = parse_body(body)
        except MalformedMessageError as exc:
            return Verdict(MALFORMED, reason=str(exc))
        if not hints:
            return Verdict(IGNORED, reason="not about a secret's versions")
        event_id = hints[0].event_id
        if event_id is not None:
            if self._seen_ids.get(event_id) is not None:
                return Verdict(DUPLICATE, reason="event id seen before")
            self._seen_ids.put(event_id, received)
        matches: list[tuple[frozenset[str], Hint]] = []
        stale = False
        for hint in hints:
            ids = self.matcher.match(hint.identities)
            if not ids:
                continue
            fresh = self._fresh(ids, hint)
            if not fresh:
                stale = True
                continue
            matches.append((fresh, replace(hint, received_time=received, queued_time=queued_time)))
        if matches:
            return Verdict(MATCHED, tuple(matches))
        if stale:
            return Verdict(OUT_OF_ORDER, reason="older than an event already seen")
        return Verdict(IGNORED, reason="no declared secret")

    def _fresh(self, ids: frozenset[str], hint: Hint) -> frozenset[str]:
        """The ids for which no strictly newer event with the same label was seen; records this
        one. Events of unknown time are always fresh (they cannot be ordered)."""
        if hint.event_time is None:
            return ids
        fresh = set()
        for secret_id in ids:
            key = (secret_id, hint.labels)
            newest = self._newest.get(key)
            if newest is None or hint.event_time >= newest:
                self._newest.put(key, hint.event_time)
                fresh.add(secret_id)
        return frozenset(fresh)


# -- configuration values --------------------------------------------------------------------


def validate_topic_arn(value: str, what: str = "--events-topic") -> str:
    """``value`` if it is an SNS topic ARN (``arn:aws:sns:REGION:ACCOUNT:NAME``).

    Raises ConfigError naming ``what``. Whether the topic exists is not checked here: one that
    does not exist yet is retried like an unreachable one.
    """
    text = value.strip()
    if not _TOPIC_ARN_RE.fullmatch(text):
        raise ConfigError(
            f"{what}: {text[:300]!r} is not an SNS topic ARN "
            "(arn:aws:sns:REGION:ACCOUNT_ID:TOPIC_NAME, as the stack output TopicArn gives it)"
        )
    return text


def validate_queue_url(value: str, what: str = "--events-queue") -> str:
    """``value`` if it is an SQS queue URL (``https://sqs.REGION.amazonaws.com/ACCOUNT/NAME``;
    any http(s) host is accepted, for VPC endpoints and local emulators).

    Raises ConfigError naming ``what``.
    """
    text = value.strip()
    parts = urlsplit(text)
    path = parts.path.strip("/").split("/")
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or len(path) != 2
        or not (path[0].isdigit() and len(path[0]) == 12)
        or not _QUEUE_NAME_RE.fullmatch(path[1])
    ):
        raise ConfigError(
            f"{what}: {text[:300]!r} is not an SQS queue URL "
            "(https://sqs.REGION.amazonaws.com/ACCOUNT_ID/QUEUE_NAME, as GetQueueUrl gives it)"
        )
    return text


def topic_region(topic_arn: str) -> str:
    """The region of a (valid) topic ARN: SNS must be called there to subscribe to it."""
    return topic_arn.split(":")[3]


def queue_region(queue_url: str) -> str | None:
    """The region in an SQS queue URL's host (``sqs.REGION.amazonaws.com``), or None (an
    endpoint URL without one, such as a local emulator)."""
    host = urlsplit(queue_url).hostname or ""
    for label in host.split("."):
        if _REGION_RE.fullmatch(label):
            return label
    return None
