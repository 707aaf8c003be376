"""The endpoints under hostile clients: hundreds of slow, silent, oversized and resetting
connections, a flood of POST /refresh, an exhausted descriptor table. Real sockets on loopback
only; every test bounded in connections and in time. The server runs in a child process (the
endpoints alone, or the real ``ztr watch``) so its threads, descriptors, memory and stderr are
its own, read from /proc."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.proc import Proc, http, metric
from tests.helpers.ztr import ZTR

PROBES = ("/healthz", "/readyz", "/metrics")
PROBE_SECONDS = 2.0  # a kubelet probe's timeout is 1 s; this machine is shared, so 2
DEADLINE_SECONDS = 10.0  # EndpointLimits.request_deadline_seconds, as documented
CONNECTION_LIMIT = 100  # EndpointLimits.max_connections, as documented
MIB = 1024 * 1024

# The endpoints alone in a child process: `Endpoints(...).start(HOST, 0)`, its port printed as
# JSON; then one command a line on stdin: "exhaust" opens /dev/null until EMFILE, "release"
# closes those, "stats" reports the refresh handler's calls; each answered with a JSON line.
HARNESS = r"""
import json, os, resource, sys, threading, time
nofile = int(os.environ.get("HARNESS_NOFILE") or 0)
if nofile:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from sidecar import logs
from sidecar.metrics import Endpoints, Metrics
logs.setup("json")
state = {"calls": 0, "running": 0, "peak": 0}
lock = threading.Lock()
def refresh():
    with lock:
        state["calls"] += 1
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
    time.sleep(float(os.environ.get("HARNESS_REFRESH_SECONDS") or 0))
    with lock:
        state["running"] -= 1
    return 200, {"ok": True, "changed": []}
endpoints = Endpoints(Metrics(), healthy=lambda: True, ready=lambda: True, refresh=refresh)
host, port = endpoints.start(os.environ.get("HARNESS_HOST", "127.0.0.1"), 0)
print(json.dumps({"port": port}), flush=True)
held = []
for line in sys.stdin:
    command = line.strip()
    if command == "exhaust":
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
    elif command == "release":
        while held:
            os.close(held.pop())
    with lock:
        print(json.dumps({"done": command, "held": len(held), **state}), flush=True)
"""


class Harness:
    """The child process serving the endpoints; its stdout answers, its stderr collected."""

    def __init__(self, host: str = "127.0.0.1", **env: str) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("ZTR_", "HARNESS_"))}
        environ.update({f"HARNESS_{key.upper()}": value for key, value in env.items()},
                       HARNESS_HOST=host)
        self.popen = subprocess.Popen([sys.executable, "-c", HARNESS], env=environ, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, bufsize=1)
        self.stderr: list[str] = []
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()
        first = self._answer(timeout=20)
        self.host = host if host not in ("::", "0.0.0.0") else "127.0.0.1"
        self.port = int(first["port"])

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._answers.put(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.stderr.append(line.rstrip("\n"))

    def _answer(self, timeout: float) -> dict[str, Any]:
        try:
            return self._answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the harness did not answer; stderr: {self.stderr[-20:]}") from None

    def command(self, what: str) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write(what + "\n")
        self.popen.stdin.flush()
        return self._answer(timeout=10)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        for reader in self._readers:
            reader.join(5)


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    started: list[Harness] = []

    def start(host: str = "127.0.0.1", **env: str) -> Harness:
        server = Harness(host, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


# -- reading a process from /proc -------------------------------------------------------------


def status_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as handle:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in handle)}


def threads_of(pid: int) -> int:
    return int(status_of(pid)["Threads"])


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int, key: str = "VmRSS") -> int:
    return int(status_of(pid)[key].split()[0]) * 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def non_json_lines(lines: list[str]) -> list[str]:
    """Lines on stderr that are not one of ztr's JSON log records (a traceback, a warning)."""
    bad = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(record, dict) or "msg" not in record:
            bad.append(line)
    return bad


# -- clients ------------------------------------------------------------------------------------


def probe(host: str, port: int, path: str, timeout: float = PROBE_SECONDS) -> tuple[int, float]:
    """A fresh connection, one GET, the whole answer read: (status, seconds taken)."""
    started = time.monotonic()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: ztr\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else 0
    return status, time.monotonic() - started


def probes_answered(host: str, port: int) -> None:
    for path in PROBES:
        status, seconds = probe(host, port, path)
        assert status == 200, f"{path}: {status}"
        assert seconds < PROBE_SECONDS, f"{path} took {seconds:.2f}s"


