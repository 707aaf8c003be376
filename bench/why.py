"""Where ``ztr-run --once`` spends its start-up, and what each candidate fix would save.

Every figure is a median over fresh processes against moto on loopback, interleaved:
  * phases of ztr's --once path and of the boto3 script (bench/_phases.py);
  * the same with each candidate fix applied inside the measuring process only (sidecar/ is
    never changed): the saving is the baseline's median wall time minus the variant's;
  * modules only one side imports, with their self import time (``python -X importtime``);
  * a cProfile of ``sidecar.cli.main`` (exec replaced by an exit) written to bench/out.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import subprocess
import time
from typing import Any

from . import harness as h

PHASES = str(h.BENCH / "_phases.py")
PRUNED = h.OUT / "botocore-data"  # endpoints.json cut to secretsmanager + sts (AWS_DATA_PATH)
BASELINE = "ztr (as is)"
ALL_FIXES = "ztr + all three"
EXPERIMENTS: dict[str, tuple[list[str], bool]] = {  # name -> (_phases.py args, pruned data?)
    BASELINE: (["ztr"], False),
    "ztr + pruned endpoints.json": (["ztr"], True),
    "ztr + no service-directory scan": (["ztr", "--patch-loader"], False),
    "ztr + parser for `run` only": (["ztr", "--one-subparser"], False),
    ALL_FIXES: (["ztr", "--one-subparser", "--patch-loader"], True),
    "boto3 script (as is)": (["boto3"], False),
}
PROFILE_SCRIPT = """
import cProfile, os, pstats, sys
os.execve = lambda *a: (_ for _ in ()).throw(SystemExit(0))
from sidecar.cli import main
profile = cProfile.Profile()
profile.enable()
try:
    main(["run", "--once", "--preset", "zero-to-running", "--log-level", "warning", "--", "true"])
except SystemExit:
    pass
profile.disable()
profile.dump_stats(sys.argv[1])
with open(sys.argv[2], "w") as out:
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(40)
"""


def prune_endpoints() -> None:
    """botocore's endpoints.json (700+ KiB, parsed by every client creation) with only the two
    services ztr calls; endpoint URLs resolve the same for every partition."""
    import botocore.session

    data = botocore.session.get_session().get_component("data_loader").load_data("endpoints")
    for partition in data["partitions"]:
        partition["services"] = {name: service for name, service in partition["services"].items()
                                 if name in ("secretsmanager", "sts")}
    PRUNED.mkdir(parents=True, exist_ok=True)
    (PRUNED / "endpoints.json").write_text(json.dumps(data))


def _phases(env: dict[str, str], experiment: tuple[list[str], bool]) -> tuple[float, dict[str, float]]:
    args, pruned = experiment
    if pruned:
        env = {**env, "AWS_DATA_PATH": str(PRUNED)}
    result = h.run_timed([h.PYTHON, PHASES, *args], env)
    if result.code != 0:
        raise SystemExit(f"bench why: {args} failed:\n{result.stderr[-2000:]}")
    data = json.loads(result.stdout.splitlines()[0])
    return result.wall_seconds * 1000, {name: ms for name, ms in data["phases"]}


def _importtime(env: dict[str, str], argv: list[str], runs: int) -> list[dict[str, int]]:
    out = []
    for _ in range(runs):
        proc = subprocess.run([h.PYTHON, "-X", "importtime", *argv], env=env, capture_output=True,
                              text=True, timeout=120)
        selfs: dict[str, int] = {}
        for line in proc.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
            if match:
                selfs[match[4]] = int(match[1])
        out.append(selfs)
    return out


def _only(a: list[dict[str, int]], b: list[dict[str, int]]) -> tuple[float, list[tuple[str, float]]]:
    names = set(a[0]) - set(b[0])
    rows = sorted(((n, statistics.median(r.get(n, 0) for r in a) / 1000) for n in names),
                  key=lambda row: -row[1])
    return sum(ms for _, ms in rows), rows


def run(rounds: int = 15, seed: int | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.monotonic()
    loads = [h.loadavg()]
    prune_endpoints()
    with h.moto_server() as endpoint:
        h.seed_preset(h.client(endpoint))
        env = h.env_for(endpoint)
        for experiment in EXPERIMENTS.values():  # warm-up: bytecode, page cache
            _phases(env, experiment)
        walls: dict[str, list[float]] = {name: [] for name in EXPERIMENTS}
        phases: dict[str, list[dict[str, float]]] = {name: [] for name in EXPERIMENTS}
        order = list(EXPERIMENTS)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                wall, detail = _phases(env, EXPERIMENTS[name])
                walls[name].append(wall)
                phases[name].append(detail)
        ztr_imports = _importtime(env, [h.ZTR_RUN, "--once", "--preset", "zero-to-running", "--",
                                        "true"], 5)
        boto3_imports = _importtime(env, [str(h.HANDWRITTEN / "boto3_entrypoint.py"), "true"], 5)
        profile_txt = h.OUT / "startup-profile.txt"
        subprocess.run([h.PYTHON, "-c", PROFILE_SCRIPT, str(h.OUT / "startup.prof"), str(profile_txt)],
                       env=env, check=True, timeout=120)
        importtime_txt = h.OUT / "startup-importtime.txt"
        with open(importtime_txt, "w") as handle:
            subprocess.run([h.PYTHON, "-X", "importtime", h.ZTR_RUN, "--once", "--preset",
                            "zero-to-running", "--", "true"], env=env, stderr=handle,
                           stdout=subprocess.DEVNULL, timeout=120)
    only_ztr_ms, only_ztr = _only(ztr_imports, boto3_imports)
    only_boto3_ms, only_boto3 = _only(boto3_imports, ztr_imports)
    summary = {name: statistics.median(values) for name, values in walls.items()}
    phase_medians = {
        name: {phase: statistics.median(d[phase] for d in items) for phase in items[0]}
        for name, items in phases.items()
    }
    base = summary[BASELINE]
    loads.append(h.loadavg())
    return {
        "rounds": rounds,
        "loadavg": loads,
        "duration_seconds": time.monotonic() - started,
        "wall_ms": summary,
        "saving_ms": {name: base - ms for name, ms in summary.items() if name.startswith("ztr +")},
        "phases_ms": phase_medians,
        "imports_only_in_ztr": {"total_ms": only_ztr_ms, "top": only_ztr[:12]},
        "imports_only_in_boto3_script": {"total_ms": only_boto3_ms, "top": only_boto3[:12]},
        "files": [str(p.relative_to(h.ROOT)) for p in (profile_txt, importtime_txt,
                                                       h.OUT / "startup.prof")],
    }
