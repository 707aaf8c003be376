"""The refresh loop: detect changes cheaply, keep the last good values on failure, debounce,
and hand one reaction per burst of changes to a callback."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ZtrError
from .loader import Loader, Snapshot

JITTER_LOW = 0.8  # each wait is interval x U(0.8, 1.0): never later than the interval
MAX_WAIT_SECONDS = 3600.0  # one wait call at most; Event.wait overflows on huge timeouts
FAILURE_BACKOFF_SECONDS = 5.0  # first retry after a failed cycle; doubles up to the interval


@dataclass
class Outcome:
    """One refresh cycle, as /refresh reports it: names and version ids, never values."""

    ok: bool
    changed: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    exit_code: int | None = None
    duration_seconds: float = 0.0


class _Request:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: Outcome | None = None


# on_update(snapshot, changed): outputs and metrics after every successful check (changed may
# be empty); raising ZtrError fails the cycle.
UpdateHook = Callable[[Snapshot, list[str]], None]
# on_react(snapshot, changed) -> None when done, or seconds after which to try again.
ReactHook = Callable[[Snapshot, list[str]], "float | None"]
# on_cycle(outcome): metrics and logs for every cycle.
CycleHook = Callable[[Outcome], None]


class Watcher:
    """Runs in its own thread; ``trigger`` (any thread) asks for a refresh now and waits for it."""

    def __init__(
        self,
        loader: Loader,
        snapshot: Snapshot,
        *,
        interval_seconds: float,
        max_stale_seconds: float,
        debounce_seconds: float,
        on_update: UpdateHook | None = None,
        on_react: ReactHook | None = None,
        on_cycle: CycleHook | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.loader = loader
        self.snapshot = snapshot
        self.interval = interval_seconds
        self.max_stale = max_stale_seconds
        self.debounce = debounce_seconds
        self.on_update = on_update or (lambda snap, names: None)
        self.on_react = on_react or (lambda snap, names: None)
        self.on_cycle = on_cycle or (lambda outcome: None)
        self.stop = stop or threading.Event()
        self.clock = clock
        self.rng = rng or random.Random()
        self.last_success = clock()
        self.failures = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._requests: deque[_Request] = deque()
        self._pending: list[str] = []  # changed names awaiting a reaction
        self._react_at: float | None = None
        self.alive = True

    @property
    def stale(self) -> bool:
        return self.clock() - self.last_success > self.max_stale

    def trigger(self, timeout: float) -> Outcome | None:
        """Refresh now (POST /refresh); returns the outcome, or None if it took too long."""
        request = _Request()
        with self._lock:
            self._requests.append(request)
        self._wake.set()
        request.done.wait(timeout)
        return request.outcome

    def _next_wait(self) -> float:
        if self.failures:
            backoff = FAILURE_BACKOFF_SECONDS * 2.0 ** min(self.failures - 1, 30)
            return min(self.interval, backoff) * self.rng.uniform(JITTER_LOW, 1.0)
        return self.interval * self.rng.uniform(JITTER_LOW, 1.0)

    def run(self) -> None:
        try:
            next_check = self.clock() + self._next_wait()
            while not self.stop.is_set():
                due = next_check if self._react_at is None else min(next_check, self._react_at)
                self._wake.wait(min(max(0.0, due - self.clock()), MAX_WAIT_SECONDS))
                self._wake.clear()
                if self.stop.is_set():
                    break
                with self._lock:
                    requests = list(self._requests)
                    self._requests.clear()
                now = self.clock()
                if requests or now >= next_check:
                    outcome = self.cycle()
                    for request in requests:
                        request.outcome = outcome
                        request.done.set()
                    next_check = self.clock() + self._next_wait()
                if self._react_at is not None and self.clock() >= self._react_at:
                    self._react()
        finally:
            self.alive = False
            with self._lock:
                for request in self._requests:
                    request.done.set()

    def cycle(self) -> Outcome:
        """One refresh: on failure keep the last good snapshot and count the error."""
        started = self.clock()
        try:
            snapshot, changed = self.loader.refresh(self.snapshot)
            # Every cycle, not only on a change: writers skip unchanged bytes, so an output that
            # was deleted or altered on disk heals here. A failed write keeps the previous
            # snapshot, so the next cycle sees the change again and retries it.
            self.on_update(snapshot, changed)
        except ZtrError as exc:
            self.failures += 1
            failed = Outcome(ok=False, error=str(exc), exit_code=exc.exit_code,
                             duration_seconds=self.clock() - started)
            self.on_cycle(failed)
            return failed
        self.failures = 0
        self.last_success = self.clock()
        self.snapshot = snapshot
        outcome = Outcome(ok=True, changed=changed, versions=snapshot.version_ids(),
                          duration_seconds=self.clock() - started)
        if changed:
            self._pending = sorted(set(self._pending) | set(changed))
            # The first change opens the debounce window; later ones do not extend it, but a
            # reaction postponed for longer (failed --verify, restart budget) is brought forward.
            window_end = self.clock() + self.debounce
            self._react_at = window_end if self._react_at is None else min(self._react_at, window_end)
        self.on_cycle(outcome)
        return outcome

    def _react(self) -> None:
        retry_after = self.on_react(self.snapshot, list(self._pending))
        if retry_after is None:
            self._pending, self._react_at = [], None
        else:
            self._react_at = self.clock() + retry_after

    def shutdown(self) -> None:
        self.stop.set()
        self._wake.set()


class RestartBudget:
    """Anti-storm policy: a minimum child uptime and at most ``max_per_hour`` restarts."""

    WINDOW_SECONDS = 3600.0

    def __init__(self, *, min_uptime_seconds: float, max_per_hour: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_uptime = min_uptime_seconds
        self.max_per_hour = max_per_hour
        self.clock = clock
        self._history: deque[float] = deque()

    def wait_needed(self, uptime_seconds: float) -> float:
        """Seconds until a restart is allowed (0 when it is allowed now)."""
        now = self.clock()
        while self._history and now - self._history[0] >= self.WINDOW_SECONDS:
            self._history.popleft()
        waits = [max(0.0, self.min_uptime - uptime_seconds)]
        if self.max_per_hour and len(self._history) >= self.max_per_hour:
            waits.append(self._history[0] + self.WINDOW_SECONDS - now)
        return max(waits)

    def record(self) -> None:
        self._history.append(self.clock())
