"""ztr's log records seen directly, in process (its logger does not propagate to pytest's)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        """The messages logged at ``level``."""
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def ztr_records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("ztr")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)
