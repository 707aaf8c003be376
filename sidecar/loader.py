"""Turns declared bindings into variable values: expands prefixes and ``#*``, fetches with the
retry policy, extracts JSON keys, and on refresh re-fetches only what really changed."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import Any, NamedTuple

from . import refs
from .errors import (
    ConfigError,
    JsonKeyError,
    NotJsonError,
    NotUtf8Error,
    SecretNotFoundError,
    SecretValueError,
    ZtrError,
)
from .refs import FetchKey
from .retry import RetryPolicy
from .source import SecretSource, SecretVersion, unique

_EMPTY: Mapping[str, Any] = MappingProxyType({})
# Secrets under --prefix that events named but that could not be read yet, kept for the next
# check: each costs a DescribeSecret a cycle, so a flood of such events cannot grow it past this.
MAX_UNREAD_DISCOVERED = 100


class Snapshot(NamedTuple):  # NamedTuples for import speed (see refs.FetchKey)
    """The secrets as last loaded. ``versions`` holds None for a missing optional secret;
    ``ids`` maps each variable to the version id it came from (derived once, at build)."""

    bindings: tuple[refs.Binding, ...]
    versions: Mapping[FetchKey, SecretVersion | None]
    values: Mapping[str, str]
    ids: Mapping[str, str] = _EMPTY

    @classmethod
    def build(
        cls, bindings: Sequence[refs.Binding], versions: Mapping[FetchKey, SecretVersion | None]
    ) -> Snapshot:
        """Extract every binding's values. Raises SecretValueError or ConfigError (collision)."""
        values, ids = _extract_all(bindings, versions)
        return cls(tuple(bindings), versions, values, ids)

    def __repr__(self) -> str:  # the values never reach a repr, a log or a traceback
        return f"Snapshot(names={self.names!r}, ids={dict(self.ids)!r})"

    @property
    def names(self) -> list[str]:
        return sorted(self.values)

    def version_ids(self) -> dict[str, str]:
        """Variable name -> version id: what logs, metrics and /refresh may show."""
        return dict(self.ids)

    def secret_values(self) -> list[str]:
        """Every loaded value, for the log redaction filter."""
        return list(self.values.values())


