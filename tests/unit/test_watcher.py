"""The refresh loop, driven by a fake clock and a fake Secrets Manager: backoff, staleness,
per-secret failures, vanishing secrets, hints, and cycles that never raise."""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest

from sidecar import loader as loader_mod
from sidecar import refs
from sidecar.errors import (
    EXIT_SOFTWARE,
    AccessDeniedError,
    DeletedSecretError,
    SecretNotFoundError,
    TransientError,
)
from sidecar.loader import Loader, Snapshot
from sidecar.reactor import Reactor
from sidecar.retry import RetryPolicy
from sidecar.watcher import (
    FAILURE_BACKOFF_SECONDS,
    HINT_SPACING_SECONDS,
    JITTER_LOW,
    Outcome,
    UpdateHook,
    Watcher,
)
from tests.fakes import FakeClock, FakeSecretsManager

INTERVAL = 60.0
MAX_STALE = 300.0


def make_watcher(fake: FakeSecretsManager, entries: Sequence[str], *,
                 on_update: UpdateHook | None = None, reactor: Reactor | None = None,
                 outcomes: list[Outcome] | None = None, prefix: str | None = None) -> Watcher:
    clock = fake.clock
    # Backoffs between retries wait on the clock's event: they move the fake clock, never sleep.
    retry = RetryPolicy(initial_seconds=0.5, max_backoff_seconds=4.0, stop=clock.event(), clock=clock)
    loader = Loader(fake, retry, bindings=[refs.parse_binding(e, "--secret") for e in entries],
                    prefix=prefix, timeout_seconds=30.0, clock=clock)
    sink = outcomes if outcomes is not None else []
    return Watcher(loader, loader.load(), interval_seconds=INTERVAL, max_stale_seconds=MAX_STALE,
                   reactor=reactor, on_update=on_update, on_cycle=sink.append,
                   clock=clock, rng=random.Random(1))


@pytest.fixture
def fake() -> FakeSecretsManager:
    fake = FakeSecretsManager(clock=FakeClock())
    fake.create("app/a", "alpha-1")
    fake.create("app/b", "bravo-1")
    return fake


# -- the loop itself, one turn at a time ---------------------------------------------------


class LoopStepper(Reactor):
    """Lets a test drive ``Watcher.run`` one turn at a time.

    The loop reads ``reactor.due_at`` once per turn, after it has scheduled its next check and
    just before it waits. There, in the loop's own thread, the stepper reports that the turn is
    over, runs the test's next step (move the clock, hint) and wakes the loop, so its wait returns
    at once. The clock only moves between turns and nothing sleeps.
    """

    def __init__(self, clock: FakeClock) -> None:
        self._steps: queue.Queue[Callable[[], object]] = queue.Queue()
        self._idle: queue.Queue[bool] = queue.Queue()
        self.watcher: Watcher | None = None
        super().__init__(lambda snapshot, changed: None, debounce_seconds=0.0, clock=clock)

    @property
    def due_at(self) -> float | None:
        assert self.watcher is not None
        self._idle.put(True)
        self._steps.get(timeout=10)()
        self.watcher.hint(())  # an empty hint: wake up, check nothing unless a check is due
        return None

    @due_at.setter
    def due_at(self, value: float | None) -> None:
        pass  # Reactor.__init__ sets it; this probe never schedules anything

    def notice(self, changed: Sequence[str]) -> None:
        pass

    def run_due(self, snapshot: Snapshot) -> None:
        pass

    def step(self, action: Callable[[], object]) -> None:
        """Run ``action`` at the top of the loop, then let one turn happen and wait for it."""
        self._steps.put(action)
        self.wait_idle()

    def wait_idle(self) -> None:
        """Until the loop has finished a turn and scheduled its next check."""
        self._idle.get(timeout=10)

    def finish(self) -> None:
        assert self.watcher is not None
        self._steps.put(self.watcher.shutdown)


