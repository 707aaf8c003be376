"""Writers: every format gives back exactly the values that went in; files are atomic,
mode- and owner-correct, on tmpfs unless allowed otherwise, and not rewritten when unchanged."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.errors import OutputError, SecretValueError
from sidecar.outputs import (
    MANIFEST_NAME,
    DirectoryWriter,
    EnvFileWriter,
    directory_mode,
    filesystem_type,
    quote_dotenv,
    render_shell,
)

# Any text an environment variable can hold: every code point but NUL (and lone surrogates,
# which are not text). Names get a prefix so no shell special variable (PATH, IFS) is hit.
VALUES = st.text(alphabet=st.characters(blacklist_characters="\x00",
                                        blacklist_categories=("Cs",)), max_size=40)
NASTY = st.sampled_from(["", " lead", "trail ", "'", '"', "\\", "$HOME", "${HOME}", "`id`",
                         "$(id)", "a\nb", "a\r\nb", "\n", "\\n", "#", "x # c", "=", "é✓😀",
                         "'\\''", "\t", "\\\"", "a\\", "!", "%s", "\x7f\x01"])
ENV_VALUES = st.dictionaries(
    st.from_regex(r"ZV_[A-Z0-9_]{0,8}", fullmatch=True), st.one_of(VALUES, NASTY),
    min_size=1, max_size=6)
EXAMPLES = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def source_with_sh(env_file: Path, names: list[str], out: Path) -> dict[str, bytes]:
    """``set -a; . FILE`` in POSIX sh, then each variable printed back into its own file."""
    script = "set -a; . \"$1\"; shift; for n; do eval \"printf %s \\\"\\${$n}\\\"\" > \"$OUT/$n\"; done"
    subprocess.run(["sh", "-c", script, "sh", str(env_file), *names], check=True,
                   env={"OUT": str(out), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    return {name: (out / name).read_bytes() for name in names}


@given(values=ENV_VALUES)
@EXAMPLES
def test_shell_format_sourced_by_sh_gives_back_exact_bytes(shm: Path, values: dict[str, str]) -> None:
    out = shm / "printed"
    out.mkdir(exist_ok=True)
    path = shm / "env.sh"
    EnvFileWriter(str(path), "shell").write(values)
    printed = source_with_sh(path, sorted(values), out)
    assert printed == {name: value.encode("utf-8") for name, value in values.items()}


@given(values=ENV_VALUES)
@EXAMPLES
def test_json_format_loads_back_values(shm: Path, values: dict[str, str]) -> None:
    path = shm / "env.json"
    EnvFileWriter(str(path), "json").write(values)
    assert json.loads(path.read_bytes()) == values


@given(values=ENV_VALUES)
@EXAMPLES
def test_directory_files_hold_exactly_each_value(shm: Path, values: dict[str, str]) -> None:
    directory = Path(tempfile.mkdtemp(dir=shm)) / "secrets"  # fresh for each example
    DirectoryWriter(str(directory)).write(values)
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.name != MANIFEST_NAME} == {
        name: value.encode("utf-8") for name, value in values.items()}


def test_shell_format_quotes_every_value() -> None:
    assert render_shell({"B": "it's", "A": "$x"}) == b"export A='$x'\nexport B='it'\\''s'\n"


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("plain", "'plain'"),
        ("", "''"),
        ("two\nlines $HOME #x", "'two\nlines $HOME #x'"),
        ("C:\\dir\\file", "'C:\\dir\\file'"),
        ("it's", '"it\'s"'),
        ("it's\r\n", '"it\'s\\r\n"'),
        ("it's C:\\dir", '"it\'s C:\\dir"'),
        ('{"a": "it\'s"}', '{"a": "it\'s"}'),
        ("it's\\\\", "it's\\\\"),
        ('say "hi"', "'say \"hi\"'"),
    ],
    ids=["plain", "empty", "multiline", "backslashes", "apostrophe", "cr-escaped",
         "apostrophe-backslash", "json-bare", "apostrophe-double-backslash-bare", "double-quotes"],
)
def test_dotenv_quote_prefers_single_then_double_then_bare(value: str, token: str) -> None:
    assert quote_dotenv(value) == token


@pytest.mark.parametrize(
    "value",
    ["${HOME}", "pa${X:-y}ss", "it's \"q\" #", "'\"\n", "it's\\\\ ", " it's \"q\"", "it's\\t\"#",
     "'starts-with-quote\""],
)
def test_dotenv_quote_uncarried_value_is_none(value: str) -> None:
    assert quote_dotenv(value) is None


def test_dotenv_format_refuses_with_65_naming_variable_not_value(shm: Path) -> None:
    with pytest.raises(SecretValueError) as caught:
        EnvFileWriter(str(shm / "app.env"), "dotenv").write({"A": "1", "DB_PASSWORD": "x${SECRET}y"})
    assert caught.value.exit_code == 65
    assert str(caught.value).startswith("DB_PASSWORD: --format dotenv cannot")
    assert "x${SECRET}y" not in str(caught.value)
    assert not (shm / "app.env").exists()


# -- file mode, owner ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["shell", "dotenv", "json"])
def test_env_file_default_mode_is_0600(shm: Path, fmt: str) -> None:
    path = shm / "env"
    old = os.umask(0)  # the mode must not depend on the umask
    try:
        EnvFileWriter(str(path), fmt).write({"A": "1"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o400, 0o440, 0o640, 0o644])
def test_writers_file_mode_is_applied(shm: Path, mode: int) -> None:
    EnvFileWriter(str(shm / "env"), "shell", mode=mode).write({"A": "1"})
    DirectoryWriter(str(shm / "dir"), mode=mode).write({"A": "1", "B": "2"})
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [shm / "env", shm / "dir" / "A", shm / "dir" / "B"]}
    assert modes == {mode}


def test_writers_mode_change_alone_rewrites(shm: Path) -> None:
    path = shm / "env"
    EnvFileWriter(str(path), "shell", mode=0o600).write({"A": "1"})
    assert EnvFileWriter(str(path), "shell", mode=0o640).write({"A": "1"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_writers_owner_is_applied_as_root(shm: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"--owner needs root to chown; this test runs as uid {os.geteuid()}")
    EnvFileWriter(str(shm / "env"), "shell", owner=(12345, 23456)).write({"A": "1"})
    DirectoryWriter(str(shm / "dir"), owner=(12345, 12345)).write({"A": "1"})
    info, dir_info = (shm / "env").stat(), (shm / "dir" / "A").stat()
    assert (info.st_uid, info.st_gid) == (12345, 23456)
    assert (dir_info.st_uid, dir_info.st_gid) == (12345, 12345)
    # A different owner alone is a reason to rewrite.
    assert EnvFileWriter(str(shm / "env"), "shell", owner=(12346, 23456)).write({"A": "1"})
    assert (shm / "env").stat().st_uid == 12346


def test_writers_owner_without_root_fails_with_73(shm: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("as root every chown succeeds")
    with pytest.raises(OutputError, match="setting an owner needs root"):
        EnvFileWriter(str(shm / "env"), "shell", owner=(0, 0)).write({"A": "1"})


# -- tmpfs ------------------------------------------------------------------------------------


def disk_directory(tmp_path: Path) -> Path:
    for candidate in (tmp_path, Path(__file__).resolve().parent, Path.home()):
        if filesystem_type(str(candidate)) not in ("tmpfs", "ramfs", "unknown"):
            return candidate
    pytest.skip("no directory on a disk filesystem found to test the tmpfs refusal")


def test_filesystem_type_dev_shm_is_tmpfs() -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    assert filesystem_type("/dev/shm") == "tmpfs"


def test_env_file_on_disk_is_refused_with_73(tmp_path: Path) -> None:
    base = disk_directory(tmp_path)
    target = base / "ztr-refused" / "env"
    with pytest.raises(OutputError) as caught:
        EnvFileWriter(str(target), "shell").write({"A": "1"})
    assert caught.value.exit_code == 73
    assert "not tmpfs" in str(caught.value)
    assert "--allow-disk" in str(caught.value)
    assert not target.exists()


def test_env_file_on_disk_with_allow_disk_is_written(tmp_path: Path) -> None:
    target = disk_directory(tmp_path) / f"ztr-allowed-{os.getpid()}" / "env"
    try:
        assert EnvFileWriter(str(target), "shell", allow_disk=True).write({"A": "1"})
        assert target.read_bytes() == b"export A='1'\n"
    finally:
        target.unlink(missing_ok=True)
        target.parent.rmdir()


def test_directory_writer_on_disk_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="not tmpfs"):
        DirectoryWriter(str(disk_directory(tmp_path) / "ztr-secrets")).write({"A": "1"})


def test_env_file_parent_is_a_file_fails_with_73(shm: Path) -> None:
    (shm / "file").write_text("x")
    with pytest.raises(OutputError) as caught:
        EnvFileWriter(str(shm / "file" / "env"), "shell").write({"A": "1"})
    assert caught.value.exit_code == 73
    assert str(shm / "file") in str(caught.value)


def test_env_file_target_is_a_directory_fails_with_73(shm: Path) -> None:
    (shm / "env").mkdir()
    with pytest.raises(OutputError, match="cannot write"):
        EnvFileWriter(str(shm / "env"), "shell").write({"A": "1"})
    assert sorted(p.name for p in shm.iterdir()) == ["env"]  # no temp file left behind


# -- atomic, unchanged ------------------------------------------------------------------------


def test_env_file_replace_is_atomic_under_a_concurrent_reader(shm: Path) -> None:
    path = shm / "env"
    big = {f"K{i}": "x" * 2000 for i in range(64)}  # ~130 KB: many write() calls' worth
    versions = [dict(big, GEN=str(n)) for n in range(2)]
    writer = EnvFileWriter(str(path), "json")
    writer.write(versions[0])
    expected = {path.read_bytes()}
    writer.write(versions[1])
    expected.add(path.read_bytes())
    seen: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(path.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(200):
            writer.write(versions[n % 2])
    finally:
        done.set()
        reader.join(timeout=10)
    assert seen
    assert set(seen) <= expected  # never a partial or empty file


def test_env_file_unchanged_values_are_not_rewritten(shm: Path) -> None:
    path = shm / "env"
    writer = EnvFileWriter(str(path), "shell")
    assert writer.write({"A": "1", "B": "2"})
    before = path.stat()
    assert not writer.write({"B": "2", "A": "1"})
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert writer.write({"A": "1", "B": "3"})
    assert path.stat().st_ino != before.st_ino  # replaced by rename, not rewritten in place


def test_directory_writer_unchanged_not_rewritten_and_removed_names_deleted(shm: Path) -> None:
    directory = shm / "secrets"
    writer = DirectoryWriter(str(directory))
    writer.write({"A": "1", "B": "2"})
    inode = (directory / "A").stat().st_ino
    assert not writer.write({"A": "1", "B": "2"})
    assert writer.write({"A": "1"})
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST_NAME, "A"]
    assert (directory / "A").stat().st_ino == inode


def test_writers_leave_no_temp_files(shm: Path) -> None:
    for n in range(3):
        EnvFileWriter(str(shm / "env"), "dotenv").write({"A": str(n)})
    assert [p.name for p in shm.iterdir()] == ["env"]


def test_env_file_created_directory_is_private(shm: Path) -> None:
    EnvFileWriter(str(shm / "new" / "deeper" / "env"), "shell").write({"A": "1"})
    assert stat.S_IMODE((shm / "new" / "deeper").stat().st_mode) == 0o700


# -- directories ztr creates: mode from the file mode, owner ----------------------------------


APP_USER = (65534, 65534)  # nobody: a user other than ztr's, as the app would be


def as_app_user(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as APP_USER with no supplementary groups (root only)."""
    return subprocess.run(["setpriv", f"--reuid={APP_USER[0]}", f"--regid={APP_USER[1]}",
                           "--clear-groups", *argv], capture_output=True, text=True, timeout=20)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(f"--owner needs root to chown; this test runs as uid {os.geteuid()}")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot act as another user")