class Crowd:
    """Client sockets the test opens and holds; all closed (with a reset) when it ends."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socks: list[socket.socket] = []

    def open(self, count: int, first: bytes = b"") -> list[socket.socket]:
        opened = []
        for _ in range(count):
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            self.socks.append(sock)
            sock.settimeout(5)
            sock.connect(self.address)
            if first:
                with contextlib.suppress(OSError):
                    sock.sendall(first)
            sock.setblocking(False)
            opened.append(sock)
        return opened

    def push(self, socks: list[socket.socket], data: bytes) -> None:
        """Send each socket one more piece of ``data`` if it will take it; a closed one is left."""
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(data)

    def close(self) -> None:
        for sock in self.socks:
            reset(sock)
        self.socks.clear()


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER on, zero seconds)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def select_readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed this (non-blocking) connection."""
    try:
        return sock.recv(65536) == b""  # a reply to a request we never finished is not expected
    except BlockingIOError:
        return False
    except OSError:
        return True


@contextlib.contextmanager
def crowd_of(host: str, port: int) -> Iterator[Crowd]:
    crowd = Crowd(host, port)
    try:
        yield crowd
    finally:
        crowd.close()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


SLOW_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: ztr\r\nX-Slow: "
MAX_HEADER_LINE = b"X-Big: " + b"b" * 65526 + b"\r\n"  # 65535 bytes: http.server's longest line


# -- the tests ----------------------------------------------------------------------------------


def test_endpoints_hostile_crowd_bounded_threads_fds_and_probes_answered(
    harness: Callable[..., Harness],
) -> None:
    """300 connections at once (silent, trickling a byte at a time, stuck in the request line,
    pushing header blocks) cost no thread and at most the connection limit in descriptors,
    and a fresh client gets every probe promptly throughout."""
    server = harness()
    probes_answered(server.host, server.port)
    threads, fds = threads_of(server.pid), fds_of(server.pid)
    with crowd_of(server.host, server.port) as crowd:
        crowd.open(100)  # connect and say nothing
        trickling = crowd.open(100, first=SLOW_REQUEST)
        crowd.open(50, first=b"GET /metr")  # a request line that never ends
        pushing = crowd.open(50, first=b"GET /metrics HTTP/1.1\r\nHost: ztr\r\n")
        most_threads, most_fds = threads, fds
        until = time.monotonic() + 3
        round_ = 0
        while time.monotonic() < until:
            crowd.push(trickling, b"x")
            crowd.push(pushing, MAX_HEADER_LINE)
            if round_ % 3 == 0:
                probes_answered(server.host, server.port)
            most_threads = max(most_threads, threads_of(server.pid))
            most_fds = max(most_fds, fds_of(server.pid))
            round_ += 1
            time.sleep(0.1)  # the pace of the trickle, not a synchronisation
        probes_answered(server.host, server.port)
    assert most_threads <= threads + 1, f"{most_threads} threads (from {threads})"
    assert most_fds <= fds + CONNECTION_LIMIT + 2, f"{most_fds} descriptors (from {fds})"
    assert not non_json_lines(server.stderr), server.stderr[-10:]


def test_endpoints_trickling_client_cut_at_the_request_deadline(
    harness: Callable[..., Harness],
) -> None:
    """A byte a second keeps every single read short; the deadline is the whole request's,
    so the connection is closed once it is spent. A silent connection goes the same way."""
    server = harness()
    with crowd_of(server.host, server.port) as crowd:
        started = time.monotonic()
        trickling = crowd.open(1, first=SLOW_REQUEST)[0]
        silent = crowd.open(1)[0]
        cut: dict[str, float] = {}
        until = started + DEADLINE_SECONDS + 4
        while time.monotonic() < until and len(cut) < 2:
            crowd.push([trickling], b"x")
            for name, sock in (("trickling", trickling), ("silent", silent)):
                if name not in cut and closed_by_server(sock):
                    cut[name] = time.monotonic() - started
            time.sleep(0.5)  # the trickle's pace
    assert set(cut) == {"trickling", "silent"}, f"still open after {until - started:.0f}s: {cut}"
    for name, seconds in cut.items():
        assert DEADLINE_SECONDS - 1 <= seconds <= DEADLINE_SECONDS + 3, (name, seconds)


