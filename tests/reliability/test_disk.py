"""Disk faults under the outputs: a full tmpfs, a read-only one, and the directory deleted under
a running ``ztr watch``. Start-up: exit 73 and one clear error, no file, no temp file left.
During watch: a logged refresh error counted in ``ztr_refresh_total{result="error"}``, the last
good file kept, and the new value written once the disk is fixed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.proc import Proc, http, metric
from tests.helpers.ztr import ZTR, run
from tests.reliability.conftest import error_record, fill, remount, small_tmpfs

SECRET = "rel/disk/db"
WATCH = ["--refresh-interval", "200ms", "--debounce", "0s"]
REFRESH_FAILED = "Refresh failed; keeping the last good values"


def _expect_73(result: Any, fragment: str) -> None:
    assert result.code == 73, result.stderr
    assert fragment in error_record(result.code, result.stderr)["msg"]


@pytest.mark.parametrize("output", ["file", "dir"])
def test_init_output_filesystem_full_exits_73_without_partial_file(
    sm: Any, ztr_env: dict[str, str], output: str
) -> None:
    sm.create_secret(Name=SECRET, SecretString="p" * 6000)
    with small_tmpfs("16k") as mnt:
        filler = fill(mnt)
        target = mnt / ("app.env" if output == "file" else "secrets")
        if output == "dir":
            target.mkdir()  # takes no data pages: the writes are what fails
        flag = "--output" if output == "file" else "--output-dir"
        result = run(["init", "--secret", f"DB={SECRET}", flag, str(target)], ztr_env)
        _expect_73(result, "the filesystem is full")
        assert sorted(p.name for p in mnt.rglob("*")) == sorted(
            ["filler"] + ([] if output == "file" else ["secrets"]))  # no partial, no temp file
        filler.unlink()
        assert run(["init", "--secret", f"DB={SECRET}", flag, str(target)], ztr_env).code == 0
        written = target if output == "file" else target / "DB"
        assert ("p" * 6000) in written.read_text()


def test_init_output_filesystem_read_only_exits_73_keeping_last_good_file(
    sm: Any, ztr_env: dict[str, str]
) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1-good-value")
    with small_tmpfs("64k") as mnt:
        out = mnt / "app.env"
        assert run(["init", "--secret", f"DB={SECRET}", "--output", str(out)], ztr_env).code == 0
        good = out.read_bytes()
        sm.put_secret_value(SecretId=SECRET, SecretString="v2-new-value")
        remount(mnt, "ro")
        result = run(["init", "--secret", f"DB={SECRET}", "--output", str(out)], ztr_env)
        _expect_73(result, "the filesystem is read-only")
        assert out.read_bytes() == good
        # A missing directory on a read-only filesystem is refused before AWS is contacted.
        nested = run(["init", "--secret", f"DB={SECRET}", "--output", str(mnt / "sub" / "app.env")],
                     ztr_env)
        _expect_73(nested, "read-only")
        assert "Loading secrets" not in nested.stderr
        remount(mnt, "rw")
        assert run(["init", "--secret", f"DB={SECRET}", "--output", str(out)], ztr_env).code == 0
        assert out.read_text() == "export DB='v2-new-value'\n"


def _metrics(proc: Proc) -> str:
    status, body = http(proc.metrics_addr() + "/metrics")
    assert status == 200
    return body


def _refresh_errors(proc: Proc) -> float:
    return metric(_metrics(proc), "ztr_refresh_total", {"result": "error"}) or 0


def _failed_with(proc: Proc, fragment: str) -> bool:
    return any(e.get("msg") == REFRESH_FAILED and fragment in str(e.get("error"))
               for e in proc.logs())


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_watch_output_filesystem_fault_logs_error_keeps_file_and_recovers(
    sm: Any, ztr_env: dict[str, str], fault: str
) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1-good-value")
    with small_tmpfs("16k") as mnt:
        out = mnt / "app.env"
        proc = Proc([ZTR, "watch", "--secret", f"DB={SECRET}", "--output", str(out), *WATCH],
                    ztr_env)
        try:
            proc.wait_log("Wrote secrets; watching for changes")
            good = out.read_bytes()
            filler = fill(mnt) if fault == "full" else None
            if fault == "read-only":
                remount(mnt, "ro")
            new = "v2-" + "n" * 6000
            sm.put_secret_value(SecretId=SECRET, SecretString=new)
            fragment = "the filesystem is full" if fault == "full" else "read-only"
            proc.wait_until(lambda: _failed_with(proc, fragment), timeout=5, what="a refresh error")
            assert _refresh_errors(proc) >= 1
            assert out.read_bytes() == good
            assert sorted(os.listdir(mnt)) == sorted(["app.env"] + (["filler"] if filler else []))
            if filler is not None:
                filler.unlink()
            else:
                remount(mnt, "rw")
            proc.wait_until(lambda: out.read_text() == f"export DB='{new}'\n", timeout=5,
                            what="the new value written once the disk is fixed")
            assert http(proc.metrics_addr() + "/healthz")[0] == 200
        finally:
            assert proc.stop() == 0
        assert "Traceback" not in "\n".join(proc.stderr)


@pytest.mark.parametrize("output", ["file", "dir"])
def test_watch_output_directory_deleted_is_recreated_on_next_change(
    sm: Any, ztr_env: dict[str, str], shm: Path, output: str
) -> None:
    sm.create_secret(Name=SECRET, SecretString="v1-good-value")
    directory = shm / "out"
    flag, path = (("--output", directory / "app.env") if output == "file"
                  else ("--output-dir", directory))
    proc = Proc([ZTR, "watch", "--secret", f"DB={SECRET}", flag, str(path), *WATCH], ztr_env)
    written = directory / ("app.env" if output == "file" else "DB")
    try:
        proc.wait_log("Wrote secrets; watching for changes")
        shutil.rmtree(directory)
        sm.put_secret_value(SecretId=SECRET, SecretString="v2-new-value")
        proc.wait_until(lambda: written.exists() and "v2-new-value" in written.read_text(),
                        timeout=5, what="the deleted output written again")
        assert oct(directory.stat().st_mode & 0o777) == "0o700"
        assert oct(written.stat().st_mode & 0o777) == "0o600"
        assert _refresh_errors(proc) == 0
        assert http(proc.metrics_addr() + "/healthz")[0] == 200
    finally:
        assert proc.stop() == 0
    assert "Traceback" not in "\n".join(proc.stderr)
