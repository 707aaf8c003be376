"""The retry policy: jittered exponential backoff for transient failures, bounded by a deadline."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import TransientError, UnavailableError

T = TypeVar("T")


class RetryPolicy:
    """Retries TransientError until ``deadline`` (monotonic seconds) or until ``stop`` is set.

    Collaborators are injectable so tests run without real time: ``clock`` and ``stop``
    (tenacity sleeps on the event, so a shutdown interrupts a backoff at once).
    """

    def __init__(
        self,
        *,
        initial_seconds: float = 0.2,
        max_backoff_seconds: float = 10.0,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> None:
        self.initial_seconds = initial_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.stop = stop or threading.Event()
        self.clock = clock
        self.on_retry = on_retry

    def call(self, fn: Callable[[], T], deadline: float) -> T:
        """Run ``fn``; raise its last TransientError as UnavailableError at the deadline."""
        try:
            return fn()  # the common case pays nothing for tenacity's import
        except TransientError as first:
            # Tenacity's first attempt is immediate: wait one jittered step before handing over.
            pause = random.uniform(0, 2 * self.initial_seconds)
            if self.on_retry:
                self.on_retry(2, first, pause)
            if self.clock() + pause >= deadline or self.stop.wait(pause):
                reason = "shutting down" if self.stop.is_set() else "deadline reached"
                raise UnavailableError(f"{first} (gave up: {reason})") from first
        return self._retry(fn, deadline)

    def _retry(self, fn: Callable[[], T], deadline: float) -> T:
        import tenacity

        clock, stop = self.clock, self.stop

        def should_stop(state: tenacity.RetryCallState) -> bool:
            # Give up now rather than sleep past the deadline; stop at once on shutdown.
            upcoming = state.upcoming_sleep or 0.0
            return stop.is_set() or clock() + upcoming >= deadline

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if self.on_retry and state.outcome is not None:
                exc = state.outcome.exception()
                if exc is not None:
                    self.on_retry(state.attempt_number + 2, exc, state.upcoming_sleep)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            wait=tenacity.wait_random_exponential(
                multiplier=self.initial_seconds, max=self.max_backoff_seconds
            ),
            stop=should_stop,
            sleep=tenacity.sleep_using_event(self.stop),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except TransientError as exc:
            reason = "shutting down" if self.stop.is_set() else "deadline reached"
            raise UnavailableError(f"{exc} (gave up: {reason})") from exc
