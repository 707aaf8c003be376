"""Env-file and directory writers: rendered formats, atomic replace, file mode, tmpfs check."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from . import refs
from .errors import OutputError, SecretValueError

MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
TEMP_SUFFIX = ".ztr-tmp"
# tempfile's names: PREFIX + 8 characters of [a-z0-9_] + SUFFIX, with PREFIX ".NAME.".
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))
# The record of the files a DirectoryWriter wrote, kept in the directory itself so that a
# restarted ztr removes what an earlier one wrote, and nothing else. Two dots, like the
# "..data" of a Kubernetes secret volume, which readers of such directories skip.
MANIFEST_NAME = "..ztr-written"


def directory_mode(file_mode: int) -> int:
    """The mode of a directory ztr creates for files of ``file_mode``: rwx for its owner, and
    r-x for group or others when the file mode gives them any access (0600 -> 0700,
    0640 -> 0750, 0644 -> 0755): whoever may read a file may reach it."""
    mode = 0o700
    if file_mode & 0o070:
        mode |= 0o050
    if file_mode & 0o007:
        mode |= 0o005
    return mode


def render_shell(values: Mapping[str, str]) -> bytes:
    """``export NAME='...'`` lines: POSIX sh gives back the exact bytes for any value, since
    nothing is special inside single quotes except the quote itself, closed and escaped."""
    lines = [
        f"export {name}='" + value.replace("'", "'\\''") + "'\n" for name, value in sorted(values.items())
    ]
    return "".join(lines).encode("utf-8")


# What python-dotenv expands when it interpolates (its default): ``${NAME}`` and
# ``${NAME:-default}``, in every value, quoted or not (python-dotenv 1.x resolves variables after
# parsing, so quoting cannot protect a value from it).
_PYTHON_DOTENV_REFERENCE = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")
# Characters trimmed from the ends of an unquoted value by either reader: JavaScript's trim() and
# Python's str.isspace() (the union of both, so no reader strips a character we kept).
_TRIMMED = frozenset("\t\n\v\f\r \x1c\x1d\x1e\x1f\x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff"
                     + "".join(chr(c) for c in range(0x2000, 0x200B)))
# A backslash in double quotes followed by one of these is decoded by python-dotenv ("\\t" is a
# tab) and not by Node's dotenv, which only turns "\\n" and "\\r" into line breaks.
_DECODED_AFTER_BACKSLASH = frozenset("\\'\"abfnrtv\r")
_QUOTES = frozenset("'\"`")
# Node's dotenv strips a pair of quotes around any "line" of a value (a multiline regex), and
# JavaScript counts U+2028 and U+2029 as line breaks: a one-line unquoted value must not hold
# such a quoted line after one of them.
_NODE_STRIPS_QUOTES = re.compile("(?:^|(?<=[\u2028\u2029]))(['\"`]).*\\1(?=\\Z|[\u2028\u2029])",
                                 re.DOTALL)


def quote_dotenv(value: str) -> str | None:
    """The value as a dotenv token that Node's dotenv (16-18, both parsers) and python-dotenv
    (with and without interpolation) all read back exactly, or None if there is none.

    In order of preference:
    - ``'...'`` (literal in both; may span lines): no ``'``, no CR (both readers turn a raw CR
      into LF), no ``\\\\`` (python-dotenv decodes it) and no trailing backslash.
    - ``"..."`` with CR written as ``\\r`` (both decode it; LF stays literal): no ``"`` (Node's
      dotenv keeps ``\\"`` as written) and every backslash followed by a character that neither
      reader decodes after it.
    - unquoted (one line, literal in both): no ``#``, no CR or LF, no quote at the start, no
      quoted line after U+2028/U+2029, and no character either reader trims at either end.
    A ``${...}`` reference is never carried: python-dotenv's default interpolation expands it in
    any quoting.
    """
    if _PYTHON_DOTENV_REFERENCE.search(value):
        return None
    if "'" not in value and "\r" not in value and "\\\\" not in value and not value.endswith("\\"):
        return f"'{value}'"
    if '"' not in value and all(
        index + 1 < len(value) and value[index + 1] not in _DECODED_AFTER_BACKSLASH
        for index, char in enumerate(value) if char == "\\"
    ):
        return '"' + value.replace("\r", "\\r") + '"'
    if (value and "#" not in value and "\n" not in value and "\r" not in value
            and value[0] not in _QUOTES and not _NODE_STRIPS_QUOTES.search(value)
            and value[0] not in _TRIMMED and value[-1] not in _TRIMMED):
        return value
    return None


def render_dotenv(values: Mapping[str, str]) -> bytes:
    """``NAME=token`` lines, each value quoted by ``quote_dotenv``.

    Raises SecretValueError (65) naming the first variable no dotenv quoting carries.
    """
    lines = []
    for name, value in sorted(values.items()):
        token = quote_dotenv(value)
        if token is None:
            raise SecretValueError(
                f"{name}: --format dotenv cannot hold this value so that Node's dotenv and "
                "python-dotenv both read it back exactly; use --format shell or json, or "
                "--output-dir (one file per variable), which carry any value"
            )
        lines.append(f"{name}={token}\n")
    return "".join(lines).encode("utf-8")


def render_json(values: Mapping[str, str]) -> bytes:
    return (json.dumps(dict(sorted(values.items())), ensure_ascii=False, indent=2) + "\n").encode("utf-8")


RENDERERS = {"shell": render_shell, "dotenv": render_dotenv, "json": render_json}


def filesystem_type(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (longest mount point that prefixes it)."""
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                mount_point = left.split()[4].replace("\\040", " ")
                fs_type = right.split()[0] if right else "unknown"
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, fs_type
    except OSError:
        return "unknown"
    return best_type


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _fail(path: Path, action: str, exc: OSError) -> OutputError:
    hints = {
        errno.ENOSPC: "the filesystem is full: raise the emptyDir sizeLimit or tmpfs size",
        errno.EROFS: "the filesystem is read-only: mount a writable tmpfs or emptyDir there",
        errno.EACCES: "permission denied: check the directory's owner and the container's user",
        errno.EPERM: "not permitted: setting an owner needs root",
        errno.ENOENT: "the directory does not exist",
    }
    hint = hints.get(exc.errno or 0, exc.strerror or str(exc))
    return OutputError(f"cannot {action} {path}: {hint}")


