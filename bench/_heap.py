"""Run as a script against a Secrets Manager endpoint (boto3's variables): does ztr's refresh path
keep Python objects? Loads the preset's four secrets, runs WARMUP refresh cycles of the real
Watcher (loader.refresh + the metrics updates ``Runtime.start_watcher`` does) under
tracemalloc, then compares snapshots over two consecutive windows of CYCLES / 2 cycles (a leak
grows in both; churn in bounded caches does not repeat). Prints JSON.

    python bench/_heap.py ztr|bare WARMUP CYCLES

``bare`` runs the same windows over a bare boto3 client's four DescribeSecret calls a cycle, for
comparison: botocore itself keeps a few bytes per call (attribute-name strings built by its
serializer and validator).

RSS moves in pages and arenas; the Python heap does not, so this tells a slow leak from
allocator noise in a few seconds.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import sys
import threading
import time
import tracemalloc
from typing import Any


def bare_cycle() -> Any:
    import boto3

    client = boto3.client("secretsmanager")
    ids = [f"production/zero-to-running/{name}"
           for name in ("database-password", "session-secret", "redis-password", "jwt-secret")]

    class Ok:
        ok = True
        error = None

    def cycle() -> Any:
        for secret_id in ids:
            client.describe_secret(SecretId=secret_id)
        return Ok()

    return cycle


def ztr_cycle() -> Any:
    from sidecar import config as config_mod
    from sidecar import logs, startup
    from sidecar.metrics import Metrics
    from sidecar.watcher import Watcher

    config = config_mod.load("watch", {"preset": "zero-to-running", "output": "/dev/shm/unused.env"})
    logs.setup("json", "info", stream=open(os.devnull, "w"))  # noqa: SIM115
    metrics = Metrics()
    loader = startup.make_loader(config, record=metrics.record_call, stop=threading.Event())
    snapshot = loader.load()

    def on_cycle(outcome: Any) -> None:  # what Runtime.start_watcher's on_cycle does
        metrics.fetch_duration_seconds.observe(outcome.duration_seconds)
        metrics.refresh_total.labels("success" if outcome.ok else "error").inc()
        if outcome.ok:
            metrics.last_success_timestamp_seconds.set(time.time())
            logs.debug("Refresh done", changed=outcome.changed,
                       duration_seconds=round(outcome.duration_seconds, 4))

    watcher = Watcher(loader, snapshot, interval_seconds=1.0, max_stale_seconds=3.0,
                      on_cycle=on_cycle)
    return watcher.cycle


def main() -> None:
    mode, warmup, cycles = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cycle = ztr_cycle() if mode == "ztr" else bare_cycle()
    # Trace from before the warm-up: bounded caches that churn (botocore's and dateutil's
    # timestamp parsing) are then already traced when the first snapshot is taken, and only
    # what accumulates shows up in the difference.
    tracemalloc.start(8)
    for _ in range(warmup):
        cycle()
    gc.collect()
    snapshots = [tracemalloc.take_snapshot()]
    half = cycles // 2
    for _ in range(2):  # two consecutive windows: a leak grows in both, noise does not repeat
        for _ in range(half):
            outcome = cycle()
            if not outcome.ok:
                raise SystemExit(f"refresh failed: {outcome.error}")
        del outcome
        gc.collect()
        snapshots.append(tracemalloc.take_snapshot())
    windows = [sum(stat.size_diff for stat in later.compare_to(earlier, "filename"))
               for earlier, later in itertools.pairwise(snapshots)]
    stats = snapshots[-1].compare_to(snapshots[0], "traceback")
    grown = sum(stat.size_diff for stat in stats)
    top = [{"kib": stat.size_diff / 1024, "count": stat.count_diff,
            "where": stat.traceback.format()[-2].strip() if stat.traceback else "?"}
           for stat in stats[:5]]
    print(json.dumps({"cycles": 2 * half, "heap_growth_bytes": grown,
                      "bytes_per_cycle": grown / (2 * half), "window_cycles": half,
                      "window_bytes": windows,
                      "window_bytes_per_cycle": [w / half for w in windows], "top": top}))


if __name__ == "__main__":
    main()
