"""The lint of the image's scripts and Dockerfile (once each, not once per shell as the
entrypoint's behaviour tests run)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_entrypoint import DOCKERFILE, ENTRYPOINT, IMAGE_TEST, _tool


def test_entrypoint_file_is_executable_posix_sh() -> None:
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR


@pytest.mark.parametrize("script", [ENTRYPOINT, IMAGE_TEST], ids=["entrypoint.sh", "image-run.sh"])
def test_shellcheck_script_clean(script: Path) -> None:
    proc = subprocess.run([_tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_entrypoint_shellcheck_posix_dialect_clean() -> None:
    proc = subprocess.run([_tool("shellcheck"), "--shell=sh", "--severity=style", str(ENTRYPOINT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_hadolint_clean() -> None:
    proc = subprocess.run([_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