class _AtomicFiles:
    """Shared policy: tmpfs check, directory creation, and atomic, mode-correct writes."""

    def __init__(self, *, mode: int, owner: tuple[int, int] | None, allow_disk: bool) -> None:
        self.mode = mode
        self.owner = owner
        self.allow_disk = allow_disk

    def ensure_directory(self, directory: Path) -> None:
        """Refuse a disk unless allowed, then create the directory if it is missing."""
        if not self.allow_disk:
            fs_type = filesystem_type(str(_existing_ancestor(directory)))
            if fs_type not in MEMORY_FILESYSTEMS:
                raise OutputError(
                    f"{directory} is on {fs_type}, not tmpfs: secrets would reach a disk. Mount a "
                    "tmpfs (emptyDir medium: Memory, --tmpfs) there, or pass --allow-disk "
                    "(ZTR_ALLOW_DISK=true; Fargate has no tmpfs)"
                )
        self.make_directory(directory)

    def make_directory(self, directory: Path) -> None:
        """Create ``directory`` and its missing parents with ``directory_mode`` and the owner;
        directories that exist already are left as they are."""
        missing: list[Path] = []
        for candidate in (directory, *directory.parents):
            if os.path.lexists(candidate):
                break
            missing.append(candidate)
        for path in reversed(missing):
            try:
                self._create_directory(path)
            except OSError as exc:
                raise _fail(path, "create directory", exc) from exc

    def _create_directory(self, path: Path) -> None:
        # Made under a temp name, given its owner and mode, then renamed into place: a reader
        # waiting for a file inside never sees the directory before it can enter it.
        temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
        try:
            fd = os.open(temp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
                os.fchmod(fd, directory_mode(self.mode))
            finally:
                os.close(fd)
            if os.path.lexists(path):  # created meanwhile by someone else: theirs stays
                temp.rmdir()
                return
            os.rename(temp, path)
        except OSError:
            with contextlib.suppress(OSError):
                temp.rmdir()
            if not path.is_dir():
                raise

    def remove_stale_temp_files(self, directory: Path, ours: Callable[[str], bool]) -> None:
        """Remove the temp files a killed write left in ``directory`` for the file names that
        ``ours`` accepts (``.NAME.XXXXXXXX.ztr-tmp``, regular files only)."""
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _fail(directory, "list", exc) from exc
        for entry in entries:
            match = _TEMP_NAME.fullmatch(entry.name)
            if match and ours(match["name"]) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise _fail(Path(entry.path), "remove", exc) from exc

    def write(self, path: Path, data: bytes) -> bool:
        """Replace ``path`` with ``data`` atomically; skip when the bytes are already there.

        Temp file in the same directory, write, fsync, chmod/chown, rename: a concurrent reader
        sees the old file or the new one, never a part. Returns whether it wrote.
        """
        if self._unchanged(path, data):
            return False
        temp: Path | None = None
        try:
            # A fresh, exclusive, 0600 name: no clash with a stale temp file or a planted symlink.
            fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX,
                                             dir=path.parent)
            temp = Path(temp_name)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
                os.fchmod(fd, self.mode)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except OSError as exc:
            if temp is not None:
                with contextlib.suppress(OSError):
                    temp.unlink()
            raise _fail(path, "write", exc) from exc
        return True

    def _unchanged(self, path: Path, data: bytes) -> bool:
        """The file already holds ``data`` with the wanted mode and owner."""
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != self.mode:
                return False
            if self.owner is not None and (info.st_uid, info.st_gid) != self.owner:
                return False
            return info.st_size == len(data) and path.read_bytes() == data
        except OSError:
            return False


