"""The secret reference grammar and environment-variable naming rules (pure functions)."""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import ConfigError

# Secrets Manager allows these characters in names; ARNs add a partition, region and account.
_NAME_RE = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
_ARN_RE = re.compile(
    r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}"
)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE_ENV_CHARS = re.compile(r"[^A-Z0-9_]")

URI_SCHEME = "sm://"
ALL_KEYS = "*"
DEFAULT_STAGE = "AWSCURRENT"
_OPTION_NAMES = ("optional", "stage", "version", "encoding")


# The records below are NamedTuples, not dataclasses: on Python 3.11 each frozen dataclass
# compiles its generated methods one by one at import (about 1 ms a class here, 23 of the 35 ms
# that ztr's modules took to import on the start-up path; see bench/RESULTS.md).
class FetchKey(NamedTuple):
    """Identity of one API request: references that share it share one fetch."""

    secret_id: str
    stage: str | None = None
    version: str | None = None

    @property
    def tracked_stage(self) -> str:
        """The staging label whose moves refresh follows."""
        return self.stage or DEFAULT_STAGE

    @property
    def at_current(self) -> bool:
        """Neither a stage nor a version is pinned: BatchGetSecretValue can fetch it."""
        return self.stage is None and self.version is None


class SecretRef(NamedTuple):
    """What to fetch and which part of it to use: ``SECRET_ID[#KEY][?OPTION[&OPTION...]]``."""

    secret_id: str
    key: str | None = None
    optional: bool = False
    stage: str | None = None
    version: str | None = None
    encoding: str | None = None

    @property
    def fetch_key(self) -> FetchKey:
        return FetchKey(self.secret_id, self.stage, self.version)


class Binding(NamedTuple):
    """One declared environment variable (or, for ``#*``, a name prefix) and its reference."""

    name: str
    ref: SecretRef
    origin: str

    @property
    def is_wildcard(self) -> bool:
        return self.ref.key == ALL_KEYS


def to_env_name(text: str) -> str:
    """Turn a secret name or JSON key into an environment variable name (upper-snake).

    Every character outside ``[A-Z0-9_]`` becomes ``_``; a leading digit gets a ``_`` in front.
    """
    name = _UNSAFE_ENV_CHARS.sub("_", text.upper())
    if name[:1].isdigit():
        name = "_" + name
    return name


def prefixed_env_name(secret_name: str, prefix: str) -> str:
    """The variable for a secret found under ``--prefix``: the rest of its name, upper-snake.

    ``prod/app/`` + ``database-password`` -> ``DATABASE_PASSWORD``; separators left at the
    start of the rest are dropped (``prod/app`` + ``/db`` -> ``DB``). A secret named exactly
    the prefix is named after its last path segment.
    """
    rest = secret_name[len(prefix):] if secret_name.startswith(prefix) else secret_name
    rest = rest.lstrip("/_+=.@-") or secret_name.rstrip("/").rpartition("/")[2]
    return to_env_name(rest)


def is_valid_env_name(name: str) -> bool:
    return _ENV_NAME_RE.fullmatch(name) is not None


def is_valid_secret_id(secret_id: str) -> bool:
    return bool(_NAME_RE.fullmatch(secret_id) or _ARN_RE.fullmatch(secret_id))


def parse_ref(text: str, where: str) -> SecretRef:
    """Parse a reference; ``where`` names its origin for the error message.

    Raises ConfigError for every malformed shape.
    """
    body = text[len(URI_SCHEME) :] if text.startswith(URI_SCHEME) else text
    body, _, query = body.partition("?")
    secret_id, has_key, key = body.partition("#")
    if not secret_id:
        raise ConfigError(f"{where}: empty secret id in reference {text!r}")
    if not is_valid_secret_id(secret_id):
        raise ConfigError(
            f"{where}: {secret_id!r} is not a valid secret name or ARN "
            "(names use A-Z a-z 0-9 / _ + = . @ -)"
        )
    if has_key and not key:
        raise ConfigError(f"{where}: empty JSON key after '#' in {text!r}")
    options: dict[str, str] = {}
    for option in query.split("&") if query else ():
        opt_name, sep, value = option.partition("=")
        has_value = bool(sep)
        if opt_name not in _OPTION_NAMES:
            raise ConfigError(
                f"{where}: unknown option {opt_name!r} in {text!r} "
                f"(known: {', '.join(_OPTION_NAMES)})"
            )
        if opt_name in options:
            raise ConfigError(f"{where}: option {opt_name!r} given twice in {text!r}")
        if (opt_name == "optional") == has_value or (has_value and not value):
            hint = "takes no value" if opt_name == "optional" else "needs a value"
            raise ConfigError(f"{where}: option {opt_name!r} {hint} in {text!r}")
        options[opt_name] = value
    if "stage" in options and "version" in options:
        raise ConfigError(f"{where}: use either stage= or version=, not both, in {text!r}")
    version = options.get("version")
    if version is not None and not 32 <= len(version) <= 64:
        raise ConfigError(
            f"{where}: version={version!r} is not a version id (32 to 64 characters, "
            "as VersionIdsToStages shows them)"
        )
    encoding = options.get("encoding")
    if encoding not in (None, "base64"):
        raise ConfigError(f"{where}: encoding must be 'base64', not {encoding!r}")
    return SecretRef(
        secret_id=secret_id,
        key=key or None,
        optional="optional" in options,
        stage=options.get("stage"),
        version=version,
        encoding=encoding,
    )


def parse_binding(entry: str, origin: str) -> Binding:
    """Parse ``NAME=REF``. For ``#*`` references NAME is a prefix and may be empty."""
    name, has_eq, ref_text = entry.strip().partition("=")
    name = name.strip()
    if not has_eq or not ref_text.strip():
        raise ConfigError(f"{origin}: expected NAME=REF, got {entry.strip()!r}")
    # "environment variable DB" already names the variable; "--secret" does not.
    where = origin if origin.endswith(f" {name}") else f"{origin} {name}"
    ref = parse_ref(ref_text.strip(), where)
    if ref.key == ALL_KEYS:
        if name and not is_valid_env_name(name):
            raise ConfigError(f"{origin}: {name!r} is not a valid variable name prefix")
    elif not is_valid_env_name(name):
        raise ConfigError(
            f"{origin}: {name!r} is not a valid environment variable name "
            "(letters, digits and _, not starting with a digit)"
        )
    return Binding(name=name, ref=ref, origin=origin)


def split_entries(text: str) -> list[str]:
    """Split a ZTR_SECRETS value: entries separated by newlines or commas, blanks ignored."""
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


def expand_key_name(prefix: str, key: str) -> str:
    """The variable name for one key of a ``#*`` reference."""
    return to_env_name(prefix + key)
