"""A suite-wide secret-leak canary, as a pytest plugin.

Every secret value a test creates through the ``sm`` fixture's client (CreateSecret,
PutSecretValue, UpdateSecret: SecretString, its top-level JSON values, SecretBinary as text and
as base64) that is at least ``MIN_LENGTH`` characters long becomes a canary for that test.
After the test (once every fixture is torn down) the plugin scans what ztr itself emitted:

- stdout and stderr of every ztr process run through ``tests.helpers.ztr.run`` or started
  through ``tests.helpers.proc.Proc``; for ``ztr run`` / ``ztr-run`` the child shares both
  streams, so stdout is skipped and only ztr's own lines on stderr are scanned (log records,
  ``ztr:`` lines, tracebacks);
- every HTTP body fetched through ``tests.helpers.proc.http`` (/metrics, /refresh, probes).

A hit fails the test (at teardown) naming the stream and the secret, never the value. The
helpers stay untouched: their module globals (``subprocess``, ``urllib``) are swapped for thin
proxies and ``Proc.__init__`` is wrapped, so calls are seen however a test imported them.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

MIN_LENGTH = 8
_VALUE_PARAMS = ("SecretString", "SecretBinary")
_TEXT_LOG = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z (debug|info|warning|error)\b")


@dataclass
class _Output:
    what: str
    read: Callable[[], str]


@dataclass
class _State:
    needles: dict[str, str] = field(default_factory=dict)  # needle -> where the value came from
    outputs: list[_Output] = field(default_factory=list)
    values_total: int = 0
    outputs_total: int = 0
    pages_total: int = 0
    bytes_total: int = 0
    tests_scanned: int = 0
    hits_total: int = 0
    clients: set[int] = field(default_factory=set)

    def reset(self) -> None:
        self.needles.clear()
        self.outputs.clear()

    def register(self, value: str, origin: str) -> None:
        if len(value) < MIN_LENGTH:
            return
        # Logs are JSON: a value with quotes, backslashes, newlines or non-ASCII appears escaped.
        forms = {value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1]}
        fresh = False
        for form in forms:
            if form not in self.needles:
                self.needles[form] = origin
                fresh = True
        if fresh:
            self.values_total += 1

    def find_hits(self) -> tuple[list[str], int, int]:
        """(hits, outputs read, characters read); changes nothing."""
        hits: list[str] = []
        outputs = characters = 0
        for output in self.outputs:
            try:
                text = output.read()
            except Exception as exc:  # a helper in a broken state: say so, do not hide a leak
                hits.append(f"{output.what}: could not be read ({type(exc).__name__})")
                continue
            outputs += 1
            characters += len(text)
            for needle, origin in self.needles.items():
                if needle in text:
                    line = text[: text.index(needle)].count("\n") + 1
                    hits.append(f"{output.what}, line {line}: the value of {origin} "
                                f"({len(needle)} chars)")
                    break
        return hits, outputs, characters

    def scan(self) -> list[str]:
        """The end-of-test scan: counted in the session totals."""
        hits, outputs, characters = self.find_hits()
        self.outputs_total += outputs
        self.bytes_total += characters
        self.tests_scanned += 1
        self.hits_total += len(hits)
        return hits


STATE = _State()


# -- registering values ---------------------------------------------------------------------


def _values_of(params: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(value, part) pairs worth watching for in one request's parameters."""
    text = params.get("SecretString")
    if isinstance(text, str):
        yield text, "SecretString"
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict):
            for key, item in document.items():
                rendered = item if isinstance(item, str) else json.dumps(
                    item, separators=(",", ":"), ensure_ascii=False)
                yield rendered, f"SecretString#{key}"
    binary = params.get("SecretBinary")
    if isinstance(binary, str):
        binary = binary.encode()
    if isinstance(binary, (bytes, bytearray)):
        data = bytes(binary)
        try:
            yield data.decode("utf-8"), "SecretBinary"
        except UnicodeDecodeError:
            pass
        yield base64.b64encode(data).decode("ascii"), "SecretBinary (base64)"


def _on_params(params: dict[str, Any] | None = None, model: Any = None, **_: Any) -> None:
    """botocore's provide-client-params: see every request's parameters; change nothing."""
    if not params or not any(name in params for name in _VALUE_PARAMS):
        return
    operation = getattr(model, "name", "a request")
    secret = params.get("Name") or params.get("SecretId") or "?"
    for value, part in _values_of(params):
        STATE.register(value, f"{operation}({secret}) {part}")


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Any:
    result = yield
    if fixturedef.argname == "sm" and hasattr(result, "meta") and id(result) not in STATE.clients:
        STATE.clients.add(id(result))
        result.meta.events.register("provide-client-params.secrets-manager.*", _on_params)
    return result


# -- recording what ztr emitted -------------------------------------------------------------


def _ztr_mode(argv: Sequence[str]) -> str | None:
    """"ztr", "run" (a supervisor or exec wrapper: the app shares its streams) or None."""
    argv = [str(arg) for arg in argv]
    if not argv:
        return None
    name = os.path.basename(argv[0])
    rest = argv[1:]
    if name.startswith("python") and rest[:2] == ["-m", "sidecar"]:
        name, rest = "ztr", rest[2:]
    if name == "ztr-run":
        return "run"
    if name == "ztr":
        return "run" if rest[:1] == ["run"] else "ztr"
    return None