@contextmanager
def running(watcher: Watcher, stepper: LoopStepper) -> Iterator[LoopStepper]:
    stepper.watcher = watcher
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    stepper.wait_idle()  # the loop has scheduled its first check
    try:
        yield stepper
    finally:
        stepper.finish()
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_watcher_failed_cycles_back_off_doubling_up_to_the_interval(fake: FakeSecretsManager) -> None:
    clock = fake.clock
    outcomes: list[Outcome] = []
    stepper = LoopStepper(clock)
    watcher = make_watcher(fake, ["A=app/a"], reactor=stepper, outcomes=outcomes)
    fake.fail("app/a", AccessDeniedError("app/a: access denied"))

    def next_cycle_within(nominal: float) -> None:
        """The next scheduled cycle comes no sooner than JITTER_LOW x nominal, and by nominal."""
        start, seen = clock(), len(outcomes)
        stepper.step(lambda: clock.advance_to(start + JITTER_LOW * nominal - 0.01))
        assert len(outcomes) == seen, f"a cycle came before {JITTER_LOW} x {nominal}s"
        stepper.step(lambda: clock.advance_to(start + nominal))
        assert len(outcomes) == seen + 1, f"no cycle within {nominal}s"

    with running(watcher, stepper):
        next_cycle_within(INTERVAL)
        assert watcher.failures == 1
        # 5 s, doubling per failed cycle, capped at the interval.
        for failures in range(1, 7):
            nominal = min(INTERVAL, FAILURE_BACKOFF_SECONDS * 2 ** (failures - 1))
            next_cycle_within(nominal)
            assert watcher.failures == failures + 1
        fake.heal()
        next_cycle_within(INTERVAL)
        assert outcomes[-1].ok
        assert watcher.failures == 0
        next_cycle_within(INTERVAL)  # back to the plain interval after a success
    assert [o.ok for o in outcomes] == [False] * 7 + [True, True]


def test_watcher_hint_checks_only_the_named_secrets_at_once(fake: FakeSecretsManager) -> None:
    stepper = LoopStepper(fake.clock)
    watcher = make_watcher(fake, ["A=app/a", "B=app/b"], reactor=stepper)
    fake.put("app/a", "alpha-2")
    fake.put("app/b", "bravo-2")
    with running(watcher, stepper):
        stepper.step(lambda: watcher.hint(["app/a"]))
        assert fake.count("DescribeSecret", "app/a") == 1
        assert fake.count("DescribeSecret", "app/b") == 0
        assert watcher.snapshot.values == {"A": "alpha-2", "B": "bravo-1"}



def test_watcher_events_about_a_failing_secret_cost_one_check_per_backoff(
        fake: FakeSecretsManager) -> None:
    """A stream of events about a secret that cannot be read: one DescribeSecret, then the next
    only after the failure backoff, not one per event."""
    stepper = LoopStepper(fake.clock)
    watcher = make_watcher(fake, ["A=app/a", "B=app/b"], reactor=stepper)
    fake.fail("app/a", AccessDeniedError("app/a: access denied"))
    with running(watcher, stepper):
        for _ in range(20):
            stepper.step(lambda: watcher.hint(["app/a"]))
        assert fake.count("DescribeSecret", "app/a") == 1
        stepper.step(lambda: fake.clock.advance(FAILURE_BACKOFF_SECONDS))
        assert fake.count("DescribeSecret", "app/a") == 2


def test_watcher_events_close_together_are_pooled_into_the_next_check(
        fake: FakeSecretsManager) -> None:
    stepper = LoopStepper(fake.clock)
    watcher = make_watcher(fake, ["A=app/a", "B=app/b"], reactor=stepper)
    fake.put("app/b", "bravo-2")
    with running(watcher, stepper):
        stepper.step(lambda: watcher.hint(["app/a"]))
        stepper.step(lambda: watcher.hint(["app/b"]))
        assert fake.count("DescribeSecret", "app/b") == 0  # within HINT_SPACING_SECONDS
        stepper.step(lambda: fake.clock.advance(HINT_SPACING_SECONDS))
        assert fake.count("DescribeSecret", "app/b") == 1
        assert fake.count("DescribeSecret", "app/a") == 1
        assert watcher.snapshot.values["B"] == "bravo-2"

# -- one cycle at a time ---------------------------------------------------------------------


def test_watcher_cycle_new_version_is_applied_and_reported(fake: FakeSecretsManager) -> None:
    updates: list[list[str]] = []
    watcher = make_watcher(fake, ["A=app/a", "B=app/b"],
                           on_update=lambda snapshot, changed: updates.append(changed))
    new_id = fake.put("app/a", "alpha-2")
    outcome = watcher.cycle()
    assert outcome.ok
    assert outcome.changed == ["A"]
    assert outcome.versions["A"] == new_id
    assert watcher.snapshot.values == {"A": "alpha-2", "B": "bravo-1"}
    assert updates == [["A"]]


