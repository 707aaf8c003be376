"""ztr-run as PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`, as root), as in a
container: orphans are reaped, signals from outside are forwarded; beside tini and dumb-init.

The test reads the host's /proc: the init is the child of `unshare`, and the PIDs the helper
prints are numbered inside the namespace (NSpid maps them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from tests.helpers.print_signals import Session, child_argv, children_of, status, wait_for, zombies_of
from tests.helpers.ztr import ZTR_RUN

pytestmark = pytest.mark.timeout(30)

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
# As PID 1 neither tini nor dumb-init needs a flag to reap; -g: signal the child's group.
INITS = {
    "ztr-run": [ZTR_RUN, "--"],
    "tini": ["tini", "-g", "--"],
    "dumb-init": ["dumb-init"],
}


@pytest.fixture(scope="module")
def unshare_works() -> None:
    if os.geteuid() != 0:
        pytest.skip("PID-1 tests need root for `unshare --pid` (run them in CI or as root)")
    if shutil.which("unshare") is None:
        pytest.skip("PID-1 tests need unshare(1) from util-linux")
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"`unshare --pid --fork --mount-proc` fails here: {probe.stderr.strip()}")


@pytest.fixture(params=list(INITS))
def init(request: pytest.FixtureRequest, unshare_works: None) -> list[str]:
    name = request.param
    if name != "ztr-run" and shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (apt-get install -y {name}): "
                    "the side-by-side comparison needs Debian's package")
    return INITS[name]


@pytest.fixture
def env() -> dict[str, str]:
    return {**os.environ, "USE_AWS_SECRETS": "false", "ZTR_LOG_FORMAT": "json"}


def _ns_pid(info: dict[str, str]) -> int:
    return int(info["NSpid"].split()[-1])


def _init_of(session: Session) -> int:
    """The host PID of the namespace's PID 1 (the only child of `unshare --fork`)."""
    wait_for(lambda: len(children_of(session.pid)) == 1, 5, "unshare started the init")
    (pid, info), = children_of(session.pid).items()
    assert _ns_pid(info) == 1
    return pid


def _host_pids(init_pid: int, ns_pids: list[int]) -> dict[int, int]:
    """Namespace PID -> host PID, for children of the init."""
    found = {_ns_pid(info): pid for pid, info in children_of(init_pid).items()}
    return {ns: found[ns] for ns in ns_pids if ns in found}


def test_pid1_orphans_adopted_and_reaped(init: list[str], env: dict[str, str]) -> None:
    argv = [*UNSHARE, *init, *child_argv("--orphans", "3", "--pid")]
    with Session(argv, env, track_pids=False) as session:
        announced = session.until_ready()
        init_pid = _init_of(session)
        orphans = _host_pids(init_pid, announced["orphan"])
        assert len(orphans) == 3, f"orphans adopted by PID 1: {orphans} of {announced['orphan']}"
        for host_pid in orphans.values():
            os.kill(host_pid, signal.SIGKILL)
        wait_for(lambda: all(status(pid) is None for pid in orphans.values()), 5,
                 "orphans reaped by PID 1 (not even a zombie)")
        assert zombies_of(init_pid) == []
        os.kill(init_pid, signal.SIGTERM)  # what `docker stop` does
        assert session.line() == "SIGTERM"
        assert session.wait() == 128 + signal.SIGTERM


def test_pid1_forwarded_signals_arrive_once_in_order(init: list[str],
                                                     env: dict[str, str]) -> None:
    order = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
             signal.SIGQUIT, signal.SIGINT, signal.SIGTERM)
    argv = [*UNSHARE, *init, *child_argv("--keep-running", "--pid")]
    with Session(argv, env, track_pids=False) as session:
        ns_child = session.until_ready()["pid"][0]
        init_pid = _init_of(session)
        for signum in order:
            os.kill(init_pid, signum)
            assert session.line() == signum.name
        os.kill(_host_pids(init_pid, [ns_child])[ns_child], signal.SIGKILL)
        assert session.rest() == ""
        assert session.wait() == 128 + signal.SIGKILL


@pytest.mark.parametrize("code", [0, 3, 128 + signal.SIGSEGV])
def test_pid1_child_exit_status_passes_through(init: list[str], env: dict[str, str],
                                               code: int) -> None:
    script = "ulimit -c 0; kill -SEGV $$" if code > 128 else f"exit {code}"
    with Session([*UNSHARE, *init, "sh", "-c", script], env, track_pids=False,
                 cwd="/tmp") as session:
        assert session.wait() == code
