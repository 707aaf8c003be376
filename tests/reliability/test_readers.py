"""Every format is read back exactly by every reader the README names for it, run for real:
Node's ``dotenv`` (16, 17 and 18, classic and fast parsers, installed with ``npm ci`` from
tests/readers/package-lock.json) and python-dotenv (with and without interpolation) for
``dotenv``; dash and bash for ``shell``; ``json.loads`` and ``JSON.parse`` for ``json``. Values
come from hypothesis, weighted towards the characters that break quoting. A value ``dotenv``
refuses is one that none of its three quotings carries for every reader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.errors import SecretValueError
from sidecar.outputs import EnvFileWriter

READERS_DIR = Path(__file__).resolve().parents[1] / "readers"
NODE_DOTENV_READERS = {"dotenv@16.6.1", "dotenv@17.4.2", "dotenv@18.0.10", "dotenv@18.0.10 fast"}

# Pieces that break one quoting or another, glued together by hypothesis with arbitrary text.
FRAGMENTS = ["'", '"', "`", "\\", "\\\\", "\\n", "\\r", "\\t", "\\'", '\\"', "\n", "\r", "\r\n",
             "$", "${", "}", "${A}", "${A:-x}", "$A", "#", " #", " ", "\t", "=", ":", "export ",
             "\u2028", "\u2029", "\x85", "\xa0", "\ufeff", "\x0b", "\x1c", "é", "秘", "😀",
             "A=1", "\nB=2", "'x'", '"x"']
CHARS = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
VALUE = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(CHARS, max_size=4)),
                 max_size=8).map("".join)
VALUES = st.dictionaries(st.from_regex(r"ZV_[A-Z0-9_]{0,6}", fullmatch=True), VALUE,
                         min_size=1, max_size=5)
EXAMPLES = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


class NodeReaders:
    """One long-lived ``node read.js``: a request per file, one JSON line back."""

    def __init__(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no DOTENV_* options leak in
        self.proc = subprocess.Popen(["node", str(READERS_DIR / "read.js")], cwd=READERS_DIR,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     encoding="utf-8", env=env)

    def read(self, fmt: str, path: Path) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{fmt}\t{path}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"node read.js exited with {self.proc.poll()}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def install_node_readers() -> None:
    """``npm ci`` from the lock file when node_modules is missing or older than the lock."""
    lock = READERS_DIR / "package-lock.json"
    installed = READERS_DIR / "node_modules" / ".package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    assert npm, "node is installed but npm is not: install npm to set up tests/readers"
    done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                          cwd=READERS_DIR, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"npm ci in {READERS_DIR} failed:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def node() -> Iterator[NodeReaders]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: Node's dotenv cannot be run (apt-get install nodejs npm)")
    install_node_readers()
    readers = NodeReaders()
    yield readers
    readers.close()


@pytest.fixture
def scratch(shm: Path) -> Path:
    """A fresh directory of its own on tmpfs for this test's files."""
    return Path(tempfile.mkdtemp(dir=shm))


def read_dotenv_everywhere(node: NodeReaders, path: Path) -> dict[str, Any]:
    """What each dotenv reader loaded from ``path``."""
    loaded = node.read("dotenv", path)
    assert set(loaded) == NODE_DOTENV_READERS, loaded
    loaded["python-dotenv interpolate=False"] = dict(dotenv_values(path, interpolate=False))
    loaded["python-dotenv interpolate=True"] = dict(dotenv_values(path, interpolate=True))
    return loaded


# -- dotenv ---------------------------------------------------------------------------------------


@given(values=VALUES)
@EXAMPLES
@example(values={"ZV_NEWLINE_ESCAPE": "a\\nb", "ZV_QUOTE": 'say "hi"', "ZV_BACKSLASH": "C:\\dir\\"})
@example(values={"ZV_JSON": '{"user": "app", "note": "it\'s"}', "ZV_CR": "a\r\nb\rc"})
@example(values={"ZV_EMPTY": "", "ZV_SPACES": "  x  ", "ZV_HASH": "a#b # c", "ZV_DOLLAR": "$A $ {x}"})
def test_dotenv_format_every_reader_gets_back_exact_values_or_refused(
    node: NodeReaders, scratch: Path, values: dict[str, str]
) -> None:
    path = scratch / "app.env"
    try:
        EnvFileWriter(str(path), "dotenv").write(values)
    except SecretValueError as refused:
        name = str(refused).split(":", 1)[0]
        assert name in values
        assert_no_quoting_carries(node, scratch, values[name])
        return
    for reader, loaded in read_dotenv_everywhere(node, path).items():
        assert loaded == values, reader