def test_watcher_cycle_same_content_new_version_updates_ids_without_change(
        fake: FakeSecretsManager) -> None:
    watcher = make_watcher(fake, ["A=app/a"])
    before = watcher.snapshot.ids["A"]
    new_id = fake.put("app/a", "alpha-1")
    outcome = watcher.cycle()
    assert outcome.ok
    assert outcome.changed == []
    assert new_id != before
    assert watcher.snapshot.ids["A"] == new_id
    assert outcome.versions["A"] == new_id


def test_watcher_cycle_pending_version_waits_for_promotion(fake: FakeSecretsManager) -> None:
    watcher = make_watcher(fake, ["A=app/a"])
    pending = fake.stage_pending("app/a", "alpha-2")
    loads = fake.count("GetSecretValue", "app/a")
    assert watcher.cycle().changed == []
    assert fake.count("GetSecretValue", "app/a") == loads  # AWSCURRENT did not move: no fetch
    fake.promote("app/a", pending)
    assert watcher.cycle().changed == ["A"]
    assert watcher.snapshot.values["A"] == "alpha-2"


def test_watcher_cycle_stage_pinned_follows_that_label(fake: FakeSecretsManager) -> None:
    fake.put("app/a", "alpha-2")  # AWSPREVIOUS exists from the second version on
    watcher = make_watcher(fake, ["OLD=app/a?stage=AWSPREVIOUS", "NEW=app/a"])
    assert watcher.snapshot.values == {"OLD": "alpha-1", "NEW": "alpha-2"}
    fake.put("app/a", "alpha-3")
    outcome = watcher.cycle()
    assert outcome.changed == ["NEW", "OLD"]
    assert watcher.snapshot.values == {"OLD": "alpha-2", "NEW": "alpha-3"}


def test_watcher_cycle_transient_errors_are_retried_on_the_fake_clock(fake: FakeSecretsManager) -> None:
    watcher = make_watcher(fake, ["A=app/a"])
    fake.fail("app/a", TransientError("app/a: throttled", throttled=True), times=2)
    fake.put("app/a", "alpha-2")
    before = fake.clock()
    outcome = watcher.cycle()
    assert outcome.ok
    assert outcome.changed == ["A"]
    assert fake.count("DescribeSecret", "app/a") == 3
    assert fake.clock() > before  # the backoffs passed on the fake clock, not on the wall


def test_watcher_cycle_transient_until_deadline_keeps_value_and_counts(fake: FakeSecretsManager) -> None:
    watcher = make_watcher(fake, ["A=app/a"])
    fake.fail("app/a", TransientError("app/a: throttled", throttled=True))
    outcome = watcher.cycle()
    assert not outcome.ok
    assert list(outcome.failed) == ["app/a"]
    assert outcome.exit_code == 69
    assert watcher.failures == 1
    assert watcher.snapshot.values == {"A": "alpha-1"}


@pytest.mark.parametrize("force", [True, False], ids=["deleted", "scheduled-for-deletion"])
def test_watcher_required_secret_gone_keeps_value_while_other_change_applies(
        fake: FakeSecretsManager, force: bool) -> None:
    watcher = make_watcher(fake, ["A=app/a", "B=app/b"])
    fake.delete("app/a", force=force)
    fake.put("app/b", "bravo-2")
    outcome = watcher.cycle()
    assert not outcome.ok
    assert outcome.changed == ["B"]
    assert list(outcome.failed) == ["app/a"]
    assert outcome.exit_code == SecretNotFoundError.exit_code
    assert watcher.failures == 1
    assert watcher.snapshot.values == {"A": "alpha-1", "B": "bravo-2"}


def test_watcher_scheduled_deletion_restored_recovers(fake: FakeSecretsManager) -> None:
    watcher = make_watcher(fake, ["A=app/a"])
    fake.delete("app/a")
    failed = watcher.cycle()
    assert DeletedSecretError.label in failed.failed["app/a"]  # "scheduled for deletion"
    fake.restore("app/a")
    assert watcher.cycle().ok
    assert watcher.failures == 0


