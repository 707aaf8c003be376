"""Benchmark 3: steady state. Peak and steady RSS, CPU per refresh cycle and RSS growth of
``ztr watch`` and of a supervising ``ztr-run -- sleep`` (4 secrets, metrics on 127.0.0.1:0,
refresh every 50 ms), against a bare boto3 client doing the same DescribeSecret loop.

Each process runs alone (one after the other) through the fault proxy with no added latency:
the proxy's DescribeSecret count / 4 says how many cycles have run, cheaply and for all three
alike; for ztr the count is checked against ``ztr_refresh_total`` on /metrics, which is scraped
only at the checkpoints (a scrape costs ztr CPU too). /proc/PID/status (VmRSS, VmHWM) and
/proc/PID/stat (utime + stime) are sampled at every checkpoint.
"""

from __future__ import annotations

import time
from typing import Any

from . import harness as h

INTERVAL = "50ms"
INTERVAL_SECONDS = 0.05
SECRETS = 4
WARMUP_CYCLES = 100  # measured from here: first-cycle imports and allocator warm-up excluded
WATCH = "ztr watch"
RUN = "ztr-run -- sleep (supervising)"
BARE = "bare boto3 loop"
# ztr's client and prometheus-client's own server, no ztr code: the floor under ztr's RSS.
FLOOR = "floor: ztr's client + prometheus-client, bare loop"
WATCH_OWN = "ztr watch, botocore's own loader"
RUN_OWN = "ztr-run -- sleep, botocore's own loader"
VARIANTS = (WATCH, RUN, BARE, FLOOR, WATCH_OWN, RUN_OWN)
HANDWRITTEN = {BARE: "boto3_describe_loop.py", FLOOR: "botocore_floor_loop.py"}
OWN_LOADER = {WATCH_OWN: WATCH, RUN_OWN: RUN}  # the same process on all of botocore/data
RSS_LIMIT_MIB = 36.0  # issue 13, metrics on, after 200 cycles or more (stretch 32)
RSS_STRETCH_MIB = 32.0


def _argv(variant: str, output: str) -> list[str]:
    common = ["--preset", "zero-to-running", "--refresh-interval", INTERVAL,
              "--metrics-addr", "127.0.0.1:0"]
    if variant in (WATCH, WATCH_OWN):
        return [h.ZTR, "watch", *common, "--output", output]
    if variant in (RUN, RUN_OWN):
        return [h.ZTR_RUN, *common, "--", "sleep", "3600"]
    return [h.PYTHON, str(h.HANDWRITTEN / HANDWRITTEN[variant]), str(INTERVAL_SECONDS)]


def _refresh_total(url: str) -> float | None:
    from tests.helpers.proc import http, metric

    status, body = http(url + "/metrics")
    if status != 200:
        return None
    return metric(body, "ztr_refresh_total", {"result": "success"})


def _measure(variant: str, env: dict[str, str], proxy: Any, output: str, cycles: int,
             every: int) -> dict[str, Any]:
    from tests.helpers.proc import Proc

    proxy.reset_counts()
    proc = Proc(_argv(variant, output), env)
    checkpoints: list[dict[str, Any]] = []
    try:
        url = None
        if variant in HANDWRITTEN:
            proc.wait_stdout("loaded", timeout=60)
        else:
            proc.wait_log("Successfully loaded secrets from AWS Secrets Manager", timeout=60)
            url = proc.metrics_addr(timeout=60)
        value_ops = ("GetSecretValue", "BatchGetSecretValue")
        value_calls_at_load = sum(proxy.calls(op) for op in value_ops)
        total = WARMUP_CYCLES + cycles
        deadline = time.monotonic() + total * INTERVAL_SECONDS * 4 + 60
        marks = list(range(WARMUP_CYCLES, total + 1, every))
        for mark in marks:
            while proxy.calls("DescribeSecret") < mark * SECRETS:
                if time.monotonic() > deadline or proc.popen.poll() is not None:
                    raise SystemExit(f"bench steady: {variant} stalled before cycle {mark}:\n"
                                     + "\n".join(proc.stderr[-20:]))
                time.sleep(0.005)
            snap = h.sample(proc.pid)
            point = {"cycles": proxy.calls("DescribeSecret") / SECRETS, "rss_kib": snap.rss_kib,
                     "hwm_kib": snap.hwm_kib, "cpu": snap.cpu_seconds, "threads": snap.threads,
                     "time": time.monotonic()}
            if url is not None:
                point["refresh_total"] = _refresh_total(url)
            checkpoints.append(point)
        calls = {op: proxy.calls(op) for op in ("DescribeSecret", "GetSecretValue",
                                                  "BatchGetSecretValue", "ListSecrets")}
        calls["total"] = proxy.calls()
        calls["value_calls_after_load"] = sum(calls[op] for op in value_ops) - value_calls_at_load
    finally:
        proc.stop()
    return summarise_one(checkpoints, calls)


