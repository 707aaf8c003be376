"""Shared machinery: a moto server on loopback, the subprocess environment, seeding, timing a
process (wall time, time to exec, peak RSS, CPU), /proc sampling, the awscli venv, statistics."""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
HANDWRITTEN = BENCH / "handwritten"
BIN = Path(sys.executable).parent  # the project venv: ztr, ztr-run, python
PYTHON = str(BIN / "python")
ZTR = str(BIN / "ztr")
ZTR_RUN = str(BIN / "ztr-run")
AWSCLI_VENV = OUT / ".venv-awscli"
# An empty AWS_DATA_PATH entry: with it set, sidecar.clients leaves a session on botocore's own
# loader (all of botocore/data), which is how ztr loaded its data before issue 13.
EMPTY_DATA_PATH = OUT / "empty-data-path"
REGION = "us-east-1"
SEED_NAMES = ("database-password", "session-secret", "redis-password", "jwt-secret")
SEED_ENV_NAMES = ("DATABASE_PASSWORD", "SESSION_SECRET", "REDIS_PASSWORD", "JWT_SECRET")
CLK_TCK = os.sysconf("SC_CLK_TCK")
DATE = shutil.which("date") or "/bin/date"
# GNU time measures peak RSS from its own small image: wait4() in this process would report at
# least this process's RSS, which a fork (or vfork) child inherits until it execs.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def seed_ids(environment: str = "production") -> list[str]:
    return [f"{environment}/zero-to-running/{name}" for name in SEED_NAMES]


# -- moto ----------------------------------------------------------------------------------


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server in this process on 127.0.0.1:0 (threads); yields its URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def client(endpoint: str) -> Any:
    """A boto3 Secrets Manager client for arranging state (never what is measured)."""
    import boto3

    return boto3.client("secretsmanager", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def ensure_secret(sm: Any, name: str, value: str) -> None:
    try:
        sm.create_secret(Name=name, SecretString=value)
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=name, SecretString=value)


def seed_preset(sm: Any, environment: str = "production") -> None:
    for name in seed_ids(environment):
        ensure_secret(sm, name, "bench-" + name.rsplit("/", 1)[1] + "-0123456789abcdef")


def env_for(endpoint: str, **extra: str) -> dict[str, str]:
    """What every measured process gets: fake credentials, boto3's endpoint variable, no
    profile or instance metadata lookups, and nothing else of this shell's AWS_* or ZTR_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ZTR_"))}
    for name in ("NODE_ENV", "USE_AWS_SECRETS", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH"):
        env.pop(name, None)
    env.update({
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,  # boto3 and awscli read this one
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
        "AWS_CONFIG_FILE": "/nonexistent/ztr-bench",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/ztr-bench",
        "AWS_EC2_METADATA_DISABLED": "true",
        "ZTR_LOG_FORMAT": "json",
        # Bytecode as an installed image has it: compiled once (by the warm-up runs), then
        # read. Kept under bench/out so the bench leaves no __pycache__ in the tree.
        "PYTHONPYCACHEPREFIX": str(OUT / "pycache"),
    })
    env.update(extra)
    return env



def own_loader_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with an (empty) AWS_DATA_PATH: ztr then leaves its sessions on botocore's own
    loader over all of botocore/data, as before issue 13."""
    EMPTY_DATA_PATH.mkdir(parents=True, exist_ok=True)
    return {**env, "AWS_DATA_PATH": str(EMPTY_DATA_PATH)}

@contextmanager
def fault_proxy(endpoint: str) -> Iterator[Any]:
    """The tests' FaultProxy (tests/helpers/faultproxy.py) in front of ``endpoint``: it counts
    calls by operation and adds ``latency_seconds`` per request.

    Its handler leaves Nagle's algorithm on and writes a response's headers and body in two
    sends, so each response waits for the client's delayed ACK: +40 ms a request, measured
    (48 ms a call through the proxy at latency 0, against 5 ms direct). The benchmarks turn it
    off for this process, so 20 ms of latency means 20 ms.
    """
    from tests.helpers import faultproxy

    faultproxy._Handler.disable_nagle_algorithm = True
    # A measured process killed at the end of its run resets its keep-alive connection; the
    # stdlib server would print a traceback for each one.
    faultproxy._Server.handle_error = lambda self, request, client_address: None  # type: ignore[method-assign]
    proxy = faultproxy.FaultProxy(endpoint)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@contextmanager
