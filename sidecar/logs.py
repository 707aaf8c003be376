"""Logging: JSON lines (or text) on stderr, with a redaction filter as a second line of defence."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import IO, Any

LOGGER_NAME = "ztr"
REDACTED = "***"
_MIN_REDACT_LENGTH = 4  # shorter values would blank out ordinary words in every log line

log = logging.getLogger(LOGGER_NAME)


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _plain(value: Any) -> Any:
    """A field as logs show it. A record (a NamedTuple) shows its repr, as a dataclass would,
    never its items one by one: SecretVersion's and Snapshot's reprs leave the values out, and
    JSON would otherwise write every item of a tuple."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, Mapping):  # a MappingProxyType too: redaction only descends into dicts
        return {key: _plain(item) for key, item in value.items()}
    return value


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return _plain(fields) if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        line = f"{_timestamp(record)} {record.levelname.lower():<7} {record.getMessage()}"
        return f"{line} {extras}" if extras else line


class Redactor(logging.Filter):
    """Replaces every known secret value in a record's message and fields by ``***``."""

    def __init__(self) -> None:
        super().__init__()
        self._values: list[str] = []
        # The values in use and the ones they replaced (a log line about a rotation may still
        # quote the old one); older generations are dropped, so rotations cannot grow the list.
        self._generations: deque[set[str]] = deque(maxlen=2)

    def update(self, values: Iterable[str]) -> None:
        """The values now in use (all of them: ``update`` replaces the older generation)."""
        self._generations.append({v for v in values if len(v) >= _MIN_REDACT_LENGTH})
        merged = set().union(*self._generations)
        # Longest first, so a value that contains another is replaced whole.
        self._values = sorted(merged, key=len, reverse=True)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._values:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, (list, tuple)):
            return [self._scrub(item) for item in value]
        if isinstance(value, dict):
            return {key: self._scrub(item) for key, item in value.items()}
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if self._values:
            record.msg = self._scrub(record.getMessage())
            record.args = None
            fields = _fields(record)
            if fields:
                record.fields = self._scrub(fields)
        return True


def setup(fmt: str = "json", level: str = "info", stream: IO[str] | None = None) -> Redactor:
    """Configure the ``ztr`` logger once; returns the redactor to feed loaded values to."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    redactor = Redactor()
    handler.addFilter(redactor)
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
    return redactor


def event(level: int, msg: str, **fields: Any) -> None:
    """Log ``msg`` with structured fields (names, version ids, durations, codes; never values)."""
    log.log(level, msg, extra={"fields": fields})


def info(msg: str, **fields: Any) -> None:
    event(logging.INFO, msg, **fields)


def warning(msg: str, **fields: Any) -> None:
    event(logging.WARNING, msg, **fields)


def error(msg: str, **fields: Any) -> None:
    event(logging.ERROR, msg, **fields)


def debug(msg: str, **fields: Any) -> None:
    event(logging.DEBUG, msg, **fields)