def own_lines(text: str) -> str:
    """The lines of a shared stderr that ztr wrote: log records, ``ztr:`` lines, tracebacks."""
    kept: list[str] = []
    in_traceback = False
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        if in_traceback:
            kept.append(line)
            if line and not line[0].isspace() and not line.startswith("Traceback"):
                in_traceback = False
            continue
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                record = json.loads(stripped)
            except ValueError:
                continue
            if isinstance(record, dict) and "msg" in record and "level" in record:
                kept.append(line)
        elif stripped.startswith("ztr:") or _TEXT_LOG.match(stripped):
            kept.append(line)
    return "\n".join(kept)


def _as_text(data: Any) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return str(data)


def _record_process(argv: Sequence[str], stdout: Callable[[], Any], stderr: Callable[[], Any]) -> None:
    mode = _ztr_mode(argv)
    if mode is None:
        return
    shown = " ".join(os.path.basename(str(a)) if i == 0 else str(a) for i, a in enumerate(argv[:3]))
    if mode == "ztr":
        STATE.outputs.append(_Output(f"stdout of `{shown} ...`", lambda: _as_text(stdout())))
        STATE.outputs.append(_Output(f"stderr of `{shown} ...`", lambda: _as_text(stderr())))
    else:
        STATE.outputs.append(_Output(f"stderr of `{shown} ...` (ztr's lines)",
                                     lambda: own_lines(_as_text(stderr()))))


class _Proxy:
    """Stands in for a module: the given attributes replaced, everything else the module's."""

    def __init__(self, real: Any, **overrides: Any) -> None:
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _wrap_subprocess_run(real_run: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(real_run)
    def run(args: Any, *more: Any, **kwargs: Any) -> Any:
        completed = real_run(args, *more, **kwargs)
        argv = [args] if isinstance(args, (str, bytes)) else list(args)
        _record_process(argv, lambda: completed.stdout, lambda: completed.stderr)
        return completed

    return run


class _Response:
    """What ``proc.http`` needs of a response, holding a body already read (and recorded)."""

    def __init__(self, status: int, body: bytes, headers: Any) -> None:
        self.status = status
        self.headers = headers
        self._body = io.BytesIO(body)

    def read(self, *args: Any) -> bytes:
        return self._body.read(*args)

    def getcode(self) -> int:
        return self.status

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self._body.close()


def _record_page(url: str, status: int, body: bytes) -> None:
    path = url.split("//", 1)[-1].partition("/")[2]
    STATE.pages_total += 1
    STATE.outputs.append(_Output(f"HTTP {status} /{path}", lambda: _as_text(body)))


def _wrap_urlopen(real_urlopen: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(real_urlopen)
    def urlopen(request: Any, *args: Any, **kwargs: Any) -> Any:
        url = getattr(request, "full_url", None) or str(request)
        try:
            response = real_urlopen(request, *args, **kwargs)
        except urllib.error.HTTPError as exc:
            body = exc.read()
            _record_page(url, exc.code, body)
            raise urllib.error.HTTPError(exc.url, exc.code, exc.msg, exc.headers,
                                         io.BytesIO(body)) from None
        with response:
            body = response.read()
            status, headers = response.status, response.headers
        _record_page(url, status, body)
        return _Response(status, body, headers)

    return urlopen


_PATCHES = pytest.MonkeyPatch()


def pytest_configure(config: pytest.Config) -> None:
    from tests.helpers import proc, ztr

    _PATCHES.setattr(ztr, "subprocess", _Proxy(subprocess, run=_wrap_subprocess_run(subprocess.run)))
    request = _Proxy(urllib.request, urlopen=_wrap_urlopen(urllib.request.urlopen))
    urllib_proxy = _Proxy(urllib, request=request, error=urllib.error)
    _PATCHES.setattr(proc, "urllib", urllib_proxy)

    original_init = proc.Proc.__init__

    @functools.wraps(original_init)
    def init(self: Any, argv: Sequence[str], env: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, argv, env, *args, **kwargs)
        _record_process(list(argv), lambda: "\n".join(self.stdout), lambda: "\n".join(self.stderr))

    _PATCHES.setattr(proc.Proc, "__init__", init)


def pytest_unconfigure(config: pytest.Config) -> None:
    _PATCHES.undo()


# -- per test: reset before fixtures, scan after every fixture is torn down ------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    STATE.reset()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    try:
        return (yield)
    finally:
        hits = STATE.scan()
        STATE.reset()
        if hits:  # reported even over a teardown error: a leak is the bigger news
            pytest.fail("leak canary: a secret value reached ztr's output:\n  " + "\n  ".join(hits),
                        pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    s = STATE
    terminalreporter.write_line(
        f"leak canary: {s.values_total} secret values registered; {s.outputs_total} ztr outputs "
        f"scanned ({s.pages_total} HTTP pages, {s.bytes_total} characters) after "
        f"{s.tests_scanned} tests; {s.hits_total} hits")
