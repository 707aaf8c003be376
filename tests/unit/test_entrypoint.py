"""The image's entrypoint.sh (dispatch, wait-and-source, exec); its lint is in test_lint_image.py.
Every behaviour test runs the script under dash and under bash in POSIX mode."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
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
EX_NOT_FOUND = 127
SHELLS = {"dash": ["dash"], "bash": ["bash", "--posix"]}
APP_USER = (65534, 65534)  # nobody: the app as a user other than ztr's

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


_shell: list[str] = SHELLS["dash"]


@pytest.fixture(autouse=True, params=sorted(SHELLS))
def shell(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which shell runs entrypoint.sh in this test (its #!/bin/sh may be either)."""
    global _shell
    if shutil.which(SHELLS[request.param][0]) is None:
        pytest.skip(f"{request.param} is not installed")
    _shell = SHELLS[request.param]
    yield request.param
    _shell = SHELLS["dash"]


def _entrypoint(*prefix: str) -> list[str]:
    """The command line running entrypoint.sh with this test's shell, after ``prefix``."""
    return [*prefix, *_shell, str(ENTRYPOINT)]


def _start(args: list[str], env: Mapping[str, str], *, prefix: tuple[str, ...] = ()
           ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*_entrypoint(*prefix), *args], env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _run(args: list[str], env: Mapping[str, str], timeout: float = 20, *,
         prefix: tuple[str, ...] = ()) -> tuple[int, int, str, str]:
    """(exit code, pid of the entrypoint process, stdout, stderr)."""
    proc = _start(args, env, prefix=prefix)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, proc.pid, out.decode(), err.decode()


def _as_app_user() -> tuple[str, ...]:
    """A prefix running the entrypoint as APP_USER; skips unless root with setpriv."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run the entrypoint as another user")
    return ("setpriv", f"--reuid={APP_USER[0]}", f"--regid={APP_USER[1]}", "--clear-groups")


def _one_line(err: str) -> str:
    assert err.count("\n") == 1, err
    assert err.startswith("entrypoint: "), err
    return err


def _write_atomically(path: Path, data: bytes) -> None:
    """As ztr does: a temp file in the same directory, then rename."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    temp.chmod(0o600)
    os.replace(temp, path)


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


@pytest.mark.parametrize("raw", ["abc", "-1", "s", "10x", "1e10", "99999999999999999999",
                                 "1.", ".5", "5 s", "5S", "0x10", "1h1m", "+5", "1,5", "8761h",
                                 "1000000000s", "9" * 400 + "h", "5\ts"])
def test_wait_and_source_bad_timeout_exits_64(fake_bin: Path, tmp_path: Path, raw: str) -> None:
    ran = tmp_path / "ran"
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(tmp_path / "env"), ZTR_WAIT_TIMEOUT=raw)
    code, _, _, err = _run(["touch", str(ran)], env)
    assert code == EX_USAGE
    assert "ZTR_WAIT_TIMEOUT" in _one_line(err)
    assert not ran.exists()


@pytest.mark.parametrize("raw", ["0", "2", "2s", "1m", "1h", "010", "250ms", "1.5", "0.5m",
                                 " 2s ", "1.25h", "0.001s", "8760h"])
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


def test_wait_and_source_dashdash_then_subcommand_name_is_the_app(fake_bin: Path, tmp_path: Path) -> None:
    """After --, the arguments are the app, run without ztr-run in wait mode."""
    env_file = tmp_path / "env"
    env_file.write_bytes(render_shell({"A": "1"}))
    (fake_bin / "run").write_text('#!/bin/sh\nprintf "%s" "$A $1"\n')
    (fake_bin / "run").chmod(0o755)
    code, _, out, err = _run(["--", "run", "x"], _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file)))
    assert (code, out) == (0, "1 x"), err


def test_wait_and_source_unreadable_file_exits_77(fake_bin: Path, shm: Path) -> None:
    prefix = _as_app_user()
    shm.chmod(0o755)
    env_file = shm / "env"
    env_file.write_bytes(render_shell({"A": "1"}))
    env_file.chmod(0o600)  # root's, as ztr writes it without --owner
    code, _, out, err = _run(["echo", "app started"], _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file)),
                             prefix=prefix)
    assert (code, out) == (EX_NOPERM, "")
    assert "cannot read" in _one_line(err)


@pytest.mark.parametrize("depth", [1, 3], ids=["parent", "grandparent"])
def test_wait_and_source_file_in_directory_it_cannot_enter_exits_77_at_once(
        fake_bin: Path, shm: Path, depth: int) -> None:
    """The file exists, or will, under a directory this user cannot enter: no wait until the
    timeout with a misleading "did not appear", and no app without its secrets."""
    prefix = _as_app_user()
    shm.chmod(0o755)
    locked = shm / "secrets"
    parent = locked / "/".join(["sub"] * (depth - 1)) if depth > 1 else locked
    parent.mkdir(parents=True)
    env_file = parent / "app.env"
    env_file.write_bytes(render_shell({"A": "1"}))
    env_file.chmod(0o644)
    locked.chmod(0o700)  # root's: the app user cannot enter it
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file), ZTR_WAIT_TIMEOUT="30")
    started = time.monotonic()
    code, _, out, err = _run(["echo", "app started"], env, prefix=prefix)
    assert (code, out) == (EX_NOPERM, "")
    assert f"cannot enter {locked}" in _one_line(err)
    assert time.monotonic() - started < 10


