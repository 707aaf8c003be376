"""The log redaction filter: known values become *** in messages and in nested fields."""

from __future__ import annotations

import io
import json
import logging
from types import MappingProxyType
from typing import Any

import pytest

from sidecar import logs
from sidecar.loader import Snapshot
from sidecar.logs import REDACTED, Redactor
from sidecar.source import SecretVersion


def record(msg: str, *args: object, fields: dict[str, Any] | None = None) -> logging.LogRecord:
    entry = logging.LogRecord("ztr", logging.INFO, __file__, 1, msg, args or None, None)
    if fields is not None:
        entry.fields = fields
    return entry


def redactor(*values: str) -> Redactor:
    redactor = Redactor()
    redactor.update(values)
    return redactor


def test_redactor_value_in_message_is_replaced() -> None:
    entry = record("connecting with hunter22 now")
    assert redactor("hunter22").filter(entry)
    assert entry.getMessage() == f"connecting with {REDACTED} now"


def test_redactor_value_in_formatting_args_is_replaced() -> None:
    entry = record("password %s for %s", "hunter22", "db")
    redactor("hunter22").filter(entry)
    assert entry.getMessage() == f"password {REDACTED} for db"


def test_redactor_values_in_nested_fields_and_lists_are_replaced() -> None:
    entry = record("ok", fields={
        "plain": "x-hunter22-y",
        "nested": {"deeper": {"list": ["hunter22", "fine", ("tuple", "s3cr3t!")]}},
        "count": 3,
    })
    redactor("hunter22", "s3cr3t!").filter(entry)
    assert getattr(entry, "fields", None) == {
        "plain": f"x-{REDACTED}-y",
        "nested": {"deeper": {"list": [REDACTED, "fine", ["tuple", REDACTED]]}},
        "count": 3,
    }


def test_redactor_longest_value_is_replaced_first() -> None:
    entry = record("token abcdefgh and abcd")
    redactor("abcd", "abcdefgh").filter(entry)
    assert entry.getMessage() == f"token {REDACTED} and {REDACTED}"  # not "***efgh"


def test_redactor_values_shorter_than_four_characters_are_untouched() -> None:
    entry = record("the cat sat on a mat", fields={"word": "on"})
    redactor("cat", "on", "a").filter(entry)
    assert entry.getMessage() == "the cat sat on a mat"
    assert getattr(entry, "fields", None) == {"word": "on"}


def test_redactor_four_characters_is_enough() -> None:
    entry = record("pin 1234")
    redactor("1234").filter(entry)
    assert entry.getMessage() == f"pin {REDACTED}"


def test_redactor_updates_keep_the_previous_generation() -> None:
    redactor = Redactor()
    redactor.update(["first-value"])
    redactor.update(["second-value"])
    entry = record("first-value then second-value")
    redactor.filter(entry)
    assert entry.getMessage() == f"{REDACTED} then {REDACTED}"


def test_redactor_many_rotations_stay_bounded() -> None:
    redactor = Redactor()
    for rotation in range(1000):
        redactor.update([f"db-password-{rotation:04d}", "session-secret-stays"])
    entry = record("db-password-0000 db-password-0998 db-password-0999 session-secret-stays")
    redactor.filter(entry)
    # The two newest generations are redacted; the thousand older ones are not kept at all.
    assert entry.getMessage() == f"db-password-0000 {REDACTED} {REDACTED} {REDACTED}"


def test_redactor_without_values_leaves_record_alone() -> None:
    entry = record("rate %d%%", 5)
    assert Redactor().filter(entry)
    assert entry.args == (5,)
    assert entry.getMessage() == "rate 5%"


def test_redactor_through_logs_setup_keeps_values_out_of_json_lines() -> None:
    stream = io.StringIO()
    saved = (list(logs.log.handlers), logs.log.level, logs.log.propagate)
    try:
        redactor = logs.setup("json", "info", stream)
        redactor.update(["hunter22"])
        logs.info("loaded hunter22", names=["A"], detail={"value": "hunter22"})
    finally:  # the ztr logger is process-wide: leave it as other tests expect it
        logs.log.handlers[:], logs.log.level, logs.log.propagate = saved
    line = json.loads(stream.getvalue())
    assert "hunter22" not in stream.getvalue()
    assert line["msg"] == f"loaded {REDACTED}"
    assert line["detail"] == {"value": REDACTED}


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_record_logged_as_a_field_shows_its_repr_not_its_value(fmt: str) -> None:
    """Records are NamedTuples (tuples): a field holding one is shown by its repr, as a dataclass
    was, even before any value is known to the redactor and for a value too short to redact."""
    version = SecretVersion("prod/db", "prod/db", "arn:aws:secretsmanager:::secret:prod/db",
                            "v-1", "pw")
    snapshot = Snapshot((), {}, {"DB": "pw"}, {"DB": "v-1"})
    stream = io.StringIO()
    saved = (list(logs.log.handlers), logs.log.level, logs.log.propagate)
    try:
        logs.setup(fmt, "info", stream)
        logs.info("loaded", version=version, snapshot=snapshot, nested=[{"v": version}])
    finally:
        logs.log.handlers[:], logs.log.level, logs.log.propagate = saved
    text = stream.getvalue()
    assert "'pw'" not in text
    assert '"pw"' not in text
    assert "v-1" in text
    if fmt == "json":
        line = json.loads(text)
        assert line["version"] == repr(version)
        assert line["nested"] == [{"v": repr(version)}]


def test_redactor_reaches_values_in_a_read_only_mapping_field() -> None:
    stream = io.StringIO()
    saved = (list(logs.log.handlers), logs.log.level, logs.log.propagate)
    try:
        redactor = logs.setup("json", "info", stream)
        redactor.update(["hunter22"])
        logs.info("loaded", detail=MappingProxyType({"value": "hunter22"}))
    finally:
        logs.log.handlers[:], logs.log.level, logs.log.propagate = saved
    assert "hunter22" not in stream.getvalue()
    assert json.loads(stream.getvalue())["detail"] == {"value": REDACTED}
