"""The error tree: every failure ztr reports carries its documented exit code."""

from __future__ import annotations

# sysexits.h values, so scripts and orchestrator logs read the same as other Unix tools.
EXIT_OK = 0
EXIT_USAGE = 64
EXIT_DATAERR = 65
EXIT_NOINPUT = 66
EXIT_UNAVAILABLE = 69
EXIT_CANTCREAT = 73
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class ZtrError(Exception):
    """Base class: a one-line message for people and an exit code for machines.

    Messages name secrets and variables, never values.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ZtrError):
    """A bad flag, variable, reference, TOML file or name collision."""

    exit_code = EXIT_USAGE


class SecretValueError(ZtrError):
    """A secret's value does not fit its reference (not JSON, key missing, not UTF-8)."""

    exit_code = EXIT_DATAERR


class SecretNotFoundError(ZtrError):
    """A required secret does not exist, or is scheduled for deletion."""

    exit_code = EXIT_NOINPUT


class UnavailableError(ZtrError):
    """Secrets Manager could not be reached, or kept throttling, until the deadline."""

    exit_code = EXIT_UNAVAILABLE


class OutputError(ZtrError):
    """An output file or directory cannot be written (including the tmpfs refusal)."""

    exit_code = EXIT_CANTCREAT


class AccessDeniedError(ZtrError):
    """IAM or KMS refused access to a secret."""

    exit_code = EXIT_NOPERM


class TransientError(UnavailableError):
    """One failed attempt that is worth retrying (throttling, 5xx, network)."""

    def __init__(self, message: str, *, throttled: bool = False) -> None:
        super().__init__(message)
        self.throttled = throttled
