"""The refresh loop: detect changes cheaply, keep the last good values on failure, back off, track
staleness per secret, and hand changes to the reactor. It never dies of a failed cycle."""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import EXIT_SOFTWARE, ZtrError
from .loader import Loader, Refreshed, Snapshot
from .reactor import Reactor

JITTER_LOW = 0.8  # each wait is interval x U(0.8, 1.0): never later than the interval
MAX_WAIT_SECONDS = 3600.0  # one wait call at most; Event.wait overflows on huge timeouts
FAILURE_BACKOFF_SECONDS = 5.0  # first retry after a failed cycle; doubles up to the interval
MAX_HINTED = 10_000  # secret ids queued by events between two cycles; more means "check all"
# Event-driven checks come at most this often, and after one that failed no sooner than the first
# failure backoff: a stream of events about a secret that cannot be read costs a call every 5 s,
# not one per event. Events arriving meanwhile are pooled into the next check.
HINT_SPACING_SECONDS = 1.0


@dataclass
class Outcome:
    """One refresh cycle, as /refresh reports it: names and version ids, never values."""

    ok: bool
    changed: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    exit_code: int | None = None
    failed: dict[str, str] = field(default_factory=dict)  # secret id -> error, per secret
    duration_seconds: float = 0.0


class _Request:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: Outcome | None = None


# on_update(snapshot, changed): outputs and metrics after every successful check (changed may
# be empty); raising fails the cycle, and the previous snapshot is kept.
UpdateHook = Callable[[Snapshot, list[str]], None]
# on_cycle(outcome): metrics and logs for every cycle.
CycleHook = Callable[[Outcome], None]


def describe_error(exc: BaseException) -> tuple[str, int]:
    """A loggable message and exit code. Only ztr's own messages are shown: another
    exception's text may quote a value (a JSON parser error, a repr)."""
    if isinstance(exc, ZtrError):
        return str(exc), exc.exit_code
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {frame[0].filename.rsplit('/', 1)[-1]}:{frame[0].lineno}" if frame else ""
    return f"internal error: {type(exc).__name__}{where}", EXIT_SOFTWARE