def test_endpoints_maximal_header_blocks_keep_memory_flat(harness: Callable[..., Harness]) -> None:
    """Sixteen clients sending the longest header block http.server would buffer (99 lines of
    64 KiB each, never finished) pushed ztr past its 96Mi limit; now each is cut at the header
    limit and the server's memory does not grow by more than a few MiB."""
    server = harness()
    before = rss_bytes(server.pid)
    with crowd_of(server.host, server.port) as crowd:
        socks = crowd.open(16, first=b"GET /metrics HTTP/1.1\r\nHost: ztr\r\n")
        left = {sock: 99 * len(MAX_HEADER_LINE) for sock in socks}
        until = time.monotonic() + 20
        while left and time.monotonic() < until:
            for sock in list(left):
                try:
                    sent = sock.send(MAX_HEADER_LINE[: left[sock]])
                except BlockingIOError:
                    continue
                except OSError:  # the server closed it: it will take no more
                    del left[sock]
                    continue
                left[sock] -= sent
                if not left[sock]:
                    del left[sock]
            time.sleep(0.001)
        # The blocks are in (or refused); the server holds whatever it kept of them now.
        peak = max(rss_bytes(server.pid, "VmHWM"), rss_bytes(server.pid))
    growth = peak - before
    assert growth < 16 * MIB, f"RSS grew by {growth / MIB:.1f} MiB"
    probes_answered(server.host, server.port)


def test_endpoints_reset_connections_print_no_traceback(harness: Callable[..., Harness]) -> None:
    """Clients that reset at every stage (right away, mid-request, before reading the reply,
    mid-reply) leave nothing on stderr: no traceback, no line that is not a JSON record."""
    server = harness()
    fds = fds_of(server.pid)
    request = b"GET /metrics HTTP/1.1\r\nHost: ztr\r\n\r\n"
    with crowd_of(server.host, server.port) as crowd:
        for first in (b"", b"GET /metrics HT", request, request * 20):
            for sock in crowd.open(25, first=first):
                reset(sock)
        for _ in range(25):  # reset after the first bytes of the reply arrived
            sock = crowd.open(1, first=request * 50)[0]
            wait_for(lambda s=sock: select_readable(s), 5, "the reply to start")
            reset(sock)
    # Every reset has been seen once the server holds no client socket any more.
    wait_for(lambda: fds_of(server.pid) <= fds, 10, "the server to close every reset socket")
    probes_answered(server.host, server.port)
    assert not non_json_lines(server.stderr), "\n".join(server.stderr[-30:])


