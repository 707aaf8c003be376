"""The output files through the real CLI: ``--output-dir`` removes what an earlier ztr wrote for
variables that are gone, and nothing else; the documented "ztr as root with ``--owner``"
set-up lets the app, as another user, find and source its file through the image's entrypoint."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sidecar.outputs import MANIFEST_NAME
from tests.helpers.ztr import run

ENTRYPOINT = Path(__file__).resolve().parents[2] / "entrypoint.sh"
APP_USER = "65534:65534"


def test_init_output_dir_second_run_removes_undeclared_variables_keeps_others(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="of/a", SecretString="a")
    sm.create_secret(Name="of/b", SecretString="b")
    directory = shm / "secrets"
    first = run(["init", "--output-dir", str(directory), "--secret", "A=of/a",
                 "--secret", "B=of/b"], ztr_env)
    assert first.code == 0, first.stderr
    (directory / "NOT_ZTRS").write_text("placed by someone else")
    second = run(["init", "--output-dir", str(directory), "--secret", "A=of/a"], ztr_env)
    assert second.code == 0, second.stderr
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST_NAME, "A", "NOT_ZTRS"]
    assert (directory / "A").read_text() == "a"


def test_init_output_dir_optional_secret_gone_at_restart_removes_its_file(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    sm.create_secret(Name="of/a", SecretString="a")
    sm.create_secret(Name="of/opt", SecretString="o")
    directory = shm / "secrets"
    argv = ["init", "--output-dir", str(directory), "--secret", "A=of/a",
            "--secret", "OPT=of/opt?optional"]
    assert run(argv, ztr_env).code == 0
    assert (directory / "OPT").read_text() == "o"
    sm.delete_secret(SecretId="of/opt", ForceDeleteWithoutRecovery=True)
    result = run(argv, ztr_env)
    assert result.code == 0, result.stderr
    assert not (directory / "OPT").exists()


def test_init_as_root_with_owner_app_user_sources_file_through_entrypoint(
    sm: Any, ztr_env: dict[str, str], shm: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"--owner needs root to chown; this test runs as uid {os.geteuid()}")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot run the app as another user")
    sm.create_secret(Name="of/db", SecretString="it's s3cr3t")
    shm.chmod(0o711)  # the volume's mount point: enterable by anyone, listed by none
    env_file = shm / "run" / "app.env"  # ztr creates run/
    result = run(["init", "--secret", "DB_PASSWORD=of/db", "--output", str(env_file),
                  "--owner", APP_USER], ztr_env)
    assert result.code == 0, result.stderr
    uid, gid = APP_USER.split(":")
    app = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", str(ENTRYPOINT),
         "sh", "-c", 'printf %s "$DB_PASSWORD"'],
        env={"PATH": "/usr/bin:/bin", "ZTR_WAIT_FOR_FILE": str(env_file), "ZTR_WAIT_TIMEOUT": "5"},
        capture_output=True, text=True, timeout=30)
    assert (app.returncode, app.stdout) == (0, "it's s3cr3t"), app.stderr