def test_watcher_optional_secret_gone_drops_its_variable(fake: FakeSecretsManager) -> None:
    updates: list[Snapshot] = []
    watcher = make_watcher(fake, ["A=app/a?optional", "B=app/b"],
                           on_update=lambda snapshot, changed: updates.append(snapshot))
    fake.delete("app/a", force=True)
    outcome = watcher.cycle()
    assert outcome.ok
    assert outcome.changed == ["A"]
    assert watcher.snapshot.values == {"B": "bravo-1"}
    assert updates[-1].values == {"B": "bravo-1"}


def test_watcher_prefix_secret_gone_is_forgotten_never_stale(fake: FakeSecretsManager) -> None:
    fake.create("app/c", "charlie-1")
    watcher = make_watcher(fake, [], prefix="app/")
    assert watcher.snapshot.values == {"A": "alpha-1", "B": "bravo-1", "C": "charlie-1"}
    fake.delete("app/c", force=True)
    assert watcher.cycle().changed == ["C"]
    described = fake.calls["DescribeSecret"]
    assert watcher.cycle().ok
    assert fake.calls["DescribeSecret"] - described == 2  # app/c is no longer checked
    fake.clock.advance(MAX_STALE + 1)
    watcher.cycle()
    assert not watcher.stale


def test_watcher_hint_for_a_new_prefix_secret_loads_it(fake: FakeSecretsManager) -> None:
    watcher = make_watcher(fake, [], prefix="app/")
    fake.create("app/new", "november-1")
    outcome = watcher.cycle(only=["app/new"])
    assert outcome.changed == ["NEW"]
    assert watcher.snapshot.values["NEW"] == "november-1"
    missing = watcher.cycle(only=["app/never-created"])  # an event about a name that is not there
    assert missing.ok
    assert "app/never-created" not in {key.secret_id for key in watcher.snapshot.versions}


def test_watcher_secret_failing_past_max_stale_is_stale_alone(fake: FakeSecretsManager) -> None:
    clock = fake.clock
    watcher = make_watcher(fake, ["A=app/a", "B=app/b"])
    fake.fail("app/a", AccessDeniedError("app/a: access denied"))
    start = clock()
    for at in (100.0, 200.0, 300.0):
        clock.advance_to(start + at)
        watcher.cycle()
        assert not watcher.stale  # exactly max_stale old is not yet stale
    clock.advance_to(start + MAX_STALE + 1)
    assert watcher.stale
    assert watcher.stale_secrets() == ["app/a"]
    fake.heal()
    watcher.cycle()
    assert not watcher.stale
    assert watcher.stale_secrets() == []


def test_watcher_no_cycle_for_longer_than_max_stale_makes_all_stale(fake: FakeSecretsManager) -> None:
    watcher = make_watcher(fake, ["A=app/a", "B=app/b"])
    fake.clock.advance(MAX_STALE + 1)
    assert watcher.stale_secrets() == ["app/a", "app/b"]


@pytest.mark.parametrize("error", [RecursionError("deep"), OSError(5, "Input/output error"),
                                   ValueError("hunter2"), KeyError("x")],
                         ids=lambda e: type(e).__name__)
def test_watcher_cycle_source_exception_is_counted_not_raised(
        fake: FakeSecretsManager, error: Exception) -> None:
    watcher = make_watcher(fake, ["A=app/a"])
    before = watcher.snapshot
    fake.fail_call("DescribeSecret", error)
    outcome = watcher.cycle()
    assert not outcome.ok
    assert outcome.exit_code == EXIT_SOFTWARE
    assert outcome.error is not None
    assert outcome.error.startswith(f"internal error: {type(error).__name__}")
    assert "hunter2" not in outcome.error  # another exception's text may quote a value
    assert watcher.failures == 1
    assert watcher.snapshot is before
    assert watcher.cycle().ok  # and the next cycle works


@pytest.mark.parametrize("error", [RecursionError("deep"), OSError(28, "No space left on device")],
                         ids=lambda e: type(e).__name__)
