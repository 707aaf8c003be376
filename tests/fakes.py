"""Shared test fakes: a Secrets Manager that keeps versions and staging labels over time, and a
clock that moves only when a test moves it."""

from __future__ import annotations

import difflib
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sidecar.errors import (
    DeletedSecretError,
    MissingSecretError,
    SecretNotFoundError,
    TransientError,
    ZtrError,
)
from sidecar.refs import FetchKey
from sidecar.source import SecretInfo, SecretVersion, plan_fetch

__all__ = ["Call", "ClockEvent", "FakeClock", "FakeSecretsManager"]

CURRENT, PREVIOUS, PENDING = "AWSCURRENT", "AWSPREVIOUS", "AWSPENDING"
ACCOUNT = "123456789012"
EPOCH = 1_700_000_000.0  # the wall-clock time a FakeClock's 0.0 stands for, for SecretInfo dates


class FakeClock:
    """Monotonic seconds that move only by ``advance``; pass it as ``clock=``."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (never back); returns the new time."""
        if seconds < 0:
            raise ValueError("a monotonic clock never goes back")
        with self._lock:
            self._now += seconds
            return self._now

    def advance_to(self, when: float) -> float:
        """Move forward to ``when`` (a time not before now)."""
        return self.advance(when - self())

    def event(self) -> ClockEvent:
        """A stop event whose timed waits advance this clock instead of sleeping (for
        RetryPolicy's ``stop=``: its backoffs then cost no real time)."""
        return ClockEvent(self)