def summarise_one(points: list[dict[str, Any]], calls: dict[str, int]) -> dict[str, Any]:
    first, last = points[0], points[-1]
    d_cycles = last["cycles"] - first["cycles"]
    d_cpu = last["cpu"] - first["cpu"]
    d_time = last["time"] - first["time"]
    cpu_per_cycle = d_cpu / d_cycles if d_cycles else 0.0
    xs = [p["cycles"] for p in points]
    rss = [p["rss_kib"] for p in points]
    refresh_seen = [p.get("refresh_total") for p in points if p.get("refresh_total") is not None]
    middle = min(points, key=lambda p: abs(p["cycles"] - (first["cycles"] + d_cycles / 2)))
    return {
        "checkpoints": points,
        "calls": calls,
        "cycles_measured": d_cycles,
        "seconds_measured": d_time,
        "cpu_seconds_per_1000_cycles": cpu_per_cycle * 1000,
        "cpu_ms_per_check": cpu_per_cycle * 1000 / SECRETS,
        "cpu_share_of_a_core": d_cpu / d_time if d_time else 0.0,
        "rss_steady_mib": last["rss_kib"] / 1024,
        "rss_peak_mib": last["hwm_kib"] / 1024,
        "rss_growth_kib": last["rss_kib"] - first["rss_kib"],
        "rss_growth_second_half_kib": last["rss_kib"] - middle["rss_kib"],
        "second_half_cycles": last["cycles"] - middle["cycles"],
        "rss_slope_kib_per_1000_cycles": h.slope(xs, rss) * 1000,
        "threads": last["threads"],
        "refresh_total_last": refresh_seen[-1] if refresh_seen else None,
        "value_calls_after_load": calls["value_calls_after_load"],
    }