@pytest.mark.parametrize(("file_mode", "expected"),
                         [(0o600, 0o700), (0o640, 0o750), (0o644, 0o755), (0o400, 0o700),
                          (0o440, 0o750), (0o604, 0o705), (0o660, 0o750), (0o000, 0o700)])
def test_directory_mode_gives_x_where_the_file_mode_gives_access(file_mode: int, expected: int) -> None:
    assert directory_mode(file_mode) == expected


@pytest.mark.parametrize("file_mode", [0o600, 0o640, 0o644])
def test_writers_created_directories_get_mode_from_file_mode_whatever_the_umask(
        shm: Path, file_mode: int) -> None:
    old = os.umask(0o077)
    try:
        EnvFileWriter(str(shm / "a" / "b" / "env"), "shell", mode=file_mode).write({"A": "1"})
        DirectoryWriter(str(shm / "c" / "secrets"), mode=file_mode).write({"A": "1"})
    finally:
        os.umask(old)
    created = [shm / "a", shm / "a" / "b", shm / "c", shm / "c" / "secrets"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in created} == {directory_mode(file_mode)}
    assert not [p for p in shm.rglob("*") if p.name.endswith(".ztr-tmp")]


def test_writers_created_directories_get_owner_as_root(shm: Path) -> None:
    needs_root()
    EnvFileWriter(str(shm / "a" / "b" / "env"), "shell", owner=APP_USER).write({"A": "1"})
    DirectoryWriter(str(shm / "secrets"), owner=APP_USER).write({"A": "1"})
    for created in (shm / "a", shm / "a" / "b", shm / "secrets"):
        info = created.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (*APP_USER, 0o700)


