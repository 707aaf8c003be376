"""The leak canary checks itself: a value created through ``sm`` is registered, and a leak of
it through each hooked path (``ztr.run``, ``Proc``, ``proc.http``) is found, while the app's
own output under ``ztr-run`` is not blamed on ztr. Each test empties the canary's list of
outputs before its teardown scan, so the planted leaks do not fail it."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import canary, proc, ztr

VALUE = "canary-self-test-\"quoted\"\nsecond line"


@pytest.fixture
def planted() -> Iterator[None]:
    yield
    canary.STATE.outputs.clear()


def _fake(tmp_path: Path, name: str, body: str) -> str:
    """An executable called ``name`` (the canary tells ztr from ztr-run by the name)."""
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _hits() -> list[str]:
    return canary.STATE.find_hits()[0]


def test_canary_values_created_through_sm_are_registered(sm: Any) -> None:
    sm.create_secret(Name="c/plain", SecretString=VALUE)
    sm.create_secret(Name="c/json", SecretString=json.dumps({"password": "json-leaf-1234", "n": 7,
                                                             "short": "abc"}))
    sm.create_secret(Name="c/bin", SecretBinary=b"\xff\xfebinary-canary")
    sm.put_secret_value(SecretId="c/plain", SecretString="rotated-value-5678")
    needles = canary.STATE.needles
    for expected in (VALUE, json.dumps(VALUE)[1:-1], "json-leaf-1234", "rotated-value-5678",
                     base64.b64encode(b"\xff\xfebinary-canary").decode()):
        assert expected in needles, expected
    assert "abc" not in needles  # below the minimum length
    assert "7" not in needles


def test_canary_leak_through_ztr_run_is_found(sm: Any, tmp_path: Path, planted: None) -> None:
    sm.create_secret(Name="c/plain", SecretString="leaked-through-run-1234")
    fake = _fake(tmp_path, "ztr", 'echo "$LEAK" >&2\n')
    result = ztr.run(["init"], {"LEAK": "leaked-through-run-1234", "PATH": "/usr/bin:/bin"},
                     program=fake)
    assert result.code == 0
    hits = _hits()
    assert len(hits) == 1, hits
    assert hits[0].startswith("stderr of `ztr init"), hits
    assert "leaked-through-run-1234" not in hits[0]  # the report never repeats the value


def test_canary_ztr_run_blames_only_ztr_lines(sm: Any, tmp_path: Path, planted: None) -> None:
    sm.create_secret(Name="c/plain", SecretString=VALUE)
    fake = _fake(tmp_path, "ztr-run", (
        'printf "%s\\n" "$LEAK"\n'  # the app's stdout
        'printf "app says %s\\n" "$LEAK" >&2\n'  # the app's stderr: not ztr's
        'echo \'{"level": "info", "msg": "ok"}\' >&2\n'))
    env = {"LEAK": VALUE, "PATH": "/usr/bin:/bin"}
    running = proc.Proc([fake, "--", "app"], env)
    assert running.wait() == 0
    assert _hits() == []
    canary.STATE.outputs.clear()
    record = json.dumps({"level": "error", "msg": VALUE})
    leaky = _fake(tmp_path, "ztr-run", f"printf '%s\\n' '{record}' >&2\n")
    running = proc.Proc([leaky, "--", "app"], env)
    assert running.wait() == 0
    hits = _hits()
    assert len(hits) == 1, hits
    assert "(ztr's lines)" in hits[0], hits


class _Pages(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        body = f"ztr_info{{value=\"{VALUE[:17]}\"}} 1\n".encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def pages() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_canary_leak_through_http_is_found_and_helper_unchanged(
    sm: Any, pages: str, planted: None
) -> None:
    sm.create_secret(Name="c/short", SecretString=VALUE[:17])
    status, body = proc.http(pages + "/metrics")
    assert status == 200
    assert VALUE[:17] in body
    assert proc.http(pages + "/nowhere")[0] == 404  # HTTPError still comes back as (code, body)
    hits = _hits()
    assert [h.split(",")[0] for h in hits] == ["HTTP 200 /metrics", "HTTP 404 /nowhere"], hits


def test_canary_own_lines_keeps_logs_and_tracebacks_only() -> None:
    text = "\n".join([
        "app output",
        '{"time": "t", "level": "info", "msg": "Started the app"}',
        '{"not": "a log record"}',
        "ztr: --timeout: 'x' is not a duration",
        "2026-01-01T00:00:00.000Z info    Loading secrets",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "ValueError: boom",
        "more app output",
    ])
    kept = canary.own_lines(text).splitlines()
    assert kept == [
        '{"time": "t", "level": "info", "msg": "Started the app"}',
        "ztr: --timeout: 'x' is not a duration",
        "2026-01-01T00:00:00.000Z info    Loading secrets",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "ValueError: boom",
    ]
