"""The image's entrypoint.sh (dispatch, wait-and-source, exec) and the lint of it and the Dockerfile."""

from __future__ import annotations

import ast
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.outputs import render_shell

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "entrypoint.sh"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_TEST = ROOT / "tests" / "image" / "run.sh"
BIN = Path(sys.executable).parent
SUBCOMMANDS = ("init", "watch", "run", "check", "iam-policy", "demo", "plan")
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_NOPERM = 77

# Stand-ins for the console scripts: print which one ran, its PID and its argv, one per line.
FAKE = '#!/bin/sh\nprintf "%s\\n" "{name}" "$$" "$@"\n'


def _tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]'"
    return found


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    for name in ("ztr", "ztr-run"):
        script = directory / name
        script.write_text(FAKE.format(name=name))
        script.chmod(0o755)
    return directory


def _environ(fake_bin: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{fake_bin}:/usr/bin:/bin", "LC_ALL": "C", **extra}


def _start(args: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(ENTRYPOINT), *args], env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _run(args: list[str], env: Mapping[str, str], timeout: float = 20) -> tuple[int, int, str, str]:
    """(exit code, pid of the entrypoint process, stdout, stderr)."""
    proc = _start(args, env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, proc.pid, out.decode(), err.decode()


def _write_atomically(path: Path, data: bytes) -> None:
    """As ztr does: a temp file in the same directory, then rename."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    temp.chmod(0o600)
    os.replace(temp, path)


# --- lint ---------------------------------------------------------------------------------------

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


# --- dispatch -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "expected"),
    [
        *[([command, "--flag", "a b"], ["ztr", command, "--flag", "a b"]) for command in SUBCOMMANDS],
        (["--help"], ["ztr", "--help"]),
        (["-h"], ["ztr", "-h"]),
        (["--version"], ["ztr", "--version"]),
        (["myapp", "--port", "80", "two words", ""],
         ["ztr-run", "--", "myapp", "--port", "80", "two words", ""]),
        (["sh", "-c", 'echo "$HOME" *'], ["ztr-run", "--", "sh", "-c", 'echo "$HOME" *']),
        (["initialize"], ["ztr-run", "--", "initialize"]),
        (["/usr/bin/run"], ["ztr-run", "--", "/usr/bin/run"]),
        (["--", "run", "x"], ["ztr-run", "--", "run", "x"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_entrypoint_dispatch_execs_ztr_or_ztr_run(fake_bin: Path, args: list[str],
                                                  expected: list[str]) -> None:
    code, pid, out, err = _run(args, _environ(fake_bin))
    assert code == 0, err
    name, child_pid, *argv = out.split("\n")[:-1]
    assert [name, *argv] == expected
    assert int(child_pid) == pid  # exec: the shell is gone, ztr has its PID


@pytest.mark.parametrize("args", [[], ["--"]], ids=["no-args", "only-dashdash"])
def test_entrypoint_without_command_prints_usage_exits_64(fake_bin: Path, args: list[str]) -> None:
    code, _, out, err = _run(args, _environ(fake_bin))
    assert code == EX_USAGE
    assert out == ""
    assert err.startswith("usage: entrypoint.sh")


def test_entrypoint_child_exit_code_is_passed_through(fake_bin: Path) -> None:
    (fake_bin / "ztr-run").write_text("#!/bin/sh\nexit 7\n")
    code, *_ = _run(["app"], _environ(fake_bin))
    assert code == 7


# --- wait-and-source ----------------------------------------------------------------------------

APP_DUMP = ("import os, sys; "
            "sys.stdout.write(repr(({names!r}, os.getpid(), [os.environ.get(n) for n in {names!r}])))")


def _app(*names: str) -> list[str]:
    """An app that prints its PID and the named variables (None when unset)."""
    return [sys.executable, "-c", APP_DUMP.format(names=names)]


def test_wait_and_source_file_appears_later_app_sees_values_as_same_pid(fake_bin: Path,
                                                                         tmp_path: Path) -> None:
    env_file = tmp_path / "shared" / "env"
    env_file.parent.mkdir()
    values = {"DB_PASSWORD": "s3cr3t", "API_KEY": "k-1"}
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file), ZTR_WAIT_TIMEOUT="10")
    proc = _start(_app("DB_PASSWORD", "API_KEY", "ZTR_WAIT_FOR_FILE"), env)
    writer = threading.Timer(0.6, _write_atomically, (env_file, render_shell(values)))
    started = time.monotonic()
    writer.start()
    out, err = proc.communicate(timeout=20)
    writer.join()
    assert proc.returncode == 0, err.decode()
    assert time.monotonic() - started >= 0.5  # it waited for the file
    names, pid, seen = ast.literal_eval(out.decode())
    assert pid == proc.pid  # exec "$@": the app replaced the shell, no ztr-run in between
    assert dict(zip(names, seen, strict=True)) == {**values, "ZTR_WAIT_FOR_FILE": None}
    assert err == b""


def test_wait_and_source_timeout_exits_69_with_one_line(fake_bin: Path, tmp_path: Path) -> None:
    missing = tmp_path / "never"
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(missing), ZTR_WAIT_TIMEOUT="1")
    started = time.monotonic()
    code, _, out, err = _run(["touch", str(tmp_path / "ran")], env)
    elapsed = time.monotonic() - started
    assert code == EX_UNAVAILABLE
    assert out == ""
    assert err.count("\n") == 1
    assert str(missing) in err
    assert "ZTR_WAIT_FOR_FILE" in err
    assert 1 <= elapsed < 5  # at least the bound, whole seconds
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("raw", ["abc", "5ms", "-1", "1.5", "s", "10x"])
def test_wait_and_source_bad_timeout_exits_64(fake_bin: Path, tmp_path: Path, raw: str) -> None:
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(tmp_path / "env"), ZTR_WAIT_TIMEOUT=raw)
    code, _, _, err = _run(["true"], env)
    assert code == EX_USAGE
    assert "ZTR_WAIT_TIMEOUT" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("raw", ["0", "2", "2s", "1m", "1h", "010"])
def test_wait_and_source_timeout_accepts_duration_words(fake_bin: Path, tmp_path: Path, raw: str) -> None:
    env_file = tmp_path / "env"
    env_file.write_bytes(render_shell({"A": "1"}))
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file), ZTR_WAIT_TIMEOUT=raw)
    code, _, out, err = _run(["sh", "-c", 'printf %s "$A"'], env)
    assert (code, out) == (0, "1"), err


def test_wait_and_source_without_app_exits_64(fake_bin: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_bytes(b"")
    for args in ([], ["--"]):
        code, _, _, err = _run(args, _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file)))
        assert code == EX_USAGE
        assert err.startswith("usage:")


def test_wait_and_source_dashdash_and_subcommand_names_are_the_app(fake_bin: Path, tmp_path: Path) -> None:
    """In wait mode the arguments are always the app: no ztr, no ztr-run."""
    env_file = tmp_path / "env"
    env_file.write_bytes(render_shell({"A": "1"}))
    (fake_bin / "run").write_text('#!/bin/sh\nprintf "%s" "$A $1"\n')
    (fake_bin / "run").chmod(0o755)
    code, _, out, err = _run(["--", "run", "x"], _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file)))
    assert (code, out) == (0, "1 x"), err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_wait_and_source_unreadable_file_exits_77(fake_bin: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_bytes(render_shell({"A": "1"}))
    env_file.chmod(0)
    code, _, _, err = _run(["true"], _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file)))
    assert code == EX_NOPERM
    assert err.count("\n") == 1


TRICKY = {
    "SINGLE": "it's 'quoted'",
    "DOUBLE": 'say "hi"',
    "DOLLAR": "$HOME ${PATH} $(id) `id` $$",
    "NEWLINES": "line one\nline two\n\n",
    "LEADING_NEWLINE": "\nx",
    "BACKSLASH": "back\\slash \\n \\' \\\\",
    "GLOB": "* ? [a-z] ~",
    "EMPTY": "",
    "SPACES": "  padded  ",
    "UNICODE": "pässwörd ✓ 秘密",
    "JSON": '{"user": "app", "password": "p\'w\\"d"}',
    "EQUALS": "a=b; c=d && e || f | g > h < i",
}


def test_wait_and_source_tricky_values_survive(fake_bin: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_bytes(render_shell(TRICKY))
    code, pid, out, err = _run(_app(*TRICKY), _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file)))
    assert code == 0, err
    names, app_pid, seen = ast.literal_eval(out)
    assert app_pid == pid
    assert dict(zip(names, seen, strict=True)) == TRICKY


def test_wait_and_source_hand_written_format_survives(fake_bin: Path, tmp_path: Path) -> None:
    """The format by hand, independent of ztr's writer: export NAME='...' with ' as '\\''."""
    value = "it's $x \"y\"\nz\\"
    env_file = tmp_path / "env"
    env_file.write_text("export V='" + value.replace("'", "'\\''") + "'\n")
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file))
    code, _, out, err = _run(["sh", "-c", 'printf %s "$V"'], env)
    assert (code, out) == (0, value), err


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60))
def test_wait_and_source_any_value_round_trips(fake_bin: Path, tmp_path: Path, value: str) -> None:
    env_file = tmp_path / "env-any"
    env_file.write_bytes(render_shell({"V": value}))
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file))
    proc = subprocess.run([str(ENTRYPOINT), sys.executable, "-c",
                           "import os, sys; sys.stdout.buffer.write(os.environb[b'V'])"],
                          env=env, capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == value.encode("utf-8")
