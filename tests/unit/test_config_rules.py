"""Every row of ``config.RULES`` rejects the input it forbids and accepts its fixed version."""

from __future__ import annotations

import pytest

from sidecar import config
from sidecar.cli import resolve_config
from sidecar.errors import ConfigError

SECRET = ["--secret", "A=app/a"]
OUT = ["--output", "/dev/shm/ztr-unit/env"]

# (command, rejected argv, accepted argv); each rule's message names it.
TOPIC = "arn:aws:sns:us-east-1:123456789012:ztr-events"
QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/my-queue"
CASES = {
    "--timeout must be more than 0s": ("init", [*SECRET, *OUT, "--timeout", "0s"],
                                       [*SECRET, *OUT, "--timeout", "1s"]),
    "--refresh-interval must be more than 0s": (
        "watch", [*SECRET, *OUT, "--refresh-interval", "0s"],
        [*SECRET, *OUT, "--refresh-interval", "1s"]),
    "ztr run needs a command after --": ("run", SECRET, [*SECRET, "--", "app"]),
    "ztr watch needs --output or --output-dir": ("watch", SECRET, [*SECRET, *OUT]),
    "ztr init needs --output or --output-dir": ("init", SECRET, [*SECRET, *OUT]),
    "--notify-signal needs --notify-pid-file": (
        "watch", [*SECRET, *OUT, "--notify-signal", "SIGHUP"],
        [*SECRET, *OUT, "--notify-signal", "SIGHUP", "--notify-pid-file", "/run/app.pid"]),
    "--events-topic and --events-queue exclude each other": (
        "watch", [*SECRET, *OUT, "--events-topic", TOPIC, "--events-queue", QUEUE],
        [*SECRET, *OUT, "--events-queue", QUEUE]),
}


def case_for(rule: config.Rule) -> tuple[str, list[str], list[str]]:
    matches = [case for start, case in CASES.items() if rule.message.startswith(start)]
    assert len(matches) == 1, f"no test case for the rule {rule.message!r}: add one to CASES"
    return matches[0]


@pytest.mark.parametrize("rule", config.RULES, ids=lambda r: r.message[:40])
def test_config_rule_broken_is_rejected_with_its_message(rule: config.Rule) -> None:
    command, rejected, _ = case_for(rule)
    assert command in rule.commands
    with pytest.raises(ConfigError) as caught:
        resolve_config(command, rejected, {})
    assert str(caught.value) == rule.message
    assert caught.value.exit_code == 64


@pytest.mark.parametrize("rule", config.RULES, ids=lambda r: r.message[:40])
def test_config_rule_kept_is_accepted(rule: config.Rule) -> None:
    command, _, accepted = case_for(rule)
    assert resolve_config(command, accepted, {}).command == command


def test_config_rules_every_case_has_a_rule() -> None:
    messages = [rule.message for rule in config.RULES]
    assert all(any(m.startswith(start) for m in messages) for start in CASES)
