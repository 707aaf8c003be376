"""A leak canary: recognisable secret values must never appear in ztr's stdout, stderr, or any
file other than the output asked for, on the main path or on any error path."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faultproxy import FaultProxy
from tests.helpers.ztr import PYTHON, ZTR


@dataclass
class Canaries:
    plain: str
    json_user: str
    json_password: str
    binary: bytes

    def all(self) -> list[bytes]:
        texts = [self.plain, self.json_user, self.json_password]
        # Also the distinctive middle of each value, in case something slices or re-encodes it.
        return [t.encode() for t in texts] + [t[7:23].encode() for t in texts] + [self.binary[7:23]]


@pytest.fixture
def canaries(sm: Any) -> Canaries:
    c = Canaries(plain=f"CANARY-{uuid.uuid4()}", json_user=f"CANARY-{uuid.uuid4()}",
                 json_password=f"CANARY-{uuid.uuid4()}",
                 binary=b"\xff\xfe" + f"CANARY-{uuid.uuid4()}".encode())
    sm.create_secret(Name="leak/plain", SecretString=c.plain)
    sm.create_secret(Name="leak/json", SecretString=json.dumps(
        {"user": c.json_user, "password": c.json_password}))
    sm.create_secret(Name="leak/binary", SecretBinary=c.binary)
    return c


@pytest.fixture
def workdir(shm: Path) -> Path:
    """ztr's cwd, TMPDIR and HOME: every file it could leave behind lands here or in shm."""
    path = shm / "work"
    path.mkdir()
    return path


def files_holding(roots: list[Path], needles: list[bytes]) -> list[str]:
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if any(n in data for n in needles):
                    hits.append(str(path))
    return sorted(hits)


def run_ztr(argv: list[str], env: dict[str, str], workdir: Path) -> subprocess.CompletedProcess[bytes]:
    env = dict(env, TMPDIR=str(workdir), HOME=str(workdir))
    return subprocess.run(argv, env=env, cwd=workdir, capture_output=True, timeout=60)


def assert_no_leak(proc: subprocess.CompletedProcess[bytes], canaries: Canaries, roots: list[Path],
                   allowed: list[Path]) -> None:
    needles = canaries.all()
    for stream_name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        for needle in needles:
            assert needle not in stream, f"a secret value reached {stream_name}"
    assert b"Traceback" not in proc.stderr
    assert files_holding(roots, needles) == sorted(str(p) for p in allowed)


INIT_CASES = {
    # name: (secrets, expected exit code, log format); debug logs throughout: the most talkative
    "ok": ("P=leak/plain,U=leak/json#user,J_=leak/json#*,B=leak/binary?encoding=base64", 0, "json"),
    "ok, text logs": ("P=leak/plain,U=leak/json#user,J_=leak/json#*", 0, "text"),
    "missing json key": ("P=leak/plain,X=leak/json#nope", 65, "json"),
    "not json": ("X=leak/plain#key", 65, "text"),
    "all keys of not json": ("X_=leak/plain#*", 65, "json"),
    "binary not utf-8": ("P=leak/plain,X=leak/binary", 65, "text"),
    "not found": ("P=leak/plain,X=leak/plian", 66, "json"),
    "collision": ("USER=leak/plain,=leak/json#*", 64, "text"),
}


@pytest.mark.parametrize("case", list(INIT_CASES))
def test_leaks_init_values_only_in_the_output(
    ztr_env: dict[str, str], shm: Path, workdir: Path, canaries: Canaries, case: str
) -> None:
    secrets, code, fmt = INIT_CASES[case]
    out, directory = shm / "out" / "env", shm / "out" / "dir"
    env = dict(ztr_env, ZTR_SECRETS=secrets, ZTR_LOG_FORMAT=fmt, ZTR_LOG_LEVEL="debug")
    proc = run_ztr([ZTR, "init", "--output", str(out), "--output-dir", str(directory)], env, workdir)
    assert proc.returncode == code, proc.stderr
    plain_files = [directory / n for n in ("P", "U", "J_USER", "J_PASSWORD")]  # B is base64
    allowed = [out, *plain_files] if code == 0 else []
    assert_no_leak(proc, canaries, [shm, workdir], allowed)


@pytest.mark.parametrize("kind", ["denied", "decrypt"])
def test_leaks_init_aws_errors_leak_nothing(
    ztr_env: dict[str, str], shm: Path, workdir: Path, canaries: Canaries, fault_proxy: FaultProxy,
    kind: str,
) -> None:
    fault_proxy.fail_next(10**6, kind, {"GetSecretValue", "BatchGetSecretValue"})
    env = dict(ztr_env, AWS_ENDPOINT_URL_SECRETS_MANAGER=fault_proxy.url, ZTR_LOG_LEVEL="debug",
               ZTR_SECRETS="P=leak/plain,U=leak/json#user", ZTR_TIMEOUT="1s")
    proc = run_ztr([ZTR, "init", "--output", str(shm / "env")], env, workdir)
    assert proc.returncode == 77
    assert_no_leak(proc, canaries, [shm, workdir], [])


PRINT_ENV_NAMES = (
    "import os, sys; sys.stdout.write(','.join(sorted(k for k in os.environ if k in ('P', 'U'))))"
)


@pytest.mark.parametrize("once", [True, False])
def test_leaks_run_values_only_in_the_child_environment(
    ztr_env: dict[str, str], shm: Path, workdir: Path, canaries: Canaries, once: bool
) -> None:
    env = dict(ztr_env, P="sm://leak/plain", U="sm://leak/json#user", ZTR_LOG_LEVEL="debug")
    flags = ["--once"] if once else []
    proc = run_ztr([ZTR, "run", *flags, "--", PYTHON, "-c", PRINT_ENV_NAMES], env, workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"P,U"  # the child got both...
    assert_no_leak(proc, canaries, [shm, workdir], [])  # ...and nothing else did


@pytest.mark.parametrize("secrets", ["X=leak/json#nope", "P=leak/plain,X=leak/nothing"])
def test_leaks_run_error_paths_leak_nothing(
    ztr_env: dict[str, str], shm: Path, workdir: Path, canaries: Canaries, secrets: str
) -> None:
    env = dict(ztr_env, ZTR_SECRETS=secrets, ZTR_LOG_LEVEL="debug")
    proc = run_ztr([ZTR, "run", "--", PYTHON, "-c", "print('child ran')"], env, workdir)
    assert proc.returncode in (65, 66)
    assert b"child ran" not in proc.stdout  # the app never starts without its secrets
    assert_no_leak(proc, canaries, [shm, workdir], [])


def test_leaks_canary_detector_finds_a_planted_value(shm: Path, canaries: Canaries) -> None:
    planted = shm / "planted"
    planted.write_bytes(b"prefix " + canaries.json_password.encode() + b" suffix")
    assert files_holding([shm], canaries.all()) == [str(planted)]
    assert os.fspath(planted) in files_holding([shm], [canaries.json_password[7:23].encode()])