# Lines after the one under test, each ending in a quote character: a value that opens a quote
# it does not close would run on to one of these in Node's dotenv (its quoted values span lines).
TRAILER = {"ZV_T1": "x'\"`", "ZV_T2": "x`\"'", "ZV_T3": "x`'\""}


def assert_no_quoting_carries(node: NodeReaders, scratch: Path, value: str) -> None:
    """A refusal is justified: single quotes, double quotes (CR as \\r) and no quotes each give
    some reader back something else, or break the file for it, in a file where lines ending in
    quote characters follow."""
    candidates = {"single": f"'{value}'", "double": '"' + value.replace("\r", "\\r") + '"',
                  "bare": value}
    trailer = "".join(f"{name}={token}\n" for name, token in TRAILER.items())
    for kind, token in candidates.items():
        path = scratch / f"{kind}.env"
        path.write_bytes(f"ZV_REFUSED={token}\n{trailer}".encode())
        loaded = read_dotenv_everywhere(node, path)
        wrong = [reader for reader, got in loaded.items() if got != {"ZV_REFUSED": value, **TRAILER}]
        assert wrong, f"refused, yet {kind} quotes carry it for every reader: {token!r}"


@pytest.mark.parametrize("value", ['{"password": "it\'s # \\"quoted\\""}', "it's ${HOME}",
                                   "a${X}b", "'\"\n", "it's\\\\ "],
                         ids=["json-quote-hash", "single-and-reference", "reference",
                              "both-quotes-newline", "quote-double-backslash-space"])
def test_dotenv_format_uncarried_value_refused_with_65_naming_variable(
    node: NodeReaders, scratch: Path, value: str
) -> None:
    path = scratch / "app.env"
    with pytest.raises(SecretValueError) as caught:
        EnvFileWriter(str(path), "dotenv").write({"OK": "fine", "DB_PASSWORD": value})
    assert caught.value.exit_code == 65
    message = str(caught.value)
    assert message.startswith("DB_PASSWORD: ")
    assert "--format shell or json" in message
    assert "--output-dir" in message
    assert value not in message
    assert not path.exists()  # nothing half-written
    assert_no_quoting_carries(node, scratch, value)


def test_dotenv_format_values_node_altered_before_now_round_trip(node: NodeReaders,
                                                                  scratch: Path) -> None:
    """The issue's examples: `"`, `\\` and a literal `\\n` came back altered from Node's dotenv."""
    values = {"QUOTE": 'pa"ss', "BACKSLASH": "pa\\ss", "LITERAL_NEWLINE_ESCAPE": "pa\\nss",
              "TRAILING_BACKSLASH": "pass\\", "NEWLINE": "line1\nline2", "CR": "a\rb"}
    path = scratch / "app.env"
    EnvFileWriter(str(path), "dotenv").write(values)
    for reader, loaded in read_dotenv_everywhere(node, path).items():
        assert loaded == values, reader


# -- shell ----------------------------------------------------------------------------------------


SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]


@pytest.mark.parametrize("shell", SHELLS)
@given(values=VALUES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_shell_format_sourced_by_shell_gives_back_exact_bytes(scratch: Path, shell: str,
                                                               values: dict[str, str]) -> None:
    path = scratch / "env.sh"
    EnvFileWriter(str(path), "shell").write(values)
    # set -a; . FILE; then every variable printed NUL-terminated: NUL is the one byte a value lacks.
    script = 'set -a; . "$1"; shift; for n; do eval "printf \'%s\\0\' \\"\\${$n}\\""; done'
    done = subprocess.run([shell, "-c", script, shell, str(path), *sorted(values)],
                          capture_output=True, check=True, env={"PATH": os.environ["PATH"]})
    printed = done.stdout.split(b"\0")[:-1]
    assert dict(zip(sorted(values), printed, strict=True)) == {
        name: value.encode("utf-8") for name, value in values.items()}


# -- json -----------------------------------------------------------------------------------------


@given(values=VALUES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_json_format_read_by_python_and_node_gives_back_values(node: NodeReaders, scratch: Path,
                                                               values: dict[str, str]) -> None:
    path = scratch / "env.json"
    EnvFileWriter(str(path), "json").write(values)
    assert json.loads(path.read_bytes()) == values
    assert node.read("json", path) == {"JSON.parse": values}