def heap(endpoint: str, warmup: int, cycles: int, mode: str = "ztr") -> dict[str, Any]:
    """bench/_heap.py in its own process: Python-heap growth of the real refresh path (or of a
    bare boto3 client's checks, ``mode="bare"``)."""
    import json
    import subprocess

    proc = subprocess.run([h.PYTHON, str(h.BENCH / "_heap.py"), mode, str(warmup), str(cycles)],
                          env=h.env_for(endpoint), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"bench steady: _heap.py failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    result["warmup"] = warmup
    return result


def run(cycles: int = 1000, every: int = 20, heap_cycles: int = 3000) -> dict[str, Any]:
    """``cycles`` measured cycles after WARMUP_CYCLES unmeasured ones, per process; then the
    Python-heap check: ``heap_cycles / 2`` warm-up cycles, then ``heap_cycles`` measured."""
    loads = [h.loadavg()]
    started = time.monotonic()
    results: dict[str, Any] = {}
    with h.moto_server() as endpoint, h.shm_dir("ztr-bench-steady-") as tmp:
        h.seed_preset(h.client(endpoint))
        with h.fault_proxy(endpoint) as proxy:
            env = h.env_for(proxy.url)
            for variant in VARIANTS:
                run_env = h.own_loader_env(env) if variant in OWN_LOADER else env
                results[variant] = _measure(variant, run_env, proxy, str(tmp / "watch.env"), cycles,
                                            every)
        heap_result = heap(endpoint, heap_cycles // 2, heap_cycles)
        heap_result["bare"] = heap(endpoint, heap_cycles // 2, heap_cycles, mode="bare")
    loads.append(h.loadavg())
    return {"cycles": cycles, "interval": INTERVAL, "secrets": SECRETS, "warmup_cycles": WARMUP_CYCLES,
            "duration_seconds": time.monotonic() - started, "loadavg": loads, "summary": results,
            "heap": heap_result}


# "No growth" = a plateau: RSS rises in one-off steps for a while after start (arenas, bounded
# caches, the first /metrics scrapes' thread stacks), so it is judged on the second half of the
# measured window (4 pages at most), and slow leaks on the Python heap (tracemalloc, below).
# Windows of 100 cycles were too short for that (2026-12-02): the default is 1000 cycles.
GROWTH_LIMIT_KIB = 16
# Over what a bare boto3 client keeps per cycle: 4.6 KiB a day at the default 5-minute interval.
# Churning bounded caches in botocore move one window's difference by a few KiB either way; a
# leak shows in both windows, so the smaller of the two is judged.
HEAP_LIMIT_BYTES_PER_CYCLE = 16.0


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    s = result["summary"]
    bare = s[BARE]
    hp = result.get("heap")
    if hp:
        where = "; ".join(f"{t['kib']:+.1f} KiB at {t['where'].split('site-packages/')[-1]}"
                          for t in hp["top"][:2])
        per_window = hp.get("window_bytes_per_cycle") or [hp["bytes_per_cycle"]]
        bare_windows = (hp.get("bare") or {}).get("window_bytes_per_cycle") or [0.0]
        allowed = max(bare_windows) + HEAP_LIMIT_BYTES_PER_CYCLE
        out.append({
            "target": "no growth: Python heap of the refresh path (tracemalloc; at most "
                      f"bare boto3's + {HEAP_LIMIT_BYTES_PER_CYCLE:.0f} B/cycle, in both windows)",
            "met": min(per_window) <= allowed,
            "figure": f"{hp['heap_growth_bytes'] / 1024:+.1f} KiB over {hp['cycles']} cycles after "
                      f"{hp['warmup']} warm-up cycles; windows of {hp.get('window_cycles', '?')}: "
                      + ", ".join(f"{b:+.1f}" for b in per_window) + " B/cycle (bare boto3: "
                      + ", ".join(f"{b:+.1f}" for b in bare_windows) + f"; largest: {where})",
        })
    for variant in (WATCH, RUN):
        r = s[variant]
        own = next((s[o] for o, v in OWN_LOADER.items() if v == variant and o in s), None)
        saved = "" if own is None else (
            f"; botocore's own loader: peak {own['rss_peak_mib']:.1f}, so the selection saves "
            f"{own['rss_peak_mib'] - r['rss_peak_mib']:.1f} MiB")
        floor = "" if FLOOR not in s else (
            f"; the floor, ztr's client and prometheus-client's own server with no ztr code: "
            f"peak {s[FLOOR]['rss_peak_mib']:.1f}")
        for limit, label in ((RSS_LIMIT_MIB, ""), (RSS_STRETCH_MIB, " (stretch)")):
            out.append({
                "target": f"{variant}: RSS at most {limit:.0f} MiB, metrics on{label}",
                "met": r["rss_peak_mib"] <= limit,
                "figure": f"peak {r['rss_peak_mib']:.1f} MiB, steady {r['rss_steady_mib']:.1f} MiB "
                          f"(bare boto3 loop: peak {bare['rss_peak_mib']:.1f}, steady "
                          f"{bare['rss_steady_mib']:.1f}{saved}{floor})",
            })
        out.append({
            "target": f"{variant}: no RSS growth (plateau: at most {GROWTH_LIMIT_KIB} KiB over "
                      "the second half of the measured cycles)",
            "met": r["rss_growth_second_half_kib"] <= GROWTH_LIMIT_KIB,
            "figure": f"{r['rss_growth_second_half_kib']:+d} KiB over the last "
                      f"{r['second_half_cycles']:.0f} cycles; {r['rss_growth_kib']:+d} KiB over all "
                      f"{r['cycles_measured']:.0f} (bare boto3: "
                      f"{bare['rss_growth_second_half_kib']:+d} and {bare['rss_growth_kib']:+d} KiB)",
        })
        out.append({
            "target": f"{variant}: at most 1 ms CPU per unchanged-secret check",
            "met": r["cpu_ms_per_check"] <= 1.0,
            "figure": f"{r['cpu_ms_per_check']:.2f} ms per check "
                      f"({r['cpu_seconds_per_1000_cycles']:.2f} CPU s per 1,000 cycles of "
                      f"{SECRETS}; bare boto3 {bare['cpu_ms_per_check']:.2f} ms per check)",
        })
    return out