def test_writers_existing_directories_are_left_alone(shm: Path) -> None:
    (shm / "kept").mkdir()
    (shm / "kept").chmod(0o711)
    before = (shm / "kept").stat()
    EnvFileWriter(str(shm / "kept" / "env"), "shell", mode=0o644).write({"A": "1"})
    DirectoryWriter(str(shm / "kept"), mode=0o640).write({"A": "1"})
    EnvFileWriter(str(shm / "kept" / "new" / "env"), "shell", mode=0o644).write({"A": "1"})
    after = (shm / "kept").stat()
    # Neither writing into it nor creating a directory under it changes it.
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)


@pytest.mark.parametrize("output", ["file", "dir"])
def test_writers_root_with_owner_set_up_app_user_reads_its_file(shm: Path, output: str) -> None:
    """The documented set-up: ztr as root with --owner, the app as that user, the output in a
    directory ztr creates under a root-owned 0700 mount point."""
    needs_root()
    shm.chmod(0o711)  # the mount point: enterable, as a volume would be
    if output == "file":
        target = shm / "run" / "app.env"
        EnvFileWriter(str(target), "shell", owner=APP_USER).write({"A": "s3cr3t"})
    else:
        target = shm / "run" / "secrets" / "A"
        DirectoryWriter(str(target.parent), owner=APP_USER).write({"A": "s3cr3t"})
    done = as_app_user("cat", str(target))
    assert done.returncode == 0, done.stderr
    assert "s3cr3t" in done.stdout
    others = as_app_user("ls", str(shm / "run"))
    assert others.returncode == 0, others.stderr


