"""A long-running ztr subprocess whose output lines are collected as they arrive, so tests wait
for what they expect with a deadline instead of sleeping."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tests.helpers.ztr import parse_logs


class Proc:
    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None = None) -> None:
        self.popen = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, bufsize=1, cwd=cwd)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def logs(self) -> list[dict[str, Any]]:
        return parse_logs("\n".join(self.stderr))

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 15.0,
                   what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = predicate()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what}\nstdout: {self.stdout[-20:]}\n"
                        f"stderr: {self.stderr[-20:]}"
                    )
                self._changed.wait(min(remaining, 0.1))

    def wait_log(self, msg: str, count: int = 1, timeout: float = 15.0) -> dict[str, Any]:
        def found() -> Any:
            hits = [entry for entry in self.logs() if entry.get("msg") == msg]
            return hits[count - 1] if len(hits) >= count else None

        return self.wait_until(found, timeout, f"log {msg!r} x{count}")  # type: ignore[no-any-return]

    def wait_stdout(self, text: str, count: int = 1, timeout: float = 15.0) -> None:
        self.wait_until(lambda: sum(line == text for line in self.stdout) >= count, timeout,
                        f"stdout line {text!r} x{count}")

    def count_log(self, msg: str) -> int:
        return sum(entry.get("msg") == msg for entry in self.logs())

    def metrics_addr(self, timeout: float = 15.0) -> str:
        entry = self.wait_log("Serving /metrics, /healthz, /readyz and POST /refresh",
                              timeout=timeout)
        return f"http://{entry['addr']}"

    def signal(self, signum: int = signal.SIGTERM) -> None:
        os.kill(self.popen.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait(5)
        for reader in self._readers:
            reader.join(5)
        return code

    def wait(self, timeout: float = 15.0) -> int:
        code = self.popen.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code


def http(url: str, method: str = "GET", timeout: float = 10.0) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of one sample in a Prometheus text page, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return None
