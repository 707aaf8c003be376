"""The push-rotation template (ecs/cloudformation/ztr-events.yaml): cfn-lint clean, and what no
linter checks: the pods' policy is exactly what ztr calls, only the rules publish to the topic,
and the rules' patterns pass Secrets Manager's events (moto's EventBridge runs them) in the
form sidecar.events parses. Each rule is proven by a broken copy that it must reject.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from sidecar import events, eventstream

pytest.importorskip("cfnlint", reason="cfn-lint is a dev dependency: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "ecs" / "cloudformation" / "ztr-events.yaml"
BIN = Path(sys.executable).parent
REGION = "us-east-1"
ACCOUNT = "123456789012"

Doc = dict[str, Any]


def load() -> Doc:
    doc: Doc = yaml.safe_load(TEMPLATE.read_text())
    return doc


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "cfn-lint"), "--format", "parseable", str(path)],
                          capture_output=True, text=True, timeout=300, check=False)


# -- cfn-lint ------------------------------------------------------------------------------------


def test_cfn_lint_template_passes() -> None:
    result = cfn_lint(TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def _resource(doc: Doc, name: str) -> Doc:
    resource: Doc = doc["Resources"][name]
    return resource


def _statement(doc: Doc, resource: str, sid: str) -> Doc:
    statements = _resource(doc, resource)["Properties"]["PolicyDocument"]["Statement"]
    found: Doc = next(s for s in statements if s["Sid"] == sid)
    return found


Breakage = Callable[[Doc], Any]
LINT_BROKEN: list[tuple[str, Breakage, str]] = [
    ("resource-type-typo", lambda d: _resource(d, "Topic").__setitem__("Type", "AWS::SNS::Topik"), "E3006"),
    ("rule-state", lambda d: _resource(d, "LabelUpdatedRule")["Properties"].__setitem__("State", "ON"),
     "E3030"),
    ("action-typo", lambda d: _statement(d, "EventsPolicy", "FindOrphanedZtrQueues").__setitem__(
        "Action", "sqs:ListQueue"), "W3037"),
    ("unknown-condition", lambda d: _resource(d, "ApiCallRule").__setitem__("Condition", "WithTrail"),
     "E"),
    ("ref-to-nothing", lambda d: _resource(d, "Topic")["Properties"].__setitem__(
        "TopicName", {"Ref": "Name"}), "E1020"),
]


def test_cfn_lint_broken_copy_on_disk_fails(tmp_path: Path) -> None:
    """The command line CI runs, end to end (the other broken copies use cfn-lint's API)."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("Type: AWS::SNS::TopicPolicy", "Type: AWS::SNS::Policy"))
    result = cfn_lint(broken)
    assert result.returncode != 0
    assert ":E3006:" in result.stdout, result.stdout


@pytest.mark.parametrize(("case", "breakage", "code"), LINT_BROKEN, ids=[c[0] for c in LINT_BROKEN])
def test_cfn_lint_broken_copy_fails(case: str, breakage: Breakage, code: str) -> None:
    from cfnlint.api import ManualArgs, lint

    doc = copy.deepcopy(load())
    breakage(doc)
    found = [match.rule.id for match in lint(yaml.safe_dump(doc, sort_keys=False),
                                             config=ManualArgs(regions=[REGION]))]
    assert any(rule.startswith(code) for rule in found), found


# -- what the linter cannot see --------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_problems(doc: Doc) -> list[str]:
    """The pods' policy grants exactly what sidecar/eventstream.py calls with a topic, on ztr's
    queues and the template's topic; ListQueues (no resource-level permissions) on * alone."""
    problems: list[str] = []
    queues = {"Fn::Sub": f"arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:"
                         f"{eventstream.QUEUE_PREFIX}*"}
    topic = {"Ref": "Topic"}
    expected = {
        **{action: [queues] for action in eventstream.SQS_ACTIONS_TOPIC},
        **{action: ["*"] for action in eventstream.SQS_ACTIONS_LIST},
        **{action: [topic, {"Fn::Sub": "${Topic}:*"}] for action in eventstream.SNS_ACTIONS_TOPIC},
    }
    granted: dict[str, list[Any]] = {}
    for statement in _resource(doc, "EventsPolicy")["Properties"]["PolicyDocument"]["Statement"]:
        if statement.get("Effect") != "Allow" or "Condition" in statement:
            problems.append(f"{statement.get('Sid')}: plain Allow statements only")
        for action in _as_list(statement["Action"]):
            granted.setdefault(action, []).extend(_as_list(statement["Resource"]))
    for action in sorted(set(granted) - set(expected)):
        problems.append(f"{action} is not a call ztr makes")
    for action in sorted(set(expected) - set(granted)):
        problems.append(f"{action} is missing: ztr calls it")
    for action in sorted(set(granted) & set(expected)):
        extra = [r for r in granted[action] if r not in expected[action]]
        if extra:
            problems.append(f"{action} on {extra}, beyond ztr's queues and topic")
    return problems


def test_policy_grants_exactly_the_calls_ztr_makes() -> None:
    assert policy_problems(load()) == []


POLICY_BROKEN: list[tuple[str, Breakage, str]] = [
    ("send-message", lambda d: _statement(d, "EventsPolicy", "OwnZtrQueues")["Action"].append(
        "sqs:SendMessage"), "not a call ztr makes"),
    ("no-delete", lambda d: _statement(d, "EventsPolicy", "OwnZtrQueues")["Action"].remove(
        "sqs:DeleteQueue"), "missing"),
    ("all-queues", lambda d: _statement(d, "EventsPolicy", "OwnZtrQueues").__setitem__("Resource", "*"),
     "beyond"),
    ("any-topic", lambda d: _statement(d, "EventsPolicy", "SubscribeToTheTopic").__setitem__(
        "Resource", "*"), "beyond"),
]


@pytest.mark.parametrize(("case", "breakage", "phrase"), POLICY_BROKEN, ids=[c[0] for c in POLICY_BROKEN])
def test_policy_broken_copy_rejected(case: str, breakage: Breakage, phrase: str) -> None:
    doc = copy.deepcopy(load())
    breakage(doc)
    assert any(phrase in problem for problem in policy_problems(doc)), policy_problems(doc)


def topic_policy_problems(doc: Doc) -> list[str]:
    problems: list[str] = []
    statements = _resource(doc, "TopicPolicy")["Properties"]["PolicyDocument"]["Statement"]
    rules = {name for name, r in doc["Resources"].items() if r["Type"] == "AWS::Events::Rule"}
    for statement in statements:
        principal = statement.get("Principal")
        actions = set(_as_list(statement["Action"]))
        if "sns:Publish" in actions:
            if principal != {"Service": "events.amazonaws.com"}:
                problems.append(f"{statement['Sid']}: only EventBridge may publish")
            source = json.dumps(statement.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn"))
            missing = [rule for rule in sorted(rules) if f'"{rule}"' not in source]
            if missing:
                problems.append(f"{statement['Sid']}: publishing not limited to the rules {missing}")
        elif "sns:Subscribe" in actions:
            endpoint = statement.get("Condition", {}).get("StringLike", {}).get("sns:Endpoint", {})
            if not str(endpoint.get("Fn::Sub", "")).endswith(f":{eventstream.QUEUE_PREFIX}*"):
                problems.append(f"{statement['Sid']}: subscriptions not limited to ztr-* queues")
        if principal == "*" or principal == {"AWS": "*"}:
            problems.append(f"{statement['Sid']}: a public principal")
    return problems


def test_topic_policy_only_the_rules_publish_only_ztr_queues_subscribe() -> None:
    assert topic_policy_problems(load()) == []


TOPIC_BROKEN: list[tuple[str, Breakage, str]] = [
    ("anyone-publishes", lambda d: _statement(d, "TopicPolicy", "OnlyTheRulesPublish").__setitem__(
        "Principal", "*"), "only EventBridge"),
    ("any-source", lambda d: _statement(d, "TopicPolicy", "OnlyTheRulesPublish").pop("Condition"),
     "not limited to the rules"),
    ("any-endpoint", lambda d: _statement(d, "TopicPolicy", "AccountSubscribesZtrQueues")["Condition"].pop(
        "StringLike"), "ztr-* queues"),
]


@pytest.mark.parametrize(("case", "breakage", "phrase"), TOPIC_BROKEN, ids=[c[0] for c in TOPIC_BROKEN])
def test_topic_policy_broken_copy_rejected(case: str, breakage: Breakage, phrase: str) -> None:
    doc = copy.deepcopy(load())
    breakage(doc)
    assert any(phrase in problem for problem in topic_policy_problems(doc)), topic_policy_problems(doc)


# -- the rules' patterns, run by moto's EventBridge ------------------------------------------------


def resolve(node: Any, doc: Doc, parameters: dict[str, str]) -> Any:
    """The intrinsic functions the template's patterns use, evaluated (Ref, Fn::If, Fn::Not,
    Fn::Equals, Fn::Join); AWS::NoValue drops the key."""
    drop = object()

    def value(n: Any) -> Any:
        if isinstance(n, list):
            return [v for v in (value(i) for i in n) if v is not drop]
        if not isinstance(n, dict):
            return n
        if set(n) == {"Ref"}:
            name = n["Ref"]
            if name == "AWS::NoValue":
                return drop
            default = doc["Parameters"][name].get("Default", "")
            raw = parameters.get(name, default)
            return raw.split(",") if doc["Parameters"][name]["Type"] == "CommaDelimitedList" else raw
        if set(n) == {"Fn::If"}:
            condition, yes, no = n["Fn::If"]
            return value(yes if value(doc["Conditions"][condition]) else no)
        if set(n) == {"Fn::Not"}:
            return not value(n["Fn::Not"][0])
        if set(n) == {"Fn::Equals"}:
            left, right = value(n["Fn::Equals"])
            return left == right
        if set(n) == {"Fn::Join"}:
            separator, items = n["Fn::Join"]
            return separator.join(value(items))
        return {k: v for k, v in ((k, value(v)) for k, v in n.items()) if v is not drop}

    return value(node)


def delivered(doc: Doc, rule: str, parameters: dict[str, str], entries: list[Doc]) -> list[str]:
    """The bodies a rule's target receives for ``entries`` (PutEvents), with moto's EventBridge."""
    pattern = resolve(_resource(doc, rule)["Properties"]["EventPattern"], doc, parameters)
    with mock_aws():
        bridge = boto3.client("events", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.create_queue(QueueName="target")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        bridge.put_rule(Name=rule, EventPattern=json.dumps(pattern), State="ENABLED")
        bridge.put_targets(Rule=rule, Targets=[{"Id": "target", "Arn": arn}])
        assert bridge.put_events(Entries=entries)["FailedEntryCount"] == 0
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [m["Body"] for m in messages]


def label_updated(name: str) -> Doc:
    arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbCdEf"
    return {"Source": "aws.secretsmanager", "DetailType": "Secret Label Updated", "Resources": [arn],
            "Detail": json.dumps({"name": name, "labelUpdated": "AWSCURRENT", "versionId": "v2"})}


def api_call(name: str, secret: str) -> Doc:
    return {"Source": "aws.secretsmanager", "DetailType": "AWS API Call via CloudTrail",
            "Detail": json.dumps({"eventSource": "secretsmanager.amazonaws.com", "eventName": name,
                                  "requestParameters": {"secretId": secret},
                                  "responseElements": {"versionId": "v3"}})}


@pytest.mark.parametrize(("prefix", "expected"), [
    ("", ["production/app/db", "staging/db"]),
    ("production/app/", ["production/app/db"]),
])
def test_label_updated_rule_passes_secrets_under_prefix(prefix: str, expected: list[str]) -> None:
    entries = [label_updated("production/app/db"), label_updated("staging/db"),
               {**label_updated("production/app/db"), "Source": "aws.ssm"}]
    bodies = delivered(load(), "LabelUpdatedRule", {"SecretNamePrefix": prefix}, entries)
    hints = [hint for body in bodies for hint in events.parse_body(body)]
    assert sorted(hint.identities[0] for hint in hints) == expected
    assert all(hint.version_id == "v2" for hint in hints)


def test_api_call_rule_passes_changes_not_reads() -> None:
    doc = load()
    assert _resource(doc, "ApiCallRule")["Condition"] == "WithCloudTrail"
    entries = [api_call(name, "production/app/db")
               for name in ("PutSecretValue", "GetSecretValue", "UpdateSecretVersionStage")]
    bodies = delivered(doc, "ApiCallRule", {"IncludeCloudTrailEvents": "true"}, entries)
    kinds = sorted(hint.kind for body in bodies for hint in events.parse_body(body))
    assert kinds == ["PutSecretValue", "UpdateSecretVersionStage"]


def test_api_call_rule_names_every_call_ztr_reacts_to() -> None:
    pattern = _resource(load(), "ApiCallRule")["Properties"]["EventPattern"]
    assert set(pattern["detail"]["eventName"]) == events.RELEVANT_CALLS


def test_outputs_topic_arn_for_ztr_events_topic() -> None:
    outputs = load()["Outputs"]
    assert outputs["TopicArn"]["Value"] == {"Ref": "Topic"}
    assert "ZTR_EVENTS_TOPIC" in outputs["TopicArn"]["Description"]
