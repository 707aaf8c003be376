"""sidecar.events: parsing both event kinds raw and enveloped, matching ids, classifying."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import events
from sidecar.errors import EXIT_USAGE, ConfigError
from sidecar.events import (
    DUPLICATE,
    IGNORED,
    MALFORMED,
    MATCHED,
    OUT_OF_ORDER,
    RESULTS,
    Classifier,
    Hint,
    MalformedMessageError,
    Matcher,
    parse_body,
)

ACCOUNT = "123456789012"
REGION = "us-east-1"
PREFIX = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:"
FULL = PREFIX + "prod/db-AbCdEf"
PARTIAL = PREFIX + "prod/db"


def native(name: str = "prod/db", arn: str = FULL, *, event_id: str = "e-1", version: str = "v2",
           label: str = "AWSCURRENT", time: str = "2024-02-06T16:43:48Z") -> dict[str, Any]:
    return {
        "version": "0", "id": event_id, "detail-type": "Secret Label Updated",
        "source": "aws.secretsmanager", "account": ACCOUNT, "time": time, "region": REGION,
        "resources": [arn], "detail": {"name": name, "labelUpdated": label, "versionId": version},
    }


def api_call(name: str, request: dict[str, Any], response: dict[str, Any] | None = None, *,
             event_id: str = "c-1", detail_type: str = "AWS API Call via CloudTrail",
             **detail: Any) -> dict[str, Any]:
    return {
        "version": "0", "id": event_id, "detail-type": detail_type, "source": "aws.secretsmanager",
        "account": ACCOUNT, "time": "2024-02-06T16:43:50Z", "region": REGION, "resources": [],
        "detail": {"eventVersion": "1.08", "eventSource": "secretsmanager.amazonaws.com",
                   "eventName": name, "eventTime": "2024-02-06T16:43:50Z",
                   "requestParameters": request, "responseElements": response, **detail},
    }


def envelope(event: dict[str, Any] | str, **fields: Any) -> dict[str, Any]:
    return {"Type": "Notification", "MessageId": "sns-1",
            "TopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:ztr-events",
            "Message": event if isinstance(event, str) else json.dumps(event),
            "Timestamp": "2024-02-06T16:43:49.250Z", "SignatureVersion": "1", **fields}


def body(document: Any) -> str:
    return json.dumps(document)


# -- parsing ---------------------------------------------------------------------------------

EPOCH_48 = 1707237828.0


def test_parse_body_native_raw_gives_name_arn_version_label_and_time() -> None:
    (hint,) = parse_body(body(native()))
    assert hint == Hint("Secret Label Updated", ("prod/db", FULL), "v2", ("AWSCURRENT",), "e-1",
                        EPOCH_48, None, None)


def test_parse_body_native_enveloped_adds_publication_time() -> None:
    (hint,) = parse_body(body(envelope(native())))
    assert hint.identities == ("prod/db", FULL)
    assert hint.event_id == "e-1"  # the event's own id, not SNS's: a redelivery has the same
    assert hint.published_time == pytest.approx(EPOCH_48 + 1.25)


def test_parse_body_envelope_without_event_id_uses_sns_message_id() -> None:
    event = native()
    del event["id"]
    (hint,) = parse_body(body(envelope(event)))
    assert hint.event_id == "sns-1"


API_CALLS: list[tuple[str, dict[str, Any], tuple[tuple[str, ...], str | None, tuple[str, ...]]]] = [
    ("put-by-name", api_call("PutSecretValue", {"secretId": "prod/db"},
                             {"arn": FULL, "versionId": "v3", "versionStages": ["AWSCURRENT"]}),
     (("prod/db", FULL), "v3", ("AWSCURRENT",))),
    ("put-pending-during-rotation",
     api_call("PutSecretValue", {"secretId": FULL, "versionStages": ["AWSPENDING"],
                                 "clientRequestToken": "v4"}, {"arn": FULL, "versionId": "v4"}),
     ((FULL,), "v4", ("AWSPENDING",))),
    ("put-by-partial-arn",
     api_call("PutSecretValue", {"secretId": PARTIAL}, {"aRN": FULL, "versionId": "v5"}),
     ((PARTIAL, FULL), "v5", ("AWSCURRENT",))),
    ("update-stage", api_call("UpdateSecretVersionStage",
                              {"secretId": "prod/db", "versionStage": "AWSCURRENT",
                               "moveToVersionId": "v6", "removeFromVersionId": "v5"}, {"aRN": FULL}),
     (("prod/db", FULL), "v6", ("AWSCURRENT",))),
    ("rotate-capitalised-arn",
     api_call("RotateSecret", {"secretId": "prod/db"}, {"ARN": FULL, "versionId": "v7"}),
     (("prod/db", FULL), "v7", ())),
    ("update-secret", api_call("UpdateSecret", {"secretId": "prod/db"}, {"arn": FULL, "versionId": "v8"}),
     (("prod/db", FULL), "v8", ("AWSCURRENT",))),
    ("update-metadata-only", api_call("UpdateSecret", {"secretId": "prod/db", "description": "x"},
                                      {"arn": FULL, "name": "prod/db"}),
     (("prod/db", FULL), None, ())),
    ("create", api_call("CreateSecret", {"name": "prod/app/new"},
                        {"arn": PREFIX + "prod/app/new-Zz9Yy8", "versionId": "v1"}),
     (("prod/app/new", PREFIX + "prod/app/new-Zz9Yy8"), "v1", ("AWSCURRENT",))),
    ("restore", api_call("RestoreSecret", {"secretId": "prod/db"}, {"arn": FULL, "name": "prod/db"}),
     (("prod/db", FULL), None, ())),
    ("delete", api_call("DeleteSecret", {"secretId": FULL, "recoveryWindowInDays": 7}, {"arn": FULL}),
     ((FULL,), None, ())),
    ("resources-list", api_call("PutSecretValue", {"secretId": "prod/db"}, None,
                                resources=[{"ARN": FULL, "accountId": ACCOUNT}]),
     (("prod/db", FULL), None, ())),
    ("amazon-detail-type", api_call("PutSecretValue", {"secretId": "prod/db"}, {"versionId": "v9"},
                                    detail_type="Amazon API Call via CloudTrail"),
     (("prod/db",), "v9", ("AWSCURRENT",))),
]


@pytest.mark.parametrize(("case", "event", "expected"), API_CALLS, ids=[c[0] for c in API_CALLS])
@pytest.mark.parametrize("wrapped", [False, True], ids=["raw", "enveloped"])
def test_parse_body_api_call_gives_identities_version_labels(
        case: str, event: dict[str, Any], expected: tuple[Any, ...], wrapped: bool) -> None:
    (hint,) = parse_body(body(envelope(event) if wrapped else event))
    assert (hint.identities, hint.version_id, hint.labels) == expected
    assert hint.kind == event["detail"]["eventName"]
    assert hint.event_id == "c-1"
    assert hint.event_time == EPOCH_48 + 2


IGNORED_BODIES = [
    ("read", api_call("GetSecretValue", {"secretId": "prod/db"})),
    ("tag", api_call("TagResource", {"secretId": "prod/db", "tags": []})),
    ("failed-call", api_call("PutSecretValue", {"secretId": "prod/db"}, errorCode="AccessDenied")),
    ("other-service-call", {**api_call("PutSecretValue", {"secretId": "prod/db"}),
                            "detail": {"eventSource": "ssm.amazonaws.com", "eventName": "PutSecretValue"}}),
    ("other-source", {**native(), "source": "aws.ec2"}),
    ("other-detail-type", {**native(), "detail-type": "Secret Rotation Succeeded"}),
    ("subscription-confirmation", {"Type": "SubscriptionConfirmation", "Token": "t", "Message": "m"}),
]


@pytest.mark.parametrize(("case", "document"), IGNORED_BODIES, ids=[c[0] for c in IGNORED_BODIES])
def test_parse_body_unrelated_event_gives_no_hint(case: str, document: dict[str, Any]) -> None:
    assert parse_body(body(document)) == []


MALFORMED_BODIES: list[tuple[str, object]] = [
    ("not-json", "hello"),
    ("json-list", "[1, 2]"),
    ("json-number", "42"),
    ("empty", ""),
    ("not-text", b'{"source": "aws.secretsmanager"}'),
    ("none", None),
    ("no-detail-type", body({"source": "aws.secretsmanager", "detail": {}})),
    ("detail-not-object", body({**native(), "detail": "prod/db"})),
    ("native-without-secret", body({**native(), "resources": [], "detail": {"versionId": "v"}})),
    ("api-call-without-secret", body(api_call("PutSecretValue", {"secretString": "x"}))),
    ("envelope-message-not-text", body(envelope(native(), Message={"a": 1}))),
    ("envelope-message-not-json", body(envelope("{not json"))),
    ("envelope-other-type", body({"Type": "Something", "Message": "{}"})),
    ("deep-nesting", "[" * 100_000 + "]" * 100_000),
]


@pytest.mark.parametrize(("case", "text"), MALFORMED_BODIES, ids=[c[0] for c in MALFORMED_BODIES])
def test_parse_body_malformed_raises_without_quoting_body(case: str, text: object) -> None:
    with pytest.raises(MalformedMessageError) as caught:
        parse_body(text)
    if isinstance(text, str) and len(text) > 8:
        assert text[:40] not in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-02-06T16:43:48Z", EPOCH_48),
    ("2024-02-06T16:43:48.5Z", EPOCH_48 + 0.5),
    ("2024-02-06T17:43:48+01:00", EPOCH_48),
    ("2024-02-06T16:43:48", None),  # no zone: cannot be ordered against others
    ("yesterday", None),
    (1707237828, None),
])
def test_parse_time_iso_with_zone_only(text: object, expected: float | None) -> None:
    assert events.parse_time(text) == expected


# -- matching --------------------------------------------------------------------------------

OTHER_ACCOUNT = FULL.replace(ACCOUNT, "210987654321")
OTHER_REGION = FULL.replace(REGION, "eu-west-1")
MATCHES: list[tuple[str, str, tuple[str, ...], bool]] = [
    # (case, declared id, event identities, matches)
    ("name-name", "prod/db", ("prod/db",), True),
    ("name-other-name", "prod/db", ("prod/db2",), False),
    ("name-full-arn", "prod/db", (FULL,), True),
    ("name-partial-arn", "prod/db", (PARTIAL,), True),
    ("name-arn-of-longer-name", "prod/db", (PREFIX + "prod/db2-AbCdEf",), False),
    ("name-arn-other-account", "prod/db", (OTHER_ACCOUNT,), True),  # no account known: liberal
    ("name-suffix-like-name-given", "prod/db", ("prod/db-backup", PREFIX + "prod/db-backup-Qw3Er4"), False),
    ("name-suffix-like-arn-alone", "prod/db", (PREFIX + "prod/db-backup",), True),  # ambiguous: liberal
    ("full-same", FULL, (FULL,), True),
    ("full-name", FULL, ("prod/db",), True),
    ("full-partial", FULL, (PARTIAL,), True),
    ("full-recreated", FULL, (PREFIX + "prod/db-XyZ123",), False),
    ("full-other-account", FULL, (OTHER_ACCOUNT,), False),
    ("full-other-region", FULL, (OTHER_REGION,), False),
    ("partial-full", PARTIAL, (FULL,), True),
    ("partial-name", PARTIAL, ("prod/db",), True),
    ("partial-longer-name", PARTIAL, (PREFIX + "prod/db2-AbCdEf",), False),
    ("partial-name-given-longer", PARTIAL, ("prod/db-backup", PREFIX + "prod/db-backup-Qw3Er4"), False),
    ("china-partition", "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:prod/db",
     ("arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:prod/db-AbCdEf",), True),
    ("gov-vs-commercial", "arn:aws-us-gov:secretsmanager:us-east-1:123456789012:secret:prod/db",
     (FULL,), False),
]


@pytest.mark.parametrize(("case", "declared", "seen", "expected"), MATCHES, ids=[c[0] for c in MATCHES])
def test_matcher_declared_id_against_event_identities(
        case: str, declared: str, seen: tuple[str, ...], expected: bool) -> None:
    matcher = Matcher([declared, "unrelated/secret"])
    assert matcher.match(seen) == ({declared} if expected else set())


def test_matcher_known_region_and_account_exclude_foreign_arns() -> None:
    matcher = Matcher(["prod/db"], region=REGION, account=ACCOUNT)
    assert matcher.match([FULL]) == {"prod/db"}
    assert matcher.match([OTHER_ACCOUNT]) == set()
    assert matcher.match([OTHER_REGION]) == set()


def test_matcher_several_declared_forms_of_one_secret_all_match() -> None:
    matcher = Matcher(["prod/db", FULL, PARTIAL, "prod/other"])
    assert matcher.match(["prod/db", FULL]) == {"prod/db", FULL, PARTIAL}


@pytest.mark.parametrize(("seen", "expected"), [
    (("prod/app/new", PREFIX + "prod/app/new-Zz9Yy8"), {"prod/app/new"}),
    # only an ARN: reported as given (DescribeSecret takes it)
    ((PREFIX + "prod/app/new-Zz9Yy8",), {PREFIX + "prod/app/new-Zz9Yy8"}),
    (("prod/application",), set()),
    ((PREFIX.replace(REGION, "eu-west-1") + "prod/app/new-Zz9Yy8",), set()),  # another region
])
def test_matcher_prefix_matches_secrets_created_later(seen: tuple[str, ...], expected: set[str]) -> None:
    matcher = Matcher([], ["prod/app/"], region=REGION)
    assert matcher.match(seen) == expected


# -- classifying -----------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def classifier(*ids: str, prefixes: tuple[str, ...] = (), limit: int = 1024) -> Classifier:
    return Classifier(Matcher(ids or ("prod/db",), prefixes), recent_limit=limit, wall_clock=Clock())


def test_classifier_matched_carries_ids_and_received_time() -> None:
    verdict = classifier("prod/db", FULL).classify(body(native()), queued_time=1_799_999_999.5)
    assert verdict.result == MATCHED
    ((ids, hint),) = verdict.matches
    assert ids == {"prod/db", FULL}
    assert verdict.secret_ids == ids
    assert hint.received_time == 1_800_000_000.0
    assert hint.queued_time == 1_799_999_999.5
    assert hint.version_id == "v2"


@pytest.mark.parametrize(("text", "expected"), [
    (body(native("prod/other", PREFIX + "prod/other-AbCdEf")), IGNORED),
    (body(api_call("GetSecretValue", {"secretId": "prod/db"})), IGNORED),
    ("{", MALFORMED),
])
def test_classifier_unmatched_and_malformed(text: str, expected: str) -> None:
    verdict = classifier().classify(text)
    assert (verdict.result, verdict.matches) == (expected, ())


def test_classifier_same_event_id_twice_is_duplicate_raw_or_enveloped() -> None:
    sorter = classifier()
    assert sorter.classify(body(native())).result == MATCHED
    assert sorter.classify(body(envelope(native()))).result == DUPLICATE
    assert sorter.classify(body(native(event_id="e-2"))).result == MATCHED


def test_classifier_remembers_only_recent_ids() -> None:
    sorter = classifier(limit=2)
    for n in range(3):
        event = native(event_id=f"e-{n}", time=f"2024-02-06T16:43:5{n}Z")
        assert sorter.classify(body(event)).result == MATCHED
    assert sorter.classify(body(native(event_id="e-2", time="2024-02-06T16:43:52Z"))).result == DUPLICATE
    # e-0 fell out of the LRU: it reads as new (a redelivery that late costs one check)
    assert sorter.classify(body(native(event_id="e-0", time="2024-02-06T16:43:59Z"))).result == MATCHED


def test_classifier_older_event_for_same_label_is_out_of_order() -> None:
    sorter = classifier()
    assert sorter.classify(body(native(event_id="new", time="2024-02-06T16:44:00Z"))).result == MATCHED
    old = sorter.classify(body(native(event_id="old", time="2024-02-06T16:43:00Z")))
    assert (old.result, old.matches) == (OUT_OF_ORDER, ())
    same_second = sorter.classify(body(native(event_id="tie", time="2024-02-06T16:44:00Z")))
    assert same_second.result == MATCHED  # one-second resolution: a tie may be a later event


def test_classifier_older_event_for_other_label_still_matches() -> None:
    sorter = classifier()
    blue = native(event_id="blue", label="BLUE", time="2024-02-06T16:44:00Z")
    assert sorter.classify(body(blue)).result == MATCHED
    current = sorter.classify(body(native(event_id="cur", time="2024-02-06T16:43:00Z")))
    assert current.result == MATCHED


def test_classifier_event_without_time_is_never_out_of_order() -> None:
    sorter = classifier()
    sorter.classify(body(native(event_id="a", time="2024-02-06T16:44:00Z")))
    untimed = native(event_id="b")
    del untimed["time"]
    assert sorter.classify(body(untimed)).result == MATCHED


def test_classifier_prefix_secret_created_after_start() -> None:
    sorter = classifier("prod/db", prefixes=("prod/app/",))
    created = api_call("CreateSecret", {"name": "prod/app/new"},
                       {"arn": PREFIX + "prod/app/new-Zz9Yy8", "versionId": "v1"})
    assert sorter.classify(body(created)).secret_ids == {"prod/app/new"}


# -- never raising ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["source", "detail-type", "detail", "id", "time", "resources", "name",
                         "Type", "Message", "eventName", "eventSource", "requestParameters",
                         "responseElements", "secretId", "aRN", "versionStages", "x"]) | st.text(max_size=8),
        children, max_size=6),
    max_leaves=30,
)


def _mutations() -> st.SearchStrategy[str]:
    """Real event shapes with any field replaced by any JSON value."""
    shapes = [native(), api_call("PutSecretValue", {"secretId": "prod/db"}, {"arn": FULL, "versionId": "v"})]

    def mutate(shape: dict[str, Any], key: str, value: Any, wrap: bool) -> str:
        document = json.loads(json.dumps(shape))
        target = document["detail"] if key.startswith("detail.") else document
        target[key.removeprefix("detail.")] = value
        return body(envelope(document) if wrap else document)

    keys = st.sampled_from(["source", "detail-type", "detail", "id", "time", "resources", "detail.name",
                            "detail.requestParameters", "detail.responseElements", "detail.eventName",
                            "detail.versionId", "detail.labelUpdated", "detail.errorCode"])
    return st.builds(mutate, st.sampled_from(shapes), keys, json_values, st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), json_values.map(json.dumps), _mutations(),
                 json_values.map(lambda v: body(envelope(json.dumps(v))))))
def test_classifier_any_body_never_raises_nor_echoes(text: str) -> None:
    sorter = Classifier(Matcher(["prod/db", FULL, PARTIAL], ["prod/"]), recent_limit=4)
    verdict = sorter.classify(text)
    assert verdict.result in RESULTS
    assert (verdict.result == MATCHED) == bool(verdict.matches)
    if len(text) >= 12:
        assert text not in verdict.reason


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), max_size=4), st.lists(st.text(max_size=60), max_size=4))
def test_matcher_any_ids_never_raise(declared: list[str], seen: list[str]) -> None:
    assert Matcher(declared, declared[:1]).match(seen) <= set(declared) | set(seen)


# -- configuration values --------------------------------------------------------------------


@pytest.mark.parametrize("arn", [
    f"arn:aws:sns:{REGION}:{ACCOUNT}:ztr-events",
    "arn:aws-cn:sns:cn-north-1:123456789012:ztr_events",
    "arn:aws-us-gov:sns:us-gov-west-1:123456789012:Events-1",
    f"arn:aws:sns:{REGION}:{ACCOUNT}:ordered.fifo",
    "arn:aws-eusc:sns:eusc-de-east-1:123456789012:sovereign",
    f"  arn:aws:sns:{REGION}:{ACCOUNT}:padded  ",
])
def test_validate_topic_arn_accepts_topic_arns(arn: str) -> None:
    assert events.validate_topic_arn(arn) == arn.strip()


@pytest.mark.parametrize("arn", [
    "", "ztr-events", f"arn:aws:sqs:{REGION}:{ACCOUNT}:ztr-events",
    f"arn:aws:sns:{REGION}:12345:ztr-events", f"arn:aws:sns:{REGION}:{ACCOUNT}:",
    f"arn:aws:sns:{REGION}:{ACCOUNT}:bad name", f"arn:aws:sns:useast1:{ACCOUNT}:t",
    f"arn:aws:sns:{REGION}:{ACCOUNT}:t:sub-id",
])
def test_validate_topic_arn_rejects_with_exit_64(arn: str) -> None:
    with pytest.raises(ConfigError, match="--events-topic") as caught:
        events.validate_topic_arn(arn)
    assert caught.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize("url", [
    f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/ztr-app",
    f"https://sqs.cn-north-1.amazonaws.com.cn/{ACCOUNT}/app_events",
    f"https://vpce-0a1b-c2d3.sqs.{REGION}.vpce.amazonaws.com/{ACCOUNT}/app.fifo",
    f"http://127.0.0.1:4566/{ACCOUNT}/local",
])
def test_validate_queue_url_accepts_queue_urls(url: str) -> None:
    assert events.validate_queue_url(url) == url


@pytest.mark.parametrize("url", [
    "", "ztr-app", f"sqs.{REGION}.amazonaws.com/{ACCOUNT}/q", f"ftp://sqs.{REGION}.amazonaws.com/{ACCOUNT}/q",
    f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}", f"https://sqs.{REGION}.amazonaws.com/q",
    f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/q/extra",
    f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/bad q",
    f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/q?x=1", f"arn:aws:sqs:{REGION}:{ACCOUNT}:q",
])
def test_validate_queue_url_rejects_with_exit_64(url: str) -> None:
    with pytest.raises(ConfigError, match="--events-queue") as caught:
        events.validate_queue_url(url)
    assert caught.value.exit_code == EXIT_USAGE


def test_regions_of_topic_and_queue() -> None:
    assert events.topic_region(f"arn:aws:sns:eu-west-1:{ACCOUNT}:t") == "eu-west-1"
    assert events.queue_region(f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/q") == "eu-west-1"
    assert events.queue_region(f"https://eu-west-1.queue.amazonaws.com/{ACCOUNT}/q") == "eu-west-1"
    assert events.queue_region(f"http://127.0.0.1:4566/{ACCOUNT}/q") is None
