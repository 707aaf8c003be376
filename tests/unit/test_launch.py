"""The console scripts pause the cyclic garbage collector for start-up; the resident commands
turn it back on, with start-up's objects frozen out of its sight."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sidecar import cli, launch, logs, runtime, startup
from sidecar import config as config_mod
from sidecar.commands import watch
from sidecar.metrics import Metrics
from sidecar.signals import SignalInbox


class _EnteredError(Exception):
    pass


@pytest.fixture
def collector() -> Iterator[None]:
    """Leave the test process's collector as it was found, whatever the test did to it."""
    was_enabled = gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
        else:
            gc.disable()


@pytest.mark.parametrize(("script", "target"), [("ztr", "entry"), ("ztr-run", "run_entry")])
def test_console_script_pauses_the_collector_before_cli(
        script: str, target: str, collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def entered() -> None:
        seen.append(gc.isenabled())
        raise _EnteredError

    monkeypatch.setattr(cli, target, entered)
    (point,) = [ep for ep in entry_points(group="console_scripts") if ep.name == script]
    assert point.value.startswith("sidecar.launch:")
    gc.enable()
    with pytest.raises(_EnteredError):
        point.load()()
    assert seen == [False]


def test_settle_freezes_start_up_and_collects_again(collector: None) -> None:
    gc.disable()
    start_up_objects = [[] for _ in range(1000)]
    startup.settle()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(start_up_objects)


def test_settle_leaves_a_running_collector_alone(collector: None) -> None:
    gc.enable()
    frozen = gc.get_freeze_count()
    startup.settle()
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


def test_launch_module_imports_nothing_of_ztr_at_module_level() -> None:
    """What runs before gc.disable() is only this module: the rest is imported after it."""
    source = Path(launch.__file__).read_text(encoding="utf-8")
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert top_level == ["from __future__ import annotations", "import gc",
                         "from typing import NoReturn"]


class _StopHereError(Exception):
    pass


def _record_gc_at_endpoints(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Runtime.start_endpoints records whether the collector runs, then ends the command."""
    seen: list[bool] = []

    def start_endpoints(self: runtime.Runtime, *args: object, **kwargs: object) -> None:
        seen.append(gc.isenabled())
        raise _StopHereError

    monkeypatch.setattr(runtime.Runtime, "start_endpoints", start_endpoints)
    return seen


def test_resident_start_resumes_the_collector_before_the_endpoints_serve(
        collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage a client leaves on the endpoints during a long first load must stay collectable:
    a freeze after the endpoints started would keep it for the process's life."""
    seen = _record_gc_at_endpoints(monkeypatch)
    monkeypatch.setattr(runtime, "make_writers", lambda config: [])
    monkeypatch.setattr(runtime, "make_loader", lambda config, **kwargs: object())
    config = config_mod.load("watch", {"preset": "zero-to-running", "output": "/dev/shm/ztr.env"},
                             environ={})
    rt = runtime.Runtime(Metrics(), logs.Redactor(), SignalInbox(), timeout_seconds=1.0)
    gc.disable()
    with pytest.raises(_StopHereError):
        runtime.start_resident(rt, config, logs.Redactor(), SignalInbox())
    assert seen == [True]


def test_watch_with_aws_disabled_resumes_the_collector_before_the_endpoints_serve(
        collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_gc_at_endpoints(monkeypatch)
    config = config_mod.load("watch", {"preset": "zero-to-running", "output": "/dev/shm/ztr.env"},
                             environ={"USE_AWS_SECRETS": "false"})
    monkeypatch.setattr(watch, "forbid_core_dumps", lambda: True)
    gc.disable()
    with pytest.raises(_StopHereError):
        watch.main(config, logs.Redactor(), SignalInbox())
    assert seen == [True]