# -- the directory writer's record: remove what it wrote, never anything else ----------------------


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_directory_writer_restart_removes_files_of_variables_gone_meanwhile(shm: Path) -> None:
    directory = shm / "secrets"
    DirectoryWriter(str(directory)).write({"A": "1", "B": "2", "C": "3"})
    restarted = DirectoryWriter(str(directory))  # a new ztr: nothing in memory
    restarted.prepare()
    assert restarted.write({"A": "1"})
    assert names_in(directory) == [MANIFEST_NAME, "A"]
    assert json.loads((directory / MANIFEST_NAME).read_bytes()) == {"written": ["A"]}
    assert not DirectoryWriter(str(directory)).write({"A": "1"})


def test_directory_writer_never_removes_files_it_did_not_write(shm: Path) -> None:
    directory = shm / "secrets"
    directory.mkdir()
    for name in ("MINE", "README", ".hidden"):
        (directory / name).write_text("someone else's")
    writer = DirectoryWriter(str(directory))
    writer.write({"A": "1"})
    assert writer.write({})
    assert names_in(directory) == [MANIFEST_NAME, ".hidden", "MINE", "README"]
    DirectoryWriter(str(directory)).write({})
    assert (directory / "MINE").read_text() == "someone else's"


@pytest.mark.parametrize("record", [b"not json", b"[]", b'{"written": "A"}', b"\xff\xfe",
                                    b'{"written": ["../outside", "/etc/x", ".hidden", "", 7, "OK"]}'])
