"""RetryPolicy: transient failures are retried with jittered backoff until a deadline or a stop."""

from __future__ import annotations

import threading
import time

import pytest

from sidecar.errors import AccessDeniedError, SecretNotFoundError, TransientError, UnavailableError
from sidecar.retry import RetryPolicy


class Flaky:
    """Fails with ``error`` for the first ``failures`` calls, then returns "ok"."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or TransientError("prod/db: throttled")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def fast(**kwargs: object) -> RetryPolicy:
    return RetryPolicy(initial_seconds=0.001, max_backoff_seconds=0.01, **kwargs)  # type: ignore[arg-type]


def test_retry_success_first_time_calls_once() -> None:
    fn = Flaky(0)
    assert fast().call(fn, time.monotonic() + 5) == "ok"
    assert fn.calls == 1


@pytest.mark.parametrize("failures", [1, 2, 5])
def test_retry_transient_failures_then_success_returns(failures: int) -> None:
    attempts: list[int] = []
    fn = Flaky(failures)
    policy = fast(on_retry=lambda attempt, exc, delay: attempts.append(attempt))
    assert policy.call(fn, time.monotonic() + 5) == "ok"
    assert fn.calls == failures + 1
    assert attempts == list(range(2, failures + 2))  # the attempt about to be made


@pytest.mark.parametrize(
    "error", [AccessDeniedError("denied"), SecretNotFoundError("gone"), ValueError("bug")]
)
def test_retry_non_transient_error_raises_at_once(error: Exception) -> None:
    fn = Flaky(1, error)
    with pytest.raises(type(error)):
        fast().call(fn, time.monotonic() + 5)
    assert fn.calls == 1


def test_retry_deadline_reached_raises_unavailable_chained() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every look at the clock costs a second
        return now[0]

    fn = Flaky(1000)
    with pytest.raises(UnavailableError) as caught:
        fast(clock=clock).call(fn, deadline=5.0)
    assert "deadline reached" in str(caught.value)
    assert "prod/db: throttled" in str(caught.value)
    assert isinstance(caught.value.__cause__, TransientError)
    assert caught.value.exit_code == 69
    assert fn.calls < 10


def test_retry_real_deadline_bounds_the_time_spent() -> None:
    fn = Flaky(10**6)
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        RetryPolicy(initial_seconds=0.01, max_backoff_seconds=0.05).call(fn, started + 0.3)
    assert time.monotonic() - started < 1.0
    assert fn.calls > 2


def test_retry_stop_event_interrupts_a_backoff_promptly() -> None:
    stop = threading.Event()
    fn = Flaky(10**6)
    policy = RetryPolicy(initial_seconds=5.0, max_backoff_seconds=30.0, stop=stop)
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="shutting down"):
        policy.call(fn, started + 60)
    assert time.monotonic() - started < 3.0


def test_retry_backoff_delays_are_jittered_and_bounded() -> None:
    delays: list[float] = []
    policy = RetryPolicy(initial_seconds=0.001, max_backoff_seconds=0.004,
                         on_retry=lambda attempt, exc, delay: delays.append(delay))
    policy.call(Flaky(12), time.monotonic() + 5)
    assert len(delays) == 12
    assert all(0 <= d <= 0.004 for d in delays)
    assert len(set(delays)) > 1  # jittered, not a fixed step
