"""Benchmark 5: footprint. Where ztr's start-up and resident memory go, and what the selection of
botocore's data (sidecar.clients) saves against botocore's own loader:

  * a memory ladder: RSS after each step of what a resident ztr holds, in fresh processes (median
    of 3), with the selection and with botocore's own loader;
  * instruction counts (callgrind, when valgrind is installed) of ``ztr-run --once``, of the same
    on botocore's own loader, of the floor (ztr's client, one call, exec) and of the boto3 script,
    each up to its exec: figures the shared machine's load does not move;
  * the import-time profile of ``ztr-run --once`` (``python -X importtime``, median of 5): the
    largest self times, sidecar's own modules, and what the boto3 script imports instead.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import time
from typing import Any

from . import harness as h
from . import startup

SELECTION = "selection"
OWN_LOADER = "botocore's own loader"
LADDER = """
import json, sys
steps = []
def mark(name):
    with open("/proc/self/status") as handle:
        rss = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS"))
    steps.append((name, rss))
mark("python + site")
import botocore.config, botocore.session
mark("import botocore.session, botocore.config")
from sidecar import cli, commands, supervisor
mark("import ztr's start-up modules (cli, config, commands, supervisor, argparse)")
from sidecar import metrics, watcher
mark("import the resident modules (metrics: prometheus_client, http.server; watcher)")
from sidecar import clients
config = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 2})
client = clients.create_client("secretsmanager", region="us-east-1", config=config)
mark("Secrets Manager client (sidecar.clients.create_client)")
ids = [f"production/zero-to-running/{n}"
       for n in ("database-password", "session-secret", "redis-password", "jwt-secret")]
client.batch_get_secret_value(SecretIdList=ids)
for secret_id in ids:
    client.describe_secret(SecretId=secret_id)