def test_watcher_cycle_on_update_exception_keeps_snapshot_and_retries_change(
        fake: FakeSecretsManager, error: Exception) -> None:
    calls: list[list[str]] = []

    def on_update(snapshot: Snapshot, changed: list[str]) -> None:
        calls.append(changed)
        if len(calls) == 1:
            raise error

    watcher = make_watcher(fake, ["A=app/a"], on_update=on_update)
    fake.put("app/a", "alpha-2")
    failed = watcher.cycle()
    assert not failed.ok
    assert watcher.failures == 1
    assert watcher.snapshot.values == {"A": "alpha-1"}
    retried = watcher.cycle()  # the change is seen again, so the failed write is retried
    assert retried.ok
    assert retried.changed == ["A"]
    assert calls == [["A"], ["A"]]
    assert watcher.snapshot.values == {"A": "alpha-2"}


def test_watcher_hinted_cycle_describes_only_named_secrets(fake: FakeSecretsManager) -> None:
    watcher = make_watcher(fake, ["A=app/a", "B=app/b"])
    fake.put("app/b", "bravo-2")
    outcome = watcher.cycle(only=["app/a"])
    assert outcome.ok
    assert outcome.changed == []
    assert fake.count("DescribeSecret", "app/a") == 1
    assert fake.count("DescribeSecret", "app/b") == 0
    assert watcher.cycle().changed == ["B"]


def test_watcher_hinted_cycle_success_does_not_reset_failures(fake: FakeSecretsManager) -> None:
    watcher = make_watcher(fake, ["A=app/a", "B=app/b"])
    fake.fail("app/b", AccessDeniedError("app/b: access denied"))
    watcher.cycle()
    assert watcher.failures == 1
    assert watcher.cycle(only=["app/a"]).ok
    assert watcher.failures == 1  # app/b was not checked: it may still be failing
    fake.heal()
    assert watcher.cycle().ok
    assert watcher.failures == 0


def test_watcher_new_prefix_secret_that_fails_once_loads_on_a_later_cycle(
        fake: FakeSecretsManager) -> None:
    """The event that named it is spent and the listing is not repeated: a secret that could
    not be read at its first check must stay in the set of secrets checked."""
    watcher = make_watcher(fake, [], prefix="app/")
    fake.create("app/new", "november-1")
    fake.fail("app/new", AccessDeniedError("app/new: access denied"), times=1)
    assert not watcher.cycle(only=["app/new"]).ok
    assert watcher.cycle().changed == ["NEW"]
    assert watcher.snapshot.values["NEW"] == "november-1"


def test_watcher_unreadable_new_prefix_secrets_kept_are_bounded(
        fake: FakeSecretsManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader_mod, "MAX_UNREAD_DISCOVERED", 2)
    watcher = make_watcher(fake, [], prefix="app/")
    names = [f"app/new-{i}" for i in range(5)]
    for name in names:
        fake.create(name, "value-1")
        fake.fail(name, AccessDeniedError(f"{name}: access denied"))
    watcher.cycle(only=names)
    kept = {key.secret_id for key in watcher.snapshot.versions} - {"app/a", "app/b"}
    assert len(kept) == 2


def test_watcher_many_secrets_moving_at_once_are_checked_in_one_build(
        fake: FakeSecretsManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk rotation: the new values are checked against their references together, not by
    rebuilding the whole snapshot once per moved secret (quadratic in the secrets)."""
    names = [f"app/s{i}" for i in range(50)]
    for name in names:
        fake.create(name, "v1")
    watcher = make_watcher(fake, [f"S{i}={name}" for i, name in enumerate(names)])
    for name in names:
        fake.put(name, "v2")
    builds: list[int] = []
    real = Snapshot.build.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Snapshot], *args: object) -> Snapshot:
        builds.append(1)
        return real(cls, *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(Snapshot, "build", classmethod(counted))
    outcome = watcher.cycle()
    assert len(outcome.changed) == 50
    assert len(builds) <= 2


def test_watcher_one_value_that_does_not_fit_stays_apart_in_a_bulk_move(
        fake: FakeSecretsManager) -> None:
    fake.create("app/json", '{"user": "u1"}')
    watcher = make_watcher(fake, ["A=app/a", "B=app/b", "USER=app/json#user"])
    fake.put("app/a", "alpha-2")
    fake.put("app/json", "not json")
    outcome = watcher.cycle()
    assert outcome.changed == ["A"]
    assert set(outcome.failed) == {"app/json"}
    assert watcher.snapshot.values["USER"] == "u1"