@pytest.mark.parametrize("host", ["::1", "::"])
def test_endpoints_listen_on_ipv6(harness: Callable[..., Harness], host: str) -> None:
    """``[::1]:PORT`` listens on IPv6 loopback; ``[::]:PORT`` on every address, IPv4 too."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as check:
            check.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    server = harness(host)
    probes_answered("::1", server.port)
    if host == "::":
        probes_answered("127.0.0.1", server.port)


def test_endpoints_out_of_descriptors_pause_accepting_without_spinning(
    harness: Callable[..., Harness],
) -> None:
    """With every descriptor taken (RLIMIT_NOFILE 64, the rest opened elsewhere in the
    process), accept() fails: the server pauses instead of retrying in a busy loop, logs it as
    JSON, and serves the waiting clients once descriptors are free again."""
    server = harness(nofile="64")
    assert server.command("exhaust")["held"] > 0
    with crowd_of(server.host, server.port) as crowd:
        waiting = crowd.open(5, first=b"GET /healthz HTTP/1.1\r\nHost: ztr\r\n\r\n")
        cpu, started = cpu_seconds(server.pid), time.monotonic()
        time.sleep(2)  # a window to measure CPU over, not a synchronisation
        used = (cpu_seconds(server.pid) - cpu) / (time.monotonic() - started)
        assert used < 0.2, f"the server used {used:.0%} of a CPU while out of descriptors"
        server.command("release")
        for sock in waiting:
            sock.setblocking(True)
            sock.settimeout(5)
            assert sock.recv(100).startswith(b"HTTP/1.1 200"), "a waiting client got no answer"
    probes_answered(server.host, server.port)
    assert not non_json_lines(server.stderr), server.stderr[-10:]
    assert any("cannot accept" in line for line in server.stderr), server.stderr[-10:]


def test_endpoints_refresh_flood_runs_one_refresh_at_a_time(harness: Callable[..., Harness]) -> None:
    """Thirty POST /refresh at once: one refresh runs (one extra thread), the others get 429
    at once instead of piling up blocked threads."""
    server = harness(refresh_seconds="1.5")
    threads = threads_of(server.pid)
    request = b"POST /refresh HTTP/1.1\r\nHost: ztr\r\nContent-Length: 0\r\n\r\n"
    with crowd_of(server.host, server.port) as crowd:
        socks = crowd.open(30, first=request)
        statuses = []
        most_threads = threads
        for sock in socks:
            sock.setblocking(True)
            sock.settimeout(10)
            answer = sock.recv(65536)
            most_threads = max(most_threads, threads_of(server.pid))
            statuses.append(int(answer.split(b" ", 2)[1]))
    assert sorted(statuses) == [200] + [429] * 29, statuses
    assert server.command("stats")["peak"] == 1
    assert most_threads <= threads + 1, f"{most_threads} threads (from {threads})"


# -- the real ztr watch ------------------------------------------------------------------------

SECRET = "rel/endpoints"
NOFILE_64 = ("import os, resource, sys; "
             "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
             "os.execv(sys.argv[1], sys.argv[1:])")


def test_watch_under_hostile_crowd_and_64_descriptors_keeps_refreshing(
    sm: Any, ztr_env: dict[str, str], shm: Path,
) -> None:
    """``ztr watch`` with RLIMIT_NOFILE 64 while 200 connections trickle, stay silent or push
    headers: it stays under the descriptor limit, idles, keeps refreshing (no EMFILE), answers
    probes and POST /refresh, stays far below the manifests' 96Mi, and stops cleanly."""
    sm.create_secret(Name=SECRET, SecretString="v1-endpoints")
    proc = Proc([sys.executable, "-c", NOFILE_64, ZTR, "watch", "--secret", f"DB={SECRET}",
                 "--output", str(shm / "app.env"), "--refresh-interval", "300ms"], ztr_env)
    try:
        base = proc.metrics_addr()
        proc.wait_log("Wrote secrets; watching for changes")
        host, port = base.removeprefix("http://").rsplit(":", 1)
        before = metric(http(base + "/metrics")[1], "ztr_refresh_total", {"result": "success"}) or 0
        with crowd_of(host, int(port)) as crowd:
            crowd.open(80)
            trickling = crowd.open(80, first=SLOW_REQUEST)
            pushing = crowd.open(40, first=b"GET /metrics HTTP/1.1\r\nHost: ztr\r\n")
            cpu, started = cpu_seconds(proc.pid), time.monotonic()
            until = started + 3
            while time.monotonic() < until:
                crowd.push(trickling, b"x")
                crowd.push(pushing, MAX_HEADER_LINE)
                assert fds_of(proc.pid) < 64
                time.sleep(0.1)  # the trickle's pace
            used = (cpu_seconds(proc.pid) - cpu) / (time.monotonic() - started)
            probes_answered(host, int(port))
            status, body = http(base + "/refresh", method="POST")
            assert status == 200, body
            assert rss_bytes(proc.pid) < 64 * MIB, f"RSS {rss_bytes(proc.pid) / MIB:.1f} MiB"
        page = http(base + "/metrics")[1]
        assert (metric(page, "ztr_refresh_total", {"result": "success"}) or 0) > before
        assert not metric(page, "ztr_refresh_total", {"result": "error"}), page
        assert used < 0.5, f"ztr used {used:.0%} of a CPU under the crowd"
    finally:
        assert proc.stop() == 0
    assert not non_json_lines(proc.stderr), proc.stderr[-10:]
    assert not any("Too many open files" in line for line in proc.stderr), proc.stderr[-10:]


def test_watch_metrics_addr_ipv6_loopback_listens(
    sm: Any, ztr_env: dict[str, str], shm: Path,
) -> None:
    """``--metrics-addr [::1]:0`` goes from the flag to a socket listening on ::1."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as check:
            check.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    sm.create_secret(Name=SECRET, SecretString="v1-endpoints")
    proc = Proc([ZTR, "watch", "--secret", f"DB={SECRET}", "--output", str(shm / "app.env"),
                 "--metrics-addr", "[::1]:0"], ztr_env)
    try:
        entry = proc.wait_log("Serving /metrics, /healthz, /readyz and POST /refresh")
        host, port = str(entry["addr"]).rsplit(":", 1)
        assert host.strip("[]") == "::1", entry
        proc.wait_log("Wrote secrets; watching for changes")
        probes_answered("::1", int(port))
    finally:
        assert proc.stop() == 0
    assert not non_json_lines(proc.stderr), proc.stderr[-10:]
