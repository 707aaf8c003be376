"""The error tree: every failure ztr reports carries its documented exit code and a short label.

Messages name secrets and variables, never values. ``check`` shows ``label`` in its table, so a
result is decided by the error's type, never by searching its text.
"""

from __future__ import annotations

# sysexits.h values, so scripts and orchestrator logs read the same as other Unix tools.
EXIT_OK = 0
EXIT_USAGE = 64
EXIT_DATAERR = 65
EXIT_NOINPUT = 66
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_CANTCREAT = 73
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class ZtrError(Exception):
    """Base class: a one-line message for people and an exit code for machines."""

    exit_code = 1
    label = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ZtrError):
    """A bad flag, variable, reference, TOML file or name collision."""

    exit_code = EXIT_USAGE
    label = "bad configuration"


class SecretValueError(ZtrError):
    """A secret's value does not fit its reference or its destination."""

    exit_code = EXIT_DATAERR
    label = "bad value"


class NotUtf8Error(SecretValueError):
    """A binary secret that is not UTF-8 text, read without ``?encoding=base64``."""

    label = "not UTF-8"


class NotJsonError(SecretValueError):
    """``#KEY`` on a value that is not a JSON object."""

    label = "not JSON"


class JsonKeyError(SecretValueError):
    """``#KEY`` names a key the JSON object does not have."""

    label = "bad JSON key"


class SecretNotFoundError(ZtrError):
    """A required secret does not exist."""

    exit_code = EXIT_NOINPUT
    label = "not found"


class MissingSecretError(SecretNotFoundError):
    """Secrets Manager answered ResourceNotFoundException for ``secret_id``: the one case where
    a "did you mean" hint is worth its ListSecrets calls."""

    def __init__(self, secret_id: str, message: str) -> None:
        super().__init__(message)
        self.secret_id = secret_id


class DeletedSecretError(SecretNotFoundError):
    """The secret is scheduled for deletion."""

    label = "scheduled for deletion"


class UnavailableError(ZtrError):
    """Secrets Manager (or SQS/SNS) could not be reached, or kept throttling, until the deadline."""

    exit_code = EXIT_UNAVAILABLE
    label = "unreachable"


class TransientError(UnavailableError):
    """One failed attempt that is worth retrying (throttling, 5xx, network)."""

    def __init__(self, message: str, *, throttled: bool = False) -> None:
        super().__init__(message)
        self.throttled = throttled


class OutputError(ZtrError):
    """An output file or directory cannot be written (including the tmpfs refusal)."""

    exit_code = EXIT_CANTCREAT
    label = "cannot write"


class AccessDeniedError(ZtrError):
    """IAM refused access to a secret, or there are no credentials."""

    exit_code = EXIT_NOPERM
    label = "access denied"


class KmsDeniedError(AccessDeniedError):
    """KMS refused to decrypt a secret."""

    label = "KMS denied"


class SpawnError(ZtrError):
    """The app could not be started: 127 (not found) or 126 (not executable)."""

    label = "cannot start"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StartupInterruptedError(ZtrError):
    """SIGTERM or SIGINT arrived before the app started or the outputs were written: nothing
    was started or written, and ztr exits 128+N."""

    label = "interrupted"

    def __init__(self, signum: int, name: str) -> None:
        super().__init__("Stopped during start-up: nothing was started")
        self.signal_name = name
        self.signum = signum
        self.exit_code = 128 + signum


class InternalError(ZtrError):
    """A bug in ztr (an exception no part of ztr expected); the log line names its type and place."""

    exit_code = EXIT_SOFTWARE
    label = "internal error"