class Watcher:
    """Runs in its own thread; ``trigger`` (any thread) asks for a refresh now and waits for it;
    ``hint`` (any thread) asks for a check of some secrets now without waiting."""

    def __init__(
        self,
        loader: Loader,
        snapshot: Snapshot,
        *,
        interval_seconds: float,
        max_stale_seconds: float,
        reactor: Reactor | None = None,
        on_update: UpdateHook | None = None,
        on_cycle: CycleHook | None = None,
        on_exit: Callable[[], None] | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.loader = loader
        self.snapshot = snapshot
        self.interval = interval_seconds
        self.max_stale = max_stale_seconds
        self.reactor = reactor
        self.on_update = on_update or (lambda snap, names: None)
        self.on_cycle = on_cycle or (lambda outcome: None)
        self.on_exit = on_exit or (lambda: None)
        self.stop = stop or threading.Event()
        self.clock = clock
        self.rng = rng or random.Random()
        now = clock()
        # Staleness is per secret: one that keeps failing makes the process stale while the
        # others go on being refreshed.
        self.last_ok: dict[str, float] = {key.secret_id: now for key in snapshot.versions
                                          if key.version is None}
        self.failures = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._requests: deque[_Request] = deque()
        self._hinted: set[str] | None = set()  # None: more than MAX_HINTED, check everything
        self._hints_due = 0.0  # no hinted check before this time
        self.alive = True

    @property
    def stale(self) -> bool:
        now = self.clock()
        return any(now - when > self.max_stale for when in self.last_ok.values())

    def stale_secrets(self) -> list[str]:
        now = self.clock()
        return sorted(s for s, when in self.last_ok.items() if now - when > self.max_stale)

    def trigger(self, timeout: float) -> Outcome | None:
        """Refresh now (POST /refresh); returns the outcome, or None if it took too long."""
        request = _Request()
        with self._lock:
            self._requests.append(request)
        self._wake.set()
        request.done.wait(timeout)
        return request.outcome

    def hint(self, secret_ids: Iterable[str]) -> None:
        """Check these secrets at the next turn of the loop (an event named them)."""
        with self._lock:
            if self._hinted is not None:
                self._hinted.update(secret_ids)
                if len(self._hinted) > MAX_HINTED:
                    self._hinted = None
        self._wake.set()

    def _next_wait(self) -> float:
        if self.failures:
            backoff = FAILURE_BACKOFF_SECONDS * 2.0 ** min(self.failures - 1, 30)
            return min(self.interval, backoff) * self.rng.uniform(JITTER_LOW, 1.0)
        return self.interval * self.rng.uniform(JITTER_LOW, 1.0)

    def run(self) -> None:
        try:
            next_check = self.clock() + self._next_wait()
            while not self.stop.is_set():
                due = next_check
                with self._lock:
                    if self._hinted:
                        due = min(due, self._hints_due)
                if self.reactor is not None and self.reactor.due_at is not None:
                    due = min(due, self.reactor.due_at)
                self._wake.wait(min(max(0.0, due - self.clock()), MAX_WAIT_SECONDS))
                self._wake.clear()
                if self.stop.is_set():
                    break
                if self._turn(next_check):
                    next_check = self.clock() + self._next_wait()
        finally:
            self.alive = False
            with self._lock:
                for request in self._requests:
                    request.done.set()
            self.on_exit()

    def _turn(self, next_check: float) -> bool:
        """One wake-up: a scheduled or requested cycle, or a hinted one, then any due reaction.
        Returns whether a full cycle ran. Nothing raised here may end the loop."""
        with self._lock:
            requests = list(self._requests)
            self._requests.clear()
            hinted, self._hinted = self._hinted, set()
            scheduled = bool(requests) or self.clock() >= next_check or hinted is None
            if hinted and not scheduled and self.clock() < self._hints_due:
                self._hinted, hinted = hinted, set()  # too soon: pooled for the next check
        try:
            if scheduled:
                outcome = self.cycle()
                for request in requests:
                    request.outcome = outcome
                    request.done.set()
            elif hinted:
                outcome = self.cycle(only=hinted)
                spacing = HINT_SPACING_SECONDS if outcome.ok else FAILURE_BACKOFF_SECONDS
                self._hints_due = self.clock() + spacing
            if self.reactor is not None:
                self.reactor.run_due(self.snapshot)
        except Exception as exc:  # noqa: BLE001 - nothing may end the loop
            from . import logs

            message, code = describe_error(exc)
            logs.error(f"Refresh loop turn failed: {message}", exit_code=code)
        return scheduled

    def cycle(self, only: Iterable[str] | None = None) -> Outcome:
        """One refresh (of ``only`` these secret ids, else all): on failure keep the last good
        values, count it and back off; never raises."""
        started = self.clock()
        try:
            refreshed: Refreshed = self.loader.refresh(self.snapshot, only)
            # Every cycle, not only on a change: writers skip unchanged bytes, so an output that
            # was deleted or altered on disk heals here. A failed write keeps the previous
            # snapshot, so the next cycle sees the change again and retries it.
            self.on_update(refreshed.snapshot, refreshed.changed)
        except Exception as exc:  # noqa: BLE001 - anything: one log line, counted, retried
            self.failures += 1
            message, code = describe_error(exc)
            failed = Outcome(ok=False, error=message, exit_code=code,
                             duration_seconds=self.clock() - started)
            self.on_cycle(failed)
            return failed
        now = self.clock()
        tracked = {key.secret_id for key in refreshed.snapshot.versions if key.version is None}
        for secret_id in refreshed.checked:
            self.last_ok[secret_id] = now
        for secret_id in tracked:  # a secret that appeared since (prefix, event)
            self.last_ok.setdefault(secret_id, now)
        for secret_id in set(self.last_ok) - tracked:  # one that is gone is not stale
            del self.last_ok[secret_id]
        self.snapshot = refreshed.snapshot
        if self.reactor is not None:
            self.reactor.notice(refreshed.changed)
        failed_ids = {s: str(e) for s, e in sorted(refreshed.failures.items())}
        if failed_ids:
            self.failures += 1
            first = next(iter(refreshed.failures.values()))
            outcome = Outcome(ok=False, changed=refreshed.changed,
                              versions=refreshed.snapshot.version_ids(),
                              error=f"{len(failed_ids)} secret(s) could not be checked: {first}",
                              exit_code=first.exit_code, failed=failed_ids,
                              duration_seconds=self.clock() - started)
        else:
            if only is None:
                self.failures = 0
            outcome = Outcome(ok=True, changed=refreshed.changed,
                              versions=refreshed.snapshot.version_ids(),
                              duration_seconds=self.clock() - started)
        self.on_cycle(outcome)
        return outcome

    def shutdown(self) -> None:
        self.stop.set()
        self._wake.set()
