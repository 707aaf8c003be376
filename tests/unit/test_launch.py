"""The console scripts pause the cyclic garbage collector for start-up; the resident commands
turn it back on, with start-up's objects frozen out of its sight."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sidecar import cli, launch, startup


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