class ClockEvent(threading.Event):
    """``wait(timeout)`` returns at once: True if set, else it advances the clock by ``timeout``
    and returns False, as if the time had passed with nobody setting it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        if timeout is None:
            raise AssertionError("an unbounded wait on a fake clock would never return")
        self.waits.append(timeout)
        self.clock.advance(max(0.0, timeout))
        return False


@dataclass(frozen=True)
class Call:
    """One API call the fake answered (or refused): the operation and the secret ids it named."""

    operation: str
    secret_ids: tuple[str, ...]


@dataclass
class _Version:
    version_id: str
    value: str | bytes


@dataclass
class _Secret:
    name: str
    arn: str
    versions: dict[str, _Version] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # staging label -> version id
    deleted: bool = False
    kms_key_id: str | None = None
    rotation_enabled: bool = False
    last_changed: float = 0.0


@dataclass
class _Fault:
    error: BaseException
    times: int | None  # None: until cleared


class FakeSecretsManager:
    """A ``SecretSource`` with Secrets Manager's behaviour over time.

    Arrange with ``create``, ``put``, ``stage_pending``, ``promote``, ``delete``, ``restore``;
    inject failures with ``fail`` (per secret) and ``fail_call`` (per operation); read what was
    asked with ``calls`` (a Counter by operation) and ``count``. Labels move like the real
    service: a new AWSCURRENT version takes AWSCURRENT, the old one gets AWSPREVIOUS. Errors are
    the ones ``SecretsManagerSource.translate`` gives for the same answers.
    """

    def __init__(self, *, region: str = "us-east-1", clock: FakeClock | None = None,
                 endpoint: str = "https://secretsmanager.fake") -> None:
        self.region = region
        self._endpoint = endpoint
        self.clock = clock or FakeClock()
        self.calls: Counter[str] = Counter()
        self.log: list[Call] = []
        self._secrets: dict[str, _Secret] = {}
        self._secret_faults: dict[str, _Fault] = {}
        self._call_faults: dict[str, _Fault] = {}
        self._serial = 0
        self._lock = threading.RLock()

    @property
    def endpoint(self) -> str:
        return self._endpoint

    # -- arranging (not counted as calls) -------------------------------------------------

    def create(self, name: str, value: str | bytes, *, kms_key_id: str | None = None,
               rotation_enabled: bool = False) -> str:
        """CreateSecret: the first version, at AWSCURRENT; returns its version id."""
        with self._lock:
            if name in self._secrets:
                raise ValueError(f"{name} exists")
            self._serial += 1
            suffix = f"{self._serial:06d}"[-6:]
            self._secrets[name] = _Secret(
                name, f"arn:aws:secretsmanager:{self.region}:{ACCOUNT}:secret:{name}-{suffix}",
                kms_key_id=kms_key_id, rotation_enabled=rotation_enabled)
            return self.put(name, value)

    def put(self, name: str, value: str | bytes, stages: Sequence[str] = (CURRENT,)) -> str:
        """PutSecretValue: a new version carrying ``stages``; returns its version id."""
        with self._lock:
            secret = self._secret(name)
            self._serial += 1
            version_id = str(uuid.UUID(int=self._serial))
            secret.versions[version_id] = _Version(version_id, value)
            for label in stages:
                self._move(secret, label, version_id)
            return version_id

    def stage_pending(self, name: str, value: str | bytes) -> str:
        """A rotation's createSecret step: a new version at AWSPENDING only."""
        return self.put(name, value, stages=(PENDING,))

    def promote(self, name: str, version_id: str) -> None:
        """A rotation's finishSecret step: AWSCURRENT moves to ``version_id`` (the old current
        gets AWSPREVIOUS) and AWSPENDING comes off it."""
        with self._lock:
            secret = self._secret(name)
            if version_id not in secret.versions:
                raise ValueError(f"{name} has no version {version_id}")
            self._move(secret, CURRENT, version_id)
            if secret.labels.get(PENDING) == version_id:
                del secret.labels[PENDING]

    def move_label(self, name: str, label: str, version_id: str) -> None:
        """UpdateSecretVersionStage for any label (AWSCURRENT moves AWSPREVIOUS with it)."""
        with self._lock:
            self._move(self._secret(name), label, version_id)

    def delete(self, name: str, *, force: bool = False) -> None:
        """DeleteSecret: scheduled for deletion (restorable), or gone at once with ``force``."""
        with self._lock:
            secret = self._secret(name)
            if force:
                del self._secrets[secret.name]
            else:
                secret.deleted = True

    def restore(self, name: str) -> None:
        """RestoreSecret: undo a scheduled deletion."""
        with self._lock:
            self._secret(name).deleted = False

    def stages(self, name: str) -> dict[str, str]:
        """Staging label -> version id, as the fake holds them now."""
        with self._lock:
            return dict(self._secret(name).labels)

    def fail(self, secret_id: str, error: BaseException, *, times: int | None = None) -> None:
        """Every call naming ``secret_id`` fails with ``error`` (``times`` calls, else until
        ``heal``). In GetMany the error is that secret's result (a TransientError still raises,
        as the real source does); any other call raises it."""
        with self._lock:
            self._secret_faults[secret_id] = _Fault(error, times)

    def fail_call(self, operation: str, error: BaseException, *, times: int | None = 1) -> None:
        """The next ``times`` calls of ``operation`` (ListSecrets, GetSecretValue,
        BatchGetSecretValue, DescribeSecret) raise ``error`` whatever they name."""
        with self._lock:
            self._call_faults[operation] = _Fault(error, times)

    def heal(self, secret_id: str | None = None) -> None:
        """Clear the injected failures of ``secret_id``, else all of them."""
        with self._lock:
            if secret_id is None:
                self._secret_faults.clear()
                self._call_faults.clear()
            else:
                self._secret_faults.pop(secret_id, None)

    def count(self, operation: str, secret_id: str | None = None) -> int:
        """Calls of ``operation`` so far (that named ``secret_id``, when given)."""
        with self._lock:
            return sum(1 for call in self.log if call.operation == operation
                       and (secret_id is None or secret_id in call.secret_ids))

    # -- SecretSource ---------------------------------------------------------------------

    def list_names(self, prefix: str, limit: int | None = None) -> list[str]:
        with self._lock:
            self._called("ListSecrets", (prefix + "*",))
            # ListSecrets leaves out secrets scheduled for deletion unless asked.
            names = sorted(name for name, s in self._secrets.items()
                           if name.startswith(prefix) and not s.deleted)
            return names if limit is None else names[:limit]

    def get_one(self, key: FetchKey) -> SecretVersion:
        with self._lock:
            self._called("GetSecretValue", (key.secret_id,))
            self._secret_fault(key.secret_id)
            return self._value(key)

    def get_many(self, keys: Sequence[FetchKey]) -> dict[FetchKey, SecretVersion | ZtrError]:
        """Calls as the real source makes them (``plan_fetch``): one BatchGetSecretValue per
        chunk of keys at AWSCURRENT, one GetSecretValue per pinned or lone key."""
        with self._lock:
            chunks, single = plan_fetch(keys)
            results: dict[FetchKey, SecretVersion | ZtrError] = {}
            for chunk in chunks:
                self._called("BatchGetSecretValue", tuple(key.secret_id for key in chunk))
                for key in chunk:
                    results[key] = self._outcome(key)
            for key in single:
                self._called("GetSecretValue", (key.secret_id,))
                results[key] = self._outcome(key)
            for outcome in results.values():
                if isinstance(outcome, TransientError):
                    raise outcome
            return results

    def describe(self, secret_id: str) -> SecretInfo:
        with self._lock:
            self._called("DescribeSecret", (secret_id,))
            self._secret_fault(secret_id)
            secret = self._find(secret_id)
            stages: dict[str, list[str]] = {}
            for label, version_id in secret.labels.items():
                stages.setdefault(version_id, []).append(label)
            return SecretInfo(
                name=secret.name, arn=secret.arn,
                stages={version: tuple(sorted(labels)) for version, labels in stages.items()},
                kms_key_id=secret.kms_key_id, rotation_enabled=secret.rotation_enabled,
                last_changed=datetime.fromtimestamp(EPOCH + secret.last_changed, tz=UTC))

    def explain_missing(self, error: SecretNotFoundError) -> SecretNotFoundError:
        if not isinstance(error, MissingSecretError):
            return error
        with self._lock:
            names = [name for name, s in self._secrets.items() if not s.deleted]
        close = difflib.get_close_matches(error.secret_id, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ": check the name"
        return SecretNotFoundError(error.message + hint)

    # -- internals ------------------------------------------------------------------------

    def _secret(self, name: str) -> _Secret:
        try:
            return self._secrets[name]
        except KeyError:
            raise ValueError(f"the fake holds no secret {name!r}") from None

    def _move(self, secret: _Secret, label: str, version_id: str) -> None:
        old = secret.labels.get(label)
        if label == CURRENT and old is not None and old != version_id:
            secret.labels[PREVIOUS] = old
        secret.labels[label] = version_id
        secret.last_changed = self.clock()

    def _called(self, operation: str, secret_ids: tuple[str, ...]) -> None:
        self.calls[operation] += 1
        self.log.append(Call(operation, secret_ids))
        fault = self._call_faults.get(operation)
        if fault is not None:
            self._spend(self._call_faults, operation, fault)
            raise fault.error

    def _secret_fault(self, secret_id: str) -> None:
        fault = self._secret_faults.get(secret_id)
        if fault is not None:
            self._spend(self._secret_faults, secret_id, fault)
            raise fault.error

    @staticmethod
    def _spend(faults: dict[str, _Fault], key: str, fault: _Fault) -> None:
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del faults[key]

    def _outcome(self, key: FetchKey) -> SecretVersion | ZtrError:
        try:
            self._secret_fault(key.secret_id)
            return self._value(key)
        except ZtrError as exc:
            return exc

    def _find(self, secret_id: str) -> _Secret:
        for secret in self._secrets.values():
            if secret_id in (secret.name, secret.arn):
                if secret.deleted:
                    raise DeletedSecretError(f"{secret_id}: scheduled for deletion")
                return secret
        raise MissingSecretError(secret_id, f"{secret_id}: not found in {self.region}")

    def _value(self, key: FetchKey) -> SecretVersion:
        secret = self._find(key.secret_id)
        version_id = key.version or secret.labels.get(key.tracked_stage)
        if version_id is None or version_id not in secret.versions:
            wanted = key.version or key.tracked_stage
            raise MissingSecretError(key.secret_id, f"{key.secret_id}: no version at {wanted}")
        version = secret.versions[version_id]
        return SecretVersion(secret_id=key.secret_id, name=secret.name, arn=secret.arn,
                             version_id=version_id, value=version.value)