def _as_text(binding: refs.Binding, version: SecretVersion) -> str:
    raw = version.value
    if binding.ref.encoding == "base64":
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
        return base64.b64encode(data).decode("ascii")
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise NotUtf8Error(
                f"{binding.name}: secret {version.name} is binary and not UTF-8 text: "
                "add ?encoding=base64 to its reference to get base64 text"
            ) from None
    return raw


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _document(binding: refs.Binding, version: SecretVersion, text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        document = None
    if not isinstance(document, dict):
        raise NotJsonError(
            f"{binding.name}: secret {version.name} is not a JSON object, so "
            f"#{binding.ref.key} cannot select a key: drop the #KEY or store JSON"
        )
    return document


def extract(binding: refs.Binding, version: SecretVersion) -> list[tuple[str, str]]:
    """The (variable, value) pairs a binding gives for one fetched version.

    Raises SecretValueError when the value does not fit the reference.
    """
    text = _as_text(binding, version)
    key = binding.ref.key
    if key is None:
        pairs = [(binding.name, text)]
    else:
        document = _document(binding, version, text)
        try:
            if key == refs.ALL_KEYS:
                pairs = [(refs.expand_key_name(binding.name, k), _json_text(v))
                         for k, v in document.items()]
            elif key in document:
                pairs = [(binding.name, _json_text(document[key]))]
            else:
                pairs = []
        except RecursionError:
            raise NotJsonError(f"{binding.name}: secret {version.name} holds JSON nested too deeply "
                               "to write back as a value") from None
        if not pairs and key != refs.ALL_KEYS:
            known = ", ".join(sorted(document)) or "none"
            raise JsonKeyError(
                f"{binding.name}: secret {version.name} has no JSON key {key!r} (keys: {known})"
            )
    for name, value in pairs:
        if not refs.is_valid_env_name(name):  # "#*" over an empty key, with no NAME prefix
            raise SecretValueError(
                f"{binding.name or '#*'}: secret {version.name} has a JSON key that gives no "
                "variable name: put a prefix before '=' (as in APP_=...#*)"
            )
        _check_env_safe(name, value, version.name)
    return pairs


def _check_env_safe(name: str, value: str, secret: str) -> None:
    if "\x00" in value:
        raise SecretValueError(
            f"{name}: secret {secret} contains a NUL byte, which no environment variable or "
            "env file can carry: store it base64-encoded and add ?encoding=base64"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SecretValueError(f"{name}: secret {secret} is not valid Unicode text") from None


def _extract_all(
    bindings: Sequence[refs.Binding], versions: Mapping[FetchKey, SecretVersion | None]
) -> tuple[dict[str, str], dict[str, str]]:
    """Variable values and version ids; two bindings that give one name are an error."""
    values: dict[str, str] = {}
    ids: dict[str, str] = {}
    origins: dict[str, str] = {}
    for binding in bindings:
        version = versions.get(binding.ref.fetch_key)
        if version is None:
            continue
        for name, value in extract(binding, version):
            if name in origins:
                raise ConfigError(
                    f"{name} is given twice: by {origins[name]} and by {binding.origin} "
                    f"({binding.ref.secret_id}{'#' + binding.ref.key if binding.ref.key else ''})"
                )
            origins[name] = f"{binding.origin} ({binding.ref.secret_id})"
            values[name] = value
            ids[name] = version.version_id
    return values, ids


class Refreshed(NamedTuple):
    """One refresh: the new snapshot, the variables whose value changed, and the secrets that
    could not be checked (their last good values are kept in ``snapshot``)."""

    snapshot: Snapshot
    changed: list[str]
    failures: Mapping[str, ZtrError] = _EMPTY  # secret id -> why
    checked: frozenset[str] = frozenset()  # secret ids checked successfully


class Loader:
    """Loads and refreshes the declared secrets through a source and a retry policy."""

    def __init__(
        self,
        source: SecretSource,
        retry: RetryPolicy,
        *,
        bindings: Sequence[refs.Binding],
        prefix: str | None,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.retry = retry
        self.declared = tuple(bindings)
        self.prefix = prefix
        self.timeout_seconds = timeout_seconds
        self.clock = clock

    def expand(self, deadline: float) -> tuple[refs.Binding, ...]:
        """The declared bindings plus one per secret under ``prefix`` (listed, all pages).

        A secret found by the prefix may vanish later like an optional one: its variable goes.
        """
        if not self.prefix:
            return self.declared
        prefix = self.prefix
        names = self.retry.call(lambda: self.source.list_names(prefix), deadline)
        if not names:
            raise SecretNotFoundError(
                f"--prefix {prefix}: no secret name starts with it in {self.source.region}: "
                "check the prefix and the region"
            )
        origin = f"--prefix {prefix}"
        found = [
            refs.Binding(refs.prefixed_env_name(name, prefix), refs.SecretRef(name, optional=True),
                         origin)
            for name in names
        ]
        return self.declared + tuple(found)

    def fetch(
        self, keys: Iterable[FetchKey], deadline: float
    ) -> dict[FetchKey, SecretVersion | ZtrError]:
        wanted = unique(keys)
        if not wanted:
            return {}
        return self.retry.call(lambda: self.source.get_many(wanted), deadline)

    def load_all(self) -> tuple[tuple[refs.Binding, ...], dict[FetchKey, SecretVersion | ZtrError]]:
        """Every declared secret's outcome, errors included (``ztr check`` reports them all)."""
        deadline = self.clock() + self.timeout_seconds
        bindings = self.expand(deadline)
        return bindings, self.fetch((b.ref.fetch_key for b in bindings), deadline)

    def load(self) -> Snapshot:
        """Load once. Raises the first required secret's error (in declaration order)."""
        bindings, results = self.load_all()
        try:
            versions = resolve_outcomes(bindings, results)
        except SecretNotFoundError as exc:
            explained = self.source.explain_missing(exc)  # the hint costs calls: only now
            if explained is exc:
                raise
            raise explained from exc
        return Snapshot.build(bindings, versions)

    def refresh(self, previous: Snapshot, only: Iterable[str] | None = None) -> Refreshed:
        """Check unpinned secrets' versions (one DescribeSecret each); fetch only those that moved.

        ``only`` limits the check to these secret ids (an event named them). Each secret
        stands alone: one that fails keeps its last good value and is reported in
        ``failures`` while the others' changes are applied. An optional (or prefix-found)
        secret that is gone is gone: its variables disappear, which is a change like any other.
        """
        deadline = self.clock() + self.timeout_seconds
        wanted = None if only is None else set(only)
        bindings = previous.bindings + self._discovered(previous, wanted)
        by_secret: dict[str, list[FetchKey]] = {}
        versions: dict[FetchKey, SecretVersion | None] = dict(previous.versions)
        for binding in bindings[len(previous.bindings):]:
            versions.setdefault(binding.ref.fetch_key, None)
        for key in versions:
            if key.version is None and (wanted is None or key.secret_id in wanted):
                by_secret.setdefault(key.secret_id, []).append(key)
        vanishable = _optional_keys(bindings)
        failures: dict[str, ZtrError] = {}

        def lost(key: FetchKey, exc: ZtrError) -> None:
            if isinstance(exc, SecretNotFoundError) and key in vanishable:
                versions[key] = None
            else:
                failures.setdefault(key.secret_id, exc)

        moved: dict[FetchKey, str | None] = {}  # key -> the version id that carries its stage now
        for secret_id, keys in by_secret.items():
            try:
                info = self.retry.call(partial(self.source.describe, secret_id), deadline)
            except ZtrError as exc:
                for key in keys:
                    lost(key, exc)
                continue
            for key in keys:
                current = info.version_for(key.tracked_stage)
                known = versions[key]
                if current != (known.version_id if known else None):
                    moved[key] = current
        fetched: dict[FetchKey, SecretVersion] = {}
        for key, version_id in moved.items():
            # Fetch exactly the version DescribeSecret named (no race with a later move). A stage
            # that vanished is fetched by stage, so its error is the one a start-up load gives.
            exact = FetchKey(key.secret_id, None, version_id) if version_id else key
            try:
                fetched[key] = self.retry.call(partial(self.source.get_one, exact), deadline)
            except ZtrError as exc:
                lost(key, exc)
        # Every new value must fit its references (JSON keys, no collisions). One build checks
        # them all; only when that fails is each tried alone, so one bad value stays apart.
        try:
            Snapshot.build(bindings, {**versions, **fetched})
            versions.update(fetched)
        except ZtrError:
            for key, version in fetched.items():
                candidate = {**versions, key: version}
                try:
                    Snapshot.build(bindings, candidate)
                except ZtrError as exc:
                    lost(key, exc)
                    continue
                versions = candidate
        # A secret found by --prefix (at start or through an event) that is gone is forgotten:
        # no DescribeSecret of a name that does not exist on every later cycle. One an event
        # named that could not be read yet (denied, throttled) is kept and checked again, like
        # a declared secret, as long as few are: the listing that found it is not repeated.
        if self.prefix:
            origin = f"--prefix {self.prefix}"
            unread = [b.ref.fetch_key for b in bindings
                      if b.origin == origin and versions.get(b.ref.fetch_key) is None]
            retried = [key for key in unread if key.secret_id in failures]
            gone = set(unread) - set(retried[:MAX_UNREAD_DISCOVERED])
            bindings = tuple(b for b in bindings if b.ref.fetch_key not in gone)
            versions = {key: version for key, version in versions.items() if key not in gone}
        snapshot = Snapshot.build(bindings, versions)
        changed = sorted(
            name for name in set(snapshot.values) | set(previous.values)
            if snapshot.values.get(name) != previous.values.get(name)
        )
        if not changed and snapshot.ids == previous.ids and snapshot.bindings == previous.bindings:
            snapshot = previous
        return Refreshed(snapshot, changed, failures, frozenset(set(by_secret) - set(failures)))


    def _discovered(self, previous: Snapshot, wanted: set[str] | None) -> tuple[refs.Binding, ...]:
        """Secrets an event named that start with ``--prefix`` but were created after the
        load: they join like the prefix's others (the listing is not repeated)."""
        if not self.prefix or not wanted:
            return ()
        known = {key.secret_id for key in previous.versions}
        origin = f"--prefix {self.prefix}"
        return tuple(
            refs.Binding(refs.prefixed_env_name(name, self.prefix),
                         refs.SecretRef(name, optional=True), origin)
            for name in sorted(wanted - known)
            if name.startswith(self.prefix) and not name.startswith("arn:")
        )


def _optional_keys(bindings: Iterable[refs.Binding]) -> set[FetchKey]:
    required = {b.ref.fetch_key for b in bindings if not b.ref.optional}
    return {b.ref.fetch_key for b in bindings if b.ref.optional} - required


def resolve_outcomes(
    bindings: Sequence[refs.Binding], results: Mapping[FetchKey, SecretVersion | ZtrError]
) -> dict[FetchKey, SecretVersion | None]:
    """Keep versions; a missing optional secret becomes None; any other error raises."""
    optional = _optional_keys(bindings)
    versions: dict[FetchKey, SecretVersion | None] = {}
    for binding in bindings:
        key = binding.ref.fetch_key
        outcome = results.get(key)
        if isinstance(outcome, SecretNotFoundError) and key in optional:
            versions[key] = None
        elif isinstance(outcome, ZtrError):
            raise outcome
        elif outcome is not None:
            versions[key] = outcome
    return versions