def test_wait_and_source_missing_file_in_directory_it_cannot_enter_exits_77(fake_bin: Path,
                                                                           shm: Path) -> None:
    prefix = _as_app_user()
    shm.chmod(0o755)
    (shm / "secrets").mkdir(mode=0o700)
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(shm / "secrets" / "later" / "app.env"))
    code, _, out, err = _run(["echo", "app started"], env, prefix=prefix)
    assert (code, out) == (EX_NOPERM, "")
    assert "cannot enter" in _one_line(err)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_wait_and_source_path_not_a_regular_file_exits_64(fake_bin: Path, tmp_path: Path,
                                                          kind: str) -> None:
    target = tmp_path / "secrets"
    if kind == "directory":
        target.mkdir()
        (target / "A").write_text("1")  # as --output-dir leaves it
    else:
        os.mkfifo(target)
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(target))
    code, _, out, err = _run(["echo", "app started"], env)
    assert (code, out) == (EX_USAGE, "")
    assert "ZTR_WAIT_FOR_FILE" in _one_line(err)


def test_wait_and_source_path_under_a_regular_file_exits_64(fake_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(tmp_path / "file" / "app.env"))
    code, _, out, err = _run(["echo", "app started"], env)
    assert (code, out) == (EX_USAGE, "")
    assert "not a directory" in _one_line(err)


@pytest.mark.parametrize("raw", ["1.5", "1500ms", "0.025m"])
def test_wait_and_source_decimal_timeout_bounds_the_wait(fake_bin: Path, tmp_path: Path,
                                                         raw: str) -> None:
    env = _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(tmp_path / "never"), ZTR_WAIT_TIMEOUT=raw)
    started = time.monotonic()
    code, _, _, err = _run(["true"], env)
    elapsed = time.monotonic() - started
    assert code == EX_UNAVAILABLE
    assert "within 2s" in _one_line(err)  # rounded up to whole seconds
    assert 1.5 <= elapsed < 6


# --- the same dispatch in both modes ------------------------------------------------------------

MODES = {"wrap": {}, "wait": {"ZTR_WAIT_FOR_FILE": "/nonexistent/ztr-entrypoint-test/env"}}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("args", [["init", "--output", "/x"], ["watch"], ["run", "--", "app"],
                                  ["check"], ["iam-policy"], ["demo"], ["plan"], ["--version"],
                                  ["-h"]], ids=lambda args: args[0])
def test_entrypoint_ztr_command_runs_ztr_in_both_modes(fake_bin: Path, mode: str,
                                                       args: list[str]) -> None:
    (fake_bin / "ztr").write_text('#!/bin/sh\nprintf "%s\\n" ztr "$$" "${ZTR_WAIT_FOR_FILE-unset}" "$@"\n')
    code, pid, out, err = _run(args, _environ(fake_bin, **MODES[mode]))
    assert code == 0, err
    name, child_pid, wait_var, *argv = out.split("\n")[:-1]
    assert (name, int(child_pid), wait_var, argv) == ("ztr", pid, "unset", args)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_entrypoint_ztr_command_without_ztr_exits_127_in_both_modes(fake_bin: Path, mode: str) -> None:
    (fake_bin / "ztr").unlink()
    code, _, out, err = _run(["run", "x"], _environ(fake_bin, **MODES[mode]))
    assert (code, out) == (EX_NOT_FOUND, "")
    assert "put -- before it" in _one_line(err)


def test_entrypoint_dashdash_then_ztr_command_name_is_the_app_in_both_modes(fake_bin: Path,
                                                                         tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_bytes(render_shell({"A": "1"}))
    (fake_bin / "run").write_text('#!/bin/sh\nprintf "%s" "app $A $1"\n')
    (fake_bin / "run").chmod(0o755)
    _, _, wrapped, _ = _run(["--", "run", "x"], _environ(fake_bin))
    assert wrapped.split("\n")[2:5] == ["--", "run", "x"]  # ztr-run -- run x
    code, _, out, err = _run(["--", "run", "x"], _environ(fake_bin, ZTR_WAIT_FOR_FILE=str(env_file)))
    assert (code, out) == (0, "app 1 x"), err


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
    proc = subprocess.run([*_entrypoint(), sys.executable, "-c",
                           "import os, sys; sys.stdout.buffer.write(os.environb[b'V'])"],
                          env=env, capture_output=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == value.encode("utf-8")