def test_directory_writer_bad_record_removes_nothing_unlisted(shm: Path, record: bytes) -> None:
    directory = shm / "secrets"
    directory.mkdir()
    (shm / "outside").write_text("keep")
    (directory / ".hidden").write_text("keep")
    (directory / "OTHER").write_text("keep")
    (directory / "OK").write_text("listed: ztr wrote it")
    (directory / MANIFEST_NAME).write_bytes(record)
    DirectoryWriter(str(directory)).write({"A": "1"})
    assert (shm / "outside").read_text() == "keep"
    assert names_in(directory) == sorted([MANIFEST_NAME, ".hidden", "A", "OTHER"] + (
        [] if b'"OK"' in record else ["OK"]))
    assert json.loads((directory / MANIFEST_NAME).read_bytes()) == {"written": ["A"]}


def test_directory_writer_listed_name_now_a_directory_or_link_is_kept(shm: Path) -> None:
    directory = shm / "secrets"
    DirectoryWriter(str(directory)).write({"A": "1", "B": "2"})
    (directory / "A").unlink()
    (directory / "A").mkdir()
    (directory / "B").unlink()
    (shm / "target").write_text("keep")
    (directory / "B").symlink_to(shm / "target")
    DirectoryWriter(str(directory)).write({})
    assert names_in(directory) == [MANIFEST_NAME, "A", "B"]
    assert (shm / "target").read_text() == "keep"


def test_directory_writer_records_names_before_writing_them(shm: Path) -> None:
    """A write that fails half-way (B cannot be written) leaves A on the record, so the next ztr
    removes it when it is no longer declared."""
    directory = shm / "secrets"
    directory.mkdir()
    (directory / "B").mkdir()  # a directory where B's file should go
    with pytest.raises(OutputError):
        DirectoryWriter(str(directory)).write({"A": "1", "B": "2"})
    assert (directory / "A").read_text() == "1"
    assert json.loads((directory / MANIFEST_NAME).read_bytes()) == {"written": ["A", "B"]}
    DirectoryWriter(str(directory)).write({"C": "3"})
    assert names_in(directory) == [MANIFEST_NAME, "B", "C"]


def _killed_write_leftover(directory: Path, name: str) -> Path:
    """A temp file named as the writer names them, as a write killed before its rename leaves."""
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".ztr-tmp", dir=directory)
    os.write(fd, b"half a secret")
    os.close(fd)
    return Path(path)


def test_directory_writer_prepare_removes_its_temp_files_left_by_a_killed_write(shm: Path) -> None:
    directory = shm / "secrets"
    directory.mkdir()
    stale = [_killed_write_leftover(directory, name) for name in ("A", "GONE", MANIFEST_NAME)]
    kept = [directory / ".A.abcdefgh.ztr-tmp.bak", directory / ".not-a-var.abcdefgh.ztr-tmp",
            directory / "A.abcdefgh.ztr-tmp"]
    for path in kept:
        path.write_text("not ours")
    (directory / ".B.abcdefgh.ztr-tmp").mkdir()  # not a regular file
    DirectoryWriter(str(directory)).prepare()
    assert not [path for path in stale if path.exists()]
    assert all(path.exists() for path in kept)
    assert (directory / ".B.abcdefgh.ztr-tmp").is_dir()


def test_env_file_prepare_removes_only_its_own_temp_files(shm: Path) -> None:
    mine = _killed_write_leftover(shm, "app.env")
    other = _killed_write_leftover(shm, "other.env")
    EnvFileWriter(str(shm / "app.env"), "dotenv").prepare()
    assert not mine.exists()
    assert other.exists()
