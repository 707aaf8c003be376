"""Loader and the pure steps around it: value extraction, JSON keys, binary, optional secrets,
prefix expansion, collisions, and the child environment."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import pytest

from sidecar import refs
from sidecar.environ import child_environment
from sidecar.errors import (
    AccessDeniedError,
    ConfigError,
    SecretNotFoundError,
    SecretValueError,
    TransientError,
    ZtrError,
)
from sidecar.loader import Loader, Snapshot, extract
from sidecar.refs import FetchKey
from sidecar.retry import RetryPolicy
from sidecar.source import SecretVersion

VERSION = "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE"


def version(value: str | bytes, name: str = "s") -> SecretVersion:
    return SecretVersion(name, name, f"arn:aws:secretsmanager:us-east-1:1:secret:{name}-AbCdEf",
                         VERSION, value)


def binding(entry: str) -> refs.Binding:
    return refs.parse_binding(entry, "--secret")


class FakeSource:
    """Stands in for SecretsManagerSource: named values, per-secret errors, call counts."""

    region = "us-east-1"
    endpoint = "http://fake"

    def __init__(self, values: dict[str, str | bytes], errors: dict[str, ZtrError] | None = None,
                 transient_calls: int = 0) -> None:
        self.values = values
        self.errors = errors or {}
        self.transient_calls = transient_calls
        self.get_many_calls = 0
        self.explained: list[str] = []

    def list_names(self, prefix: str) -> list[str]:
        return sorted(name for name in self.values if name.startswith(prefix))

    def get_many(self, keys: Sequence[FetchKey]) -> dict[FetchKey, SecretVersion | ZtrError]:
        self.get_many_calls += 1
        if self.get_many_calls <= self.transient_calls:
            raise TransientError("fake: throttled")
        out: dict[FetchKey, SecretVersion | ZtrError] = {}
        for key in keys:
            if key.secret_id in self.errors:
                out[key] = self.errors[key.secret_id]
            elif key.secret_id in self.values:
                out[key] = version(self.values[key.secret_id], key.secret_id)
            else:
                out[key] = SecretNotFoundError(f"{key.secret_id}: not found in us-east-1")
        return out

    def explain_missing(self, error: SecretNotFoundError) -> SecretNotFoundError:
        self.explained.append(str(error))
        return SecretNotFoundError(str(error) + "; did you mean something?")


def make_loader(source: FakeSource, entries: Sequence[str] = (), prefix: str | None = None) -> Loader:
    return Loader(source, RetryPolicy(initial_seconds=0.001, max_backoff_seconds=0.01),  # type: ignore[arg-type]
                  bindings=[binding(e) for e in entries], prefix=prefix, timeout_seconds=5)


# -- extraction -------------------------------------------------------------------------------

DOC = json.dumps({"username": "app", "password": "p@ss", "port": 5432, "ssl": True, "ratio": 0.5,
                  "none": None, "tags": ["a", "b"], "nested": {"k": "v", "n": 1}, "name": "Zoë"})


@pytest.mark.parametrize(
    ("entry", "value", "pairs"),
    [
        ("A=s", "plain text", [("A", "plain text")]),
        ("A=s", DOC, [("A", DOC)]),
        ("A=s#password", DOC, [("A", "p@ss")]),
        ("A=s#port", DOC, [("A", "5432")]),
        ("A=s#ssl", DOC, [("A", "true")]),
        ("A=s#ratio", DOC, [("A", "0.5")]),
        ("A=s#none", DOC, [("A", "null")]),
        ("A=s#tags", DOC, [("A", '["a","b"]')]),
        ("A=s#nested", DOC, [("A", '{"k":"v","n":1}')]),
        ("A=s#name", DOC, [("A", "Zoë")]),
        ("A=s", b"utf-8 bytes \xc3\xa9", [("A", "utf-8 bytes é")]),
        ("A=s?encoding=base64", b"\x00\xff\xfe", [("A", base64.b64encode(b"\x00\xff\xfe").decode())]),
        ("A=s?encoding=base64", "text", [("A", "dGV4dA==")]),
        ("A=s#k", b'{"k": "from binary"}', [("A", "from binary")]),
    ],
)
def test_extract_reference_shapes_give_values(entry: str, value: str | bytes,
                                              pairs: list[tuple[str, str]]) -> None:
    assert extract(binding(entry), version(value)) == pairs


def test_extract_all_keys_names_each_key_upper_snake() -> None:
    pairs = extract(binding("DB_=s#*"), version(DOC))
    assert dict(pairs) == {
        "DB_USERNAME": "app", "DB_PASSWORD": "p@ss", "DB_PORT": "5432", "DB_SSL": "true",
        "DB_RATIO": "0.5", "DB_NONE": "null", "DB_TAGS": '["a","b"]',
        "DB_NESTED": '{"k":"v","n":1}', "DB_NAME": "Zoë"}


def test_extract_all_keys_without_prefix_uses_bare_keys() -> None:
    assert extract(binding("=s#*"), version('{"db-host": "h", "2fa": "x"}')) == [
        ("DB_HOST", "h"), ("_2FA", "x")]


@pytest.mark.parametrize(
    ("entry", "value", "fragment"),
    [
        ("A=s#k", "CANARY-not-json", "is not a JSON object, so #k cannot select a key"),
        ("A=s#k", '["CANARY-list"]', "is not a JSON object"),
        ("A=s#k", '"CANARY-string"', "is not a JSON object"),
        ("A=s#*", "CANARY-not-json", "is not a JSON object, so #* cannot select a key"),
        ("A=s#missing", '{"user": "CANARY-u", "pass": "CANARY-p"}',
         "has no JSON key 'missing' (keys: pass, user)"),
        ("A=s", b"\xff\xfeCANARY", "is binary and not UTF-8 text: add ?encoding=base64"),
        ("A=s", "CANARY\x00nul", "contains a NUL byte"),
        ("A=s#k", '{"k": "CANARY\\u0000nul"}', "contains a NUL byte"),
        ("A=s", "CANARY\ud800", "is not valid Unicode text"),
        ("=s#*", '{"": "CANARY-empty-key"}', "has a JSON key that gives no variable name"),
    ],
)
def test_extract_value_not_fitting_reference_raises_65_without_the_value(
    entry: str, value: str | bytes, fragment: str
) -> None:
    with pytest.raises(SecretValueError) as caught:
        extract(binding(entry), version(value))
    assert fragment in str(caught.value)
    assert caught.value.exit_code == 65
    assert "CANARY" not in str(caught.value)
    assert caught.value.__cause__ is None or "CANARY" not in str(caught.value.__cause__)


def test_snapshot_build_name_given_twice_raises_naming_both() -> None:
    bindings = [binding("DB_USER=a"), binding("DB_=b#*")]
    versions: dict[FetchKey, SecretVersion | None] = {
        FetchKey("a"): version("x", "a"), FetchKey("b"): version('{"user": "y"}', "b")}
    with pytest.raises(ConfigError) as caught:
        Snapshot.build(bindings, versions)
    assert "DB_USER is given twice" in str(caught.value)
    assert "(a)" in str(caught.value)
    assert "(b#*)" in str(caught.value)


# -- Loader -------------------------------------------------------------------------------------


def test_loader_load_returns_values_and_version_ids() -> None:
    source = FakeSource({"a": "1", "b": DOC})
    snapshot = make_loader(source, ["A=a", "PW=b#password", "DB_=b#*"]).load()
    assert snapshot.values["A"] == "1"
    assert snapshot.values["PW"] == "p@ss"
    assert snapshot.values["DB_PORT"] == "5432"
    assert snapshot.version_ids()["A"] == VERSION
    assert source.get_many_calls == 1  # one fetch for b, used by two bindings


def test_loader_optional_missing_is_left_out() -> None:
    snapshot = make_loader(FakeSource({"a": "1"}), ["A=a", "B=gone?optional"]).load()
    assert dict(snapshot.values) == {"A": "1"}
    assert snapshot.versions[FetchKey("gone")] is None


def test_loader_required_missing_raises_66_with_hint() -> None:
    source = FakeSource({"a": "1"})
    with pytest.raises(SecretNotFoundError) as caught:
        make_loader(source, ["A=a", "B=gone"]).load()
    assert str(caught.value) == "gone: not found in us-east-1; did you mean something?"
    assert source.explained == ["gone: not found in us-east-1"]


def test_loader_optional_missing_asks_for_no_hint() -> None:
    source = FakeSource({"a": "1"})
    make_loader(source, ["A=a", "B=gone?optional"]).load()
    assert source.explained == []


def test_loader_optional_but_denied_still_raises() -> None:
    source = FakeSource({"a": "1"}, errors={"b": AccessDeniedError("b: access denied")})
    with pytest.raises(AccessDeniedError):
        make_loader(source, ["A=a", "B=b?optional"]).load()


def test_loader_same_secret_required_and_optional_is_required() -> None:
    with pytest.raises(SecretNotFoundError):
        make_loader(FakeSource({}), ["A=gone?optional", "B=gone#k"]).load()


def test_loader_transient_failures_are_retried() -> None:
    source = FakeSource({"a": "1"}, transient_calls=2)
    assert make_loader(source, ["A=a"]).load().values == {"A": "1"}
    assert source.get_many_calls == 3


def test_loader_prefix_adds_one_variable_per_secret() -> None:
    source = FakeSource({"prod/app/database-password": "d", "prod/app/session.secret": "s",
                         "prod/other/x": "x"})
    snapshot = make_loader(source, ["EXTRA=prod/other/x"], prefix="prod/app/").load()
    assert dict(snapshot.values) == {"DATABASE_PASSWORD": "d", "SESSION_SECRET": "s", "EXTRA": "x"}


def test_loader_prefix_matching_nothing_raises_66() -> None:
    with pytest.raises(SecretNotFoundError, match="--prefix nothing/: no secret name starts with it"):
        make_loader(FakeSource({"a": "1"}), prefix="nothing/").load()


def test_loader_prefix_name_colliding_with_declared_raises() -> None:
    source = FakeSource({"prod/app/token": "t", "other": "o"})
    with pytest.raises(ConfigError, match="TOKEN is given twice"):
        make_loader(source, ["TOKEN=other"], prefix="prod/app/").load()


def test_snapshot_repr_hides_values() -> None:
    snapshot = make_loader(FakeSource({"a": "CANARY-snapshot"}), ["A=a"]).load()
    assert "CANARY" not in repr(snapshot)
    assert snapshot.names == ["A"]


# -- child environment --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parent", "values", "child"),
    [
        ({"PATH": "/bin"}, {"A": "1"}, {"PATH": "/bin", "A": "1"}),
        ({"A": "inherited"}, {"A": "secret"}, {"A": "secret"}),
        ({"A": "sm://a"}, {"A": "secret"}, {"A": "secret"}),
        ({"A": "sm://a?optional", "B": "plain"}, {}, {"B": "plain"}),
        ({"REDIS_PASSWORD": "local"}, {}, {"REDIS_PASSWORD": "local"}),
        ({"ZTR_SECRETS": "A=a"}, {"A": "1"}, {"ZTR_SECRETS": "A=a", "A": "1"}),
    ],
)
def test_child_environment_secrets_over_parent_without_references(
    parent: dict[str, str], values: dict[str, str], child: dict[str, str]
) -> None:
    assert child_environment(parent, values) == child


def test_child_environment_does_not_change_its_inputs() -> None:
    parent: dict[str, Any] = {"A": "sm://a"}
    child_environment(parent, {"A": "1"})
    assert parent == {"A": "sm://a"}


def test_snapshot_secret_values_feed_the_redactor() -> None:
    snapshot = Snapshot.build((binding("A=a"),), {FetchKey("a"): version("v1", "a")})
    assert snapshot.secret_values() == ["v1"]