def shm_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory on tmpfs, where ztr writes without --allow-disk."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- one timed process ---------------------------------------------------------------------


@dataclass
class Timed:
    wall_seconds: float
    exec_seconds: float | None  # launch -> the final child (`date +%s%N`) ran; None if none
    code: int
    maxrss_mib: float | None  # peak RSS of the process and the descendants it waited for
    cpu_seconds: float | None  # user + system, same scope
    stdout: str
    stderr: str


def run_timed(argv: Sequence[str], env: Mapping[str, str], timeout: float = 120) -> Timed:
    """Run ``argv`` to completion under GNU time (for peak RSS and CPU; it adds the same ~1 ms
    to every variant). If the last child is ``date +%s%N``, the number it prints stamps the
    moment it started (CLOCK_REALTIME, as time.time_ns), which gives the time to exec."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as usage:
        command = list(argv)
        if GNU_TIME:
            command = [GNU_TIME, "-q", "-f", "%M %U %S", "-o", usage.name, *command]
        launched_ns = time.time_ns()
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        wall = time.perf_counter() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        maxrss = cpu = None
        fields = (usage.read().strip().splitlines() or [""])[-1].split()
        if len(fields) == 3:
            maxrss = int(fields[0]) / 1024
            cpu = float(fields[1]) + float(fields[2])
    text = out.decode(errors="replace")
    exec_seconds = None
    match = re.search(r"^(\d{18,})$", text, re.M)
    if match:
        exec_seconds = (int(match[1]) - launched_ns) / 1e9
    return Timed(wall, exec_seconds, proc.returncode, maxrss, cpu, text, stderr)


# -- /proc ---------------------------------------------------------------------------------


@dataclass
class ProcSample:
    rss_kib: int
    hwm_kib: int
    cpu_seconds: float
    threads: int


def sample(pid: int) -> ProcSample:
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        stat = handle.read()
    after = stat.rsplit(")", 1)[1].split()  # fields from 3 (state) on; comm may hold spaces
    utime, stime = int(after[11]), int(after[12])
    return ProcSample(
        rss_kib=int(fields["VmRSS"].split()[0]),
        hwm_kib=int(fields["VmHWM"].split()[0]),
        cpu_seconds=(utime + stime) / CLK_TCK,
        threads=int(fields["Threads"]),
    )


def loadavg() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "unknown"


# -- awscli --------------------------------------------------------------------------------


def awscli_bin() -> Path:
    """The awscli (v1, from PyPI) in its own venv under bench/out, created on first use."""
    aws = AWSCLI_VENV / "bin" / "aws"
    if not aws.exists():
        print(f"bench: installing awscli into {AWSCLI_VENV.relative_to(ROOT)} (once)", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(AWSCLI_VENV)], check=True)
        subprocess.run([str(AWSCLI_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "awscli"], check=True)
    return aws.parent


def awscli_version() -> str:
    try:
        out = subprocess.run([str(awscli_bin() / "aws"), "--version"], capture_output=True,
                             text=True, timeout=60, env=env_for("http://127.0.0.1:9"))
        return (out.stdout or out.stderr).strip().split()[0]
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


# -- statistics ----------------------------------------------------------------------------


def summary(values: Iterable[float]) -> dict[str, float]:
    data = sorted(values)
    if not data:
        return {"n": 0}
    return {"n": len(data), "median": statistics.median(data), "min": data[0], "max": data[-1],
            "mean": statistics.fmean(data)}


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


# -- the machine ---------------------------------------------------------------------------


def _cmd(argv: Sequence[str]) -> str:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


def machine() -> dict[str, Any]:
    from importlib import metadata

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    packages = {}
    for name in ("ztr-sidecar", "boto3", "botocore", "moto", "prometheus-client", "tenacity",
                 "urllib3"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    packages["awscli"] = awscli_version()
    return {
        "nproc": _cmd(["nproc"]),
        "free_h": _cmd(["free", "-h"]),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "packages": packages,
        "loadavg": loadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