class _Writer:
    """What both writers share: where they write, and a tmpfs check made once."""

    def __init__(self, directory: Path, target: Path, *, mode: int,
                 owner: tuple[int, int] | None, allow_disk: bool) -> None:
        self.directory = directory
        self.target = str(target)  # for logs: the file or directory a person asked for
        self.files = _AtomicFiles(mode=mode, owner=owner, allow_disk=allow_disk)
        self._prepared = False

    def prepare(self) -> None:
        """Refuse a disk and create the directory; called before contacting AWS."""
        self.files.ensure_directory(self.directory)
        self._prepared = True

    def _ready(self) -> None:
        # The mount does not change under a running ztr; a deleted directory is recreated.
        if self._prepared:
            self.files.make_directory(self.directory)
        else:
            self.prepare()


class EnvFileWriter(_Writer):
    """One env file in ``shell``, ``dotenv`` or ``json`` format."""

    def __init__(self, path: str, fmt: str, *, mode: int = 0o600,
                 owner: tuple[int, int] | None = None, allow_disk: bool = False) -> None:
        self.path = Path(path)
        self.render = RENDERERS[fmt]
        super().__init__(self.path.parent, self.path, mode=mode, owner=owner, allow_disk=allow_disk)

    def prepare(self) -> None:
        """As ``_Writer.prepare``, then remove this file's temp files left by a killed write."""
        super().prepare()
        self.files.remove_stale_temp_files(self.directory, lambda name: name == self.path.name)

    def write(self, values: Mapping[str, str]) -> bool:
        """Raises SecretValueError (65) for a value the format cannot carry, before writing."""
        self._ready()
        return self.files.write(self.path, self.render(values))


class DirectoryWriter(_Writer):
    """One file per variable, named after it, holding exactly the value (secrets-as-files).

    The names it wrote are recorded in ``MANIFEST_NAME`` in the directory, before the files
    appear: a variable no longer written has its file removed, also by a later ztr, and a file
    that is not on the record is never touched.
    """

    def __init__(self, directory: str, *, mode: int = 0o600,
                 owner: tuple[int, int] | None = None, allow_disk: bool = False) -> None:
        super().__init__(Path(directory), Path(directory), mode=mode, owner=owner,
                         allow_disk=allow_disk)
        self._written: set[str] = set()

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST_NAME

    def prepare(self) -> None:
        """As ``_Writer.prepare``, then remove temp files left by a killed write and read the
        record of the files an earlier ztr wrote."""
        super().prepare()
        self.files.remove_stale_temp_files(
            self.directory, lambda name: name == MANIFEST_NAME or refs.is_valid_env_name(name))
        self._written = self._read_manifest()

    def write(self, values: Mapping[str, str]) -> bool:
        self._ready()
        names = set(values)
        # On the record before they exist: a write killed half-way leaves nothing unlisted.
        self._record(self._written | names)
        changed = False
        for name, value in sorted(values.items()):
            changed |= self.files.write(self.directory / name, value.encode("utf-8"))
        for gone in sorted(self._written - names):
            changed |= self._remove(self.directory / gone)
        self._record(names)
        self._written = names
        return changed

    def _read_manifest(self) -> set[str]:
        """The names on the record; none when it is missing or unreadable (then nothing is
        removed that this ztr did not write itself)."""
        try:
            document = json.loads(self.manifest.read_bytes())
        except (OSError, ValueError):
            return set()
        listed = document.get("written") if isinstance(document, dict) else None
        if not isinstance(listed, list):
            return set()
        return {name for name in listed if isinstance(name, str) and refs.is_valid_env_name(name)}

    def _record(self, names: set[str]) -> None:
        data = json.dumps({"written": sorted(names)}) + "\n"
        self.files.write(self.manifest, data.encode("utf-8"))

    @staticmethod
    def _remove(path: Path) -> bool:
        """Unlink ``path`` if it is still a regular file; whether it did."""
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                return False  # replaced by a directory or link: not the file ztr wrote
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _fail(path, "remove", exc) from exc
        return True


Writer = EnvFileWriter | DirectoryWriter
