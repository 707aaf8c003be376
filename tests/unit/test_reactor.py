"""What a change causes, on a fake clock: the debounce window, splay, the restart budget, the app
reaction (restart, signal, exit, none, --verify, an environment too large) and pid-file
notification."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
from prometheus_client import CollectorRegistry

from sidecar.config import OnChange
from sidecar.environ import child_environment
from sidecar.errors import EXIT_TEMPFAIL
from sidecar.loader import Snapshot
from sidecar.metrics import Metrics
from sidecar.reactor import AppReaction, Notifier, Reactor, RestartBudget
from sidecar.supervisor import Action, Exit, Forward, Restart
from tests.fakes import FakeClock

if TYPE_CHECKING:
    from sidecar.supervisor import Supervisor

SNAPSHOT = Snapshot(bindings=(), versions={}, values={"A": "alpha-2", "B": "bravo-2"})
DEBOUNCE = 10.0


class Recorder:
    """A reaction that records its calls and answers from a script (None: done)."""

    def __init__(self, answers: Sequence[float | None] = ()) -> None:
        self.calls: list[tuple[float, list[str]]] = []
        self.answers = list(answers)
        self.clock: FakeClock | None = None

    def __call__(self, snapshot: Snapshot, changed: list[str]) -> float | None:
        self.calls.append((self.clock() if self.clock else 0.0, changed))
        return self.answers.pop(0) if self.answers else None


def make_reactor(reaction: Recorder, clock: FakeClock, *, splay: float = 0.0,
                 rng: random.Random | None = None) -> Reactor:
    reaction.clock = clock
    return Reactor(reaction, debounce_seconds=DEBOUNCE, splay_seconds=splay, clock=clock, rng=rng)


# -- Reactor: debounce, splay, failures -------------------------------------------------------


def test_reactor_first_change_opens_window_later_ones_do_not_extend_it() -> None:
    clock, reaction = FakeClock(), Recorder()
    reactor = make_reactor(reaction, clock)
    start = clock()
    reactor.notice(["A"])
    assert reactor.due_at == start + DEBOUNCE
    clock.advance(6)
    reactor.notice(["B"])
    assert reactor.due_at == start + DEBOUNCE
    clock.advance_to(start + DEBOUNCE - 0.001)
    reactor.run_due(SNAPSHOT)
    assert reaction.calls == []
    clock.advance_to(start + DEBOUNCE)
    reactor.run_due(SNAPSHOT)
    assert reaction.calls == [(start + DEBOUNCE, ["A", "B"])]
    assert reactor.due_at is None
    reactor.run_due(SNAPSHOT)
    assert len(reaction.calls) == 1  # one reaction per window


def test_reactor_no_change_opens_no_window() -> None:
    clock, reaction = FakeClock(), Recorder()
    reactor = make_reactor(reaction, clock)
    reactor.notice([])
    clock.advance(DEBOUNCE * 10)
    reactor.run_due(SNAPSHOT)
    assert reactor.due_at is None
    assert reaction.calls == []


def test_reactor_postponed_reaction_is_retried_then_brought_forward_by_a_change() -> None:
    clock, reaction = FakeClock(), Recorder(answers=[300.0, 300.0])
    reactor = make_reactor(reaction, clock)
    reactor.notice(["A"])
    clock.advance(DEBOUNCE)
    reactor.run_due(SNAPSHOT)
    postponed_to = clock() + 300.0
    assert reactor.due_at == postponed_to
    clock.advance(50)
    reactor.notice(["B"])  # a new change: react after its window, not 250 s later
    assert reactor.due_at == clock() + DEBOUNCE
    clock.advance(DEBOUNCE)
    reactor.run_due(SNAPSHOT)
    assert [changed for _, changed in reaction.calls] == [["A"], ["A", "B"]]


def test_reactor_splay_delays_first_reaction_by_seeded_random() -> None:
    clock, reaction = FakeClock(), Recorder()
    reactor = make_reactor(reaction, clock, splay=30.0, rng=random.Random(42))
    expected = random.Random(42).uniform(0, 30.0)
    reactor.notice(["A"])
    clock.advance(DEBOUNCE)
    reactor.run_due(SNAPSHOT)
    assert reaction.calls == []
    assert reactor.due_at == pytest.approx(clock() + expected)
    clock.advance(expected - 0.001)
    reactor.run_due(SNAPSHOT)
    assert reaction.calls == []
    clock.advance(0.001)
    reactor.run_due(SNAPSHOT)
    assert [changed for _, changed in reaction.calls] == [["A"]]


def test_reactor_splay_not_repeated_for_a_postponed_retry() -> None:
    clock, reaction = FakeClock(), Recorder(answers=[5.0])
    reactor = make_reactor(reaction, clock, splay=30.0, rng=random.Random(3))
    reactor.notice(["A"])
    clock.advance(DEBOUNCE)
    reactor.run_due(SNAPSHOT)  # splays
    assert reactor.due_at is not None
    clock.advance_to(reactor.due_at)
    reactor.run_due(SNAPSHOT)  # reacts; asks to retry in 5 s
    assert reactor.due_at == clock() + 5.0
    clock.advance(5.0)
    reactor.run_due(SNAPSHOT)  # the retry comes at once, not after another splay
    assert len(reaction.calls) == 2
    assert reactor.due_at is None


def test_reactor_splay_applies_again_to_the_next_window() -> None:
    clock, reaction = FakeClock(), Recorder()
    reactor = make_reactor(reaction, clock, splay=30.0, rng=random.Random(5))
    for name in ("A", "B"):
        reactor.notice([name])
        clock.advance(DEBOUNCE)
        reactor.run_due(SNAPSHOT)
        assert reactor.due_at is not None
        assert reactor.due_at > clock()  # splayed
        clock.advance_to(reactor.due_at)
        reactor.run_due(SNAPSHOT)
    assert [changed for _, changed in reaction.calls] == [["A"], ["B"]]


@pytest.mark.parametrize("error", [RuntimeError("boom"), OSError(12, "ENOMEM"), RecursionError()],
                         ids=lambda e: type(e).__name__)
def test_reactor_raising_reaction_neither_spins_nor_propagates(error: Exception) -> None:
    clock = FakeClock()
    calls: list[list[str]] = []

    def reaction(snapshot: Snapshot, changed: list[str]) -> float | None:
        calls.append(changed)
        raise error

    reactor = Reactor(reaction, debounce_seconds=DEBOUNCE, clock=clock)
    reactor.notice(["A"])
    clock.advance(DEBOUNCE)
    reactor.run_due(SNAPSHOT)
    assert reactor.due_at is None
    reactor.run_due(SNAPSHOT)
    clock.advance(3600)
    reactor.run_due(SNAPSHOT)
    assert calls == [["A"]]
    reactor.notice(["B"])  # the next change is handled normally
    clock.advance(DEBOUNCE)
    reactor.run_due(SNAPSHOT)
    assert calls == [["A"], ["B"]]


# -- RestartBudget ----------------------------------------------------------------------------


def test_restart_budget_min_uptime_waits_for_the_rest() -> None:
    budget = RestartBudget(min_uptime_seconds=30.0, max_per_hour=0, clock=FakeClock())
    assert budget.wait_needed(uptime_seconds=12.0) == 18.0
    assert budget.wait_needed(uptime_seconds=30.0) == 0.0
    assert budget.wait_needed(uptime_seconds=500.0) == 0.0


def test_restart_budget_max_per_hour_waits_until_oldest_leaves_window() -> None:
    clock = FakeClock()
    budget = RestartBudget(min_uptime_seconds=0.0, max_per_hour=3, clock=clock)
    start = clock()
    for at in (0.0, 100.0, 200.0):
        clock.advance_to(start + at)
        assert budget.wait_needed(1e6) == 0.0
        budget.record()
    clock.advance_to(start + 300.0)
    assert budget.wait_needed(1e6) == 3300.0
    clock.advance_to(start + 3599.0)
    assert budget.wait_needed(1e6) == 1.0
    clock.advance_to(start + 3600.0)  # the first restart slid out of the hour
    assert budget.wait_needed(1e6) == 0.0
    budget.record()
    assert budget.wait_needed(1e6) == 100.0  # now the 100 s one is the oldest


def test_restart_budget_zero_max_per_hour_is_unlimited() -> None:
    budget = RestartBudget(min_uptime_seconds=0.0, max_per_hour=0, clock=FakeClock())
    for _ in range(100):
        budget.record()
    assert budget.wait_needed(1e6) == 0.0


def test_restart_budget_longer_of_both_waits_wins() -> None:
    clock = FakeClock()
    budget = RestartBudget(min_uptime_seconds=60.0, max_per_hour=1, clock=clock)
    budget.record()
    clock.advance(3590.0)
    assert budget.wait_needed(uptime_seconds=0.0) == 60.0
    assert budget.wait_needed(uptime_seconds=59.0) == 10.0


# -- AppReaction ------------------------------------------------------------------------------


class FakeSupervisor:
    """What AppReaction uses of a Supervisor: uptime(), submit(), run_aside()."""

    def __init__(self, clock: FakeClock, verify_codes: Sequence[int] = ()) -> None:
        self.clock = clock
        self.started = clock()
        self.submitted: list[Action] = []
        self.verify_codes = list(verify_codes)
        self.asides: list[tuple[list[str], dict[str, str], float]] = []

    def uptime(self) -> float:
        return self.clock() - self.started

    def submit(self, action: Action) -> None:
        self.submitted.append(action)
        if isinstance(action, Restart):
            self.started = self.clock()

    def run_aside(self, argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> int:
        self.asides.append((list(argv), dict(env), timeout))
        return self.verify_codes.pop(0) if self.verify_codes else 0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"ztr_{name}", labels) or 0.0


def app_reaction(supervisor: FakeSupervisor, action: str, metrics: Metrics, *,
                 sig: signal.Signals | None = None, verify: str | None = None,
                 min_uptime: float = 0.0, max_per_hour: int = 0,
                 env_limit: int | None = None) -> AppReaction:
    budget = RestartBudget(min_uptime_seconds=min_uptime, max_per_hour=max_per_hour,
                           clock=supervisor.clock)
    # AppReaction is typed on the concrete Supervisor; the fake has the three methods it calls.
    return AppReaction(cast("Supervisor", supervisor), OnChange(action, sig),
                       child_env=lambda values: child_environment({"PATH": "/bin"}, values,
                                                                  limit=env_limit),
                       budget=budget, verify=verify, verify_timeout_seconds=7.0,
                       verify_retry_seconds=300.0, metrics=metrics)


@pytest.mark.parametrize(("action", "sig", "expected"), [
    ("restart", None, Restart({"PATH": "/bin", "A": "alpha-2", "B": "bravo-2"})),
    ("signal", signal.SIGHUP, Forward(signal.SIGHUP)),
    ("exit", None, Exit(EXIT_TEMPFAIL)),
])
def test_app_reaction_action_submits_one_matching_action(
        metrics: Metrics, action: str, sig: signal.Signals | None, expected: Action) -> None:
    supervisor = FakeSupervisor(FakeClock())
    reaction = app_reaction(supervisor, action, metrics, sig=sig)
    assert reaction(SNAPSHOT, ["A", "B"]) is None
    assert supervisor.submitted == [expected]
    if isinstance(expected, Restart):
        assert isinstance(supervisor.submitted[0], Restart)
        assert dict(supervisor.submitted[0].env) == dict(expected.env)
    assert sample(metrics, "child_restarts_total") == (1.0 if action == "restart" else 0.0)


def test_app_reaction_none_does_nothing(metrics: Metrics) -> None:
    supervisor = FakeSupervisor(FakeClock())
    reaction = app_reaction(supervisor, "none", metrics, verify="true")
    assert reaction(SNAPSHOT, ["A"]) is None
    assert supervisor.submitted == []
    assert supervisor.asides == []  # not even --verify runs


def test_app_reaction_min_uptime_delays_restart_until_reached(metrics: Metrics) -> None:
    clock = FakeClock()
    supervisor = FakeSupervisor(clock)
    reactor = Reactor(app_reaction(supervisor, "restart", metrics, min_uptime=60.0),
                      debounce_seconds=DEBOUNCE, clock=clock)
    reactor.notice(["A"])
    clock.advance(DEBOUNCE)  # the app has been up 10 s
    reactor.run_due(SNAPSHOT)
    assert supervisor.submitted == []
    assert reactor.due_at == clock() + 50.0
    clock.advance(49.0)
    reactor.run_due(SNAPSHOT)
    assert supervisor.submitted == []
    clock.advance(1.0)
    reactor.run_due(SNAPSHOT)
    assert [type(a) for a in supervisor.submitted] == [Restart]
    assert supervisor.uptime() == 0.0


def test_app_reaction_max_restarts_postpones_the_next_restart(metrics: Metrics) -> None:
    clock = FakeClock()
    supervisor = FakeSupervisor(clock)
    reaction = app_reaction(supervisor, "restart", metrics, max_per_hour=2)
    assert reaction(SNAPSHOT, ["A"]) is None
    clock.advance(600)
    assert reaction(SNAPSHOT, ["A"]) is None
    clock.advance(600)
    assert reaction(SNAPSHOT, ["A"]) == 2400.0  # until the first restart is an hour old
    assert len(supervisor.submitted) == 2
    assert sample(metrics, "child_restarts_total") == 2.0


def test_app_reaction_verify_failure_retries_after_verify_retry_seconds(metrics: Metrics) -> None:
    clock = FakeClock()
    supervisor = FakeSupervisor(clock, verify_codes=[1, 0])
    reactor = Reactor(app_reaction(supervisor, "restart", metrics, verify="test -n \"$A\""),
                      debounce_seconds=DEBOUNCE, clock=clock)
    reactor.notice(["A"])
    clock.advance(DEBOUNCE)
    reactor.run_due(SNAPSHOT)
    assert supervisor.submitted == []
    assert reactor.due_at == clock() + 300.0
    assert sample(metrics, "verify_failures_total") == 1.0
    clock.advance(299.0)
    reactor.run_due(SNAPSHOT)
    assert len(supervisor.asides) == 1
    clock.advance(1.0)
    reactor.run_due(SNAPSHOT)
    assert [type(a) for a in supervisor.submitted] == [Restart]
    argv, env, timeout = supervisor.asides[-1]
    assert argv == ["/bin/sh", "-c", "test -n \"$A\""]
    assert env["A"] == "alpha-2"  # --verify sees the new environment
    assert timeout == 7.0


def test_app_reaction_environment_too_large_takes_no_action_and_counts(metrics: Metrics) -> None:
    supervisor = FakeSupervisor(FakeClock())
    reaction = app_reaction(supervisor, "restart", metrics, verify="true", env_limit=16)
    assert reaction(SNAPSHOT, ["A"]) is None  # not retried: the same values would not fit
    assert supervisor.submitted == []
    assert supervisor.asides == []
    assert sample(metrics, "reaction_failures_total", reason="environment") == 1.0


# -- Notifier ---------------------------------------------------------------------------------

# SIGURG is ignored by default: if a refusal failed, it would harm no process it reached.
HARMLESS = signal.SIGURG


@contextmanager
def own_signal_caught(signum: int) -> Iterator[list[int]]:
    """Block ``signum`` here and report whether it became pending for this process."""
    pending: list[int] = []
    previous = signal.signal(signum, lambda s, f: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    try:
        yield pending
    finally:
        pending.extend(int(s) for s in signal.sigpending() if s == signum)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        signal.signal(signum, previous)


def notifier(pid_file: Path, signum: int, metrics: Metrics) -> Notifier:
    return Notifier(signum=signum, pid_file=str(pid_file), command=None, timeout_seconds=5.0,
                    metrics=metrics)


@pytest.mark.parametrize(("content", "reason"), [
    ("0", "pid_file"),
    ("1", "pid_file"),
    ("-1", "pid_file"),
    ("garbage", "pid_file"),
    ("", "pid_file"),
    ("99999999999999999999999", "pid_file"),
    ("own-pid", "pid_file"),
    ("own-group", "pid_file"),
    ("9999999", "signal"),  # above Linux's pid_max: no such process
    ("missing-file", "pid_file"),
])
def test_notifier_unusable_pid_file_signals_nobody_and_counts(
        tmp_path: Path, metrics: Metrics, content: str, reason: str) -> None:
    pid_file = tmp_path / "app.pid"
    text = {"own-pid": str(os.getpid()), "own-group": str(os.getpgrp())}.get(content, content)
    if content != "missing-file":
        pid_file.write_text(text + "\n")
    with own_signal_caught(HARMLESS) as pending:
        assert notifier(pid_file, HARMLESS, metrics)(SNAPSHOT, ["A"]) is None
    assert pending == []
    assert sample(metrics, "reaction_failures_total", reason=f"notify_{reason}") == 1.0


def test_notifier_real_child_pid_gets_the_signal(tmp_path: Path, metrics: Metrics) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        pid_file = tmp_path / "app.pid"
        pid_file.write_text(f"{child.pid}\n")
        notifier(pid_file, signal.SIGTERM, metrics)(SNAPSHOT, ["A"])
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert sample(metrics, "reaction_failures_total", reason="notify_pid_file") == 0.0
    assert sample(metrics, "reaction_failures_total", reason="notify_signal") == 0.0