mark("BatchGetSecretValue + 4 DescribeSecret")
metrics.Metrics()
mark("Metrics() (registry, process and platform collectors)")
print(json.dumps(steps))
"""
# Each variant runs to the point where it would exec, then exits at once (as exec would: no
# interpreter teardown), so the counts cover the same work the start-up benchmark times.
STOP = "import os; os.execve = lambda *a: os._exit(0); "
# What the ztr-run console script does (sidecar.launch: the collector paused first).
RUN_ZTR = STOP + "import sys; from sidecar.launch import ztr_run; sys.argv[0] = 'ztr-run'; ztr_run()"
RUN_SCRIPT = STOP + "import sys; p = sys.argv[0] = sys.argv.pop(1); exec(compile(open(p).read(), p, 'exec'))"
ZTR_ARGS = ["--once", "--preset", "zero-to-running", "--", "/bin/true"]
# The start-up benchmark's names for the same variants.
ONCE, ONCE_OWN, FLOOR, BOTO3 = (startup.ONCE, startup.ONCE_OWN_LOADER, startup.FLOOR_CLIENT,
                                startup.BOTO3)
COUNTED = (ONCE, ONCE_OWN, FLOOR, BOTO3)


def ladder(env: dict[str, str], runs: int = 3) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for mode, mode_env in ((SELECTION, env), (OWN_LOADER, h.own_loader_env(env))):
        samples = []
        for _ in range(runs + 1):  # the first run compiles bytecode and warms the page cache
            proc = subprocess.run([h.PYTHON, "-c", LADDER], env=mode_env, capture_output=True,
                                  text=True, timeout=120)
            if proc.returncode != 0:
                raise SystemExit(f"bench footprint: the ladder failed:\n{proc.stderr[-2000:]}")
            samples.append(json.loads(proc.stdout.splitlines()[-1]))
        names = [name for name, _ in samples[-1]]
        out[mode] = [(name, statistics.median(s[i][1] for s in samples[1:]) / 1024)
                     for i, name in enumerate(names)]
    return out


def instructions(env: dict[str, str]) -> dict[str, float] | None:
    """Millions of instructions (callgrind's Ir) of each variant up to its exec; None without
    valgrind."""
    if shutil.which("valgrind") is None:
        return None
    argvs = {
        ONCE: ([h.PYTHON, "-c", RUN_ZTR, *ZTR_ARGS], env),
        ONCE_OWN: ([h.PYTHON, "-c", RUN_ZTR, *ZTR_ARGS], h.own_loader_env(env)),
        FLOOR: ([h.PYTHON, "-c", RUN_SCRIPT, str(h.HANDWRITTEN / "botocore_floor.py"), "/bin/true"],
                env),
        BOTO3: ([h.PYTHON, "-c", RUN_SCRIPT, str(h.HANDWRITTEN / "boto3_entrypoint.py"), "/bin/true"],
                env),
    }
    out = {}
    for name, (argv, variant_env) in argvs.items():
        subprocess.run(argv, env=variant_env, capture_output=True, timeout=120)  # bytecode
        proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                               *argv], env=variant_env, capture_output=True, text=True, timeout=900)
        match = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or match is None:
            raise SystemExit(f"bench footprint: callgrind on {name} failed:\n{proc.stderr[-2000:]}")
        out[name] = int(match[1]) / 1e6
    return out


def _importtime(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Median self import time (ms) of every module ``argv`` imports."""
    samples: dict[str, list[int]] = {}
    for _ in range(runs):
        proc = subprocess.run([h.PYTHON, "-X", "importtime", *argv], env=env, capture_output=True,
                              text=True, timeout=120)
        for line in proc.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+\d+ \| \s*(\S+)", line)
            if match:
                samples.setdefault(match[2], []).append(int(match[1]))
    return {name: statistics.median(values) / 1000 for name, values in samples.items()}


def imports(env: dict[str, str], runs: int = 5) -> dict[str, Any]:
    ztr = _importtime([h.ZTR_RUN, *ZTR_ARGS], env, runs)
    boto3 = _importtime([str(h.HANDWRITTEN / "boto3_entrypoint.py"), "/bin/true"], env, runs)
    own = {n: ms for n, ms in ztr.items() if n == "sidecar" or n.startswith("sidecar.")}
    only_ztr = {n: ms for n, ms in ztr.items() if n not in boto3 and n not in own}
    only_boto3 = {n: ms for n, ms in boto3.items() if n not in ztr}

    def top(table: dict[str, float], n: int = 12) -> list[tuple[str, float]]:
        return sorted(table.items(), key=lambda kv: -kv[1])[:n]

    return {"runs": runs, "ztr_total_ms": sum(ztr.values()), "ztr_modules": len(ztr),
            "boto3_total_ms": sum(boto3.values()), "boto3_modules": len(boto3),
            "top": top(ztr), "sidecar_total_ms": sum(own.values()), "sidecar": top(own, 20),
            "only_ztr_total_ms": sum(only_ztr.values()), "only_ztr": top(only_ztr, 8),
            "only_boto3_total_ms": sum(only_boto3.values()), "only_boto3": top(only_boto3, 8)}


def run() -> dict[str, Any]:
    started = time.monotonic()
    loads = [h.loadavg()]
    with h.moto_server() as endpoint:
        h.seed_preset(h.client(endpoint))
        env = h.env_for(endpoint)
        result: dict[str, Any] = {"ladder": ladder(env), "imports": imports(env),
                                  "instructions": instructions(env)}
    loads.append(h.loadavg())
    result.update(duration_seconds=time.monotonic() - started, loadavg=loads)
    return result


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Instruction counts give the start-up ratio without the machine's noise (informative: the
    target itself is on wall time, benchmark 1)."""
    counts = result.get("instructions")
    if not counts:
        return []
    ratio = counts[ONCE] / counts[BOTO3]
    floor = counts[FLOOR] / counts[BOTO3]
    return [{
        "target": "instructions to exec: ztr-run --once at most 0.80x the boto3 script "
                  "(callgrind; informative)",
        "met": ratio <= 0.80,
        "figure": f"{ratio:.2f}x ({counts[ONCE]:.0f} M vs {counts[BOTO3]:.0f} M; botocore's own "
                  f"loader {counts[ONCE_OWN] / counts[BOTO3]:.2f}x; the floor, ztr's client without "
                  f"its CLI, {floor:.2f}x)",
    }]
