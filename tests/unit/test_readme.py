"""The README's reference tables cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar import errors
from sidecar.config import SETTINGS
from sidecar.metrics import Metrics

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_readme_set_up_is_the_two_commands() -> None:
    setup = README.split("## Set-up", 1)[1].split("##", 1)[0]
    assert re.findall(r"^make \w+", setup, re.MULTILINE) == ["make demo", "make test"]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_readme_every_setting_has_flag_and_variable_row(setting: object) -> None:
    row = next((line for line in README.splitlines() if line.startswith(f"| `{setting.flag}")  # type: ignore[attr-defined]
                and f"`{setting.env}`" in line), None)  # type: ignore[attr-defined]
    assert row is not None, f"README lacks a row for {setting.flag} / {setting.env}"  # type: ignore[attr-defined]


def test_readme_every_metric_is_documented() -> None:
    metrics = Metrics(CollectorRegistry())
    names = {family.name for family in metrics.registry.collect() if family.name.startswith("ztr_")}
    assert names
    for name in names:
        documented = f"`{name}`" in README or f"`{name}_total`" in README
        assert documented, f"README does not document {name}"


def test_readme_every_exit_code_is_documented() -> None:
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    table = README.split("### Exit codes", 1)[1]
    for code in codes:
        assert re.search(rf"^\| (\d+, )?{code}\b", table, re.MULTILINE), f"exit code {code} undocumented"
