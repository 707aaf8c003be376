"""Benchmark 2: N = 4, 20, 100, 500 secrets through the fault proxy (20 ms added per request, a
realistic in-region round trip) in front of moto: API calls by operation and wall time.

Variants, each a fresh process writing or printing the values; every round runs each (N,
variant) pair once, in a shuffled order:
  ztr --secret   ``ztr init --secret S0000=... (N of them) --output F`` (the primary variant:
                 a declared list is how deployments name their secrets, and it is what
                 ``value calls = ceil(N/20)`` is about)
  ztr --prefix   ``ztr init --prefix P --output F``: the same plus ListSecrets pages
  boto3 loop     sequential GetSecretValue, one call a secret (bench/handwritten/boto3_get_loop.py)
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

from . import harness as h

SIZES = (4, 20, 100, 500)
LATENCY_SECONDS = 0.02
OPERATIONS = ("BatchGetSecretValue", "GetSecretValue", "ListSecrets", "DescribeSecret")
DECLARED = "ztr --secret"
PREFIX = "ztr --prefix"
LOOP = "boto3 loop"
VARIANTS = (DECLARED, PREFIX, LOOP)


def _prefix(n: int) -> str:
    return f"bench/scale/n{n}/"


def _ids(n: int) -> list[str]:
    return [f"{_prefix(n)}s{i:04d}" for i in range(n)]


def _seed(sm: Any, sizes: tuple[int, ...]) -> None:
    for n in sizes:
        for secret_id in _ids(n):
            h.ensure_secret(sm, secret_id, f"value-{secret_id}-" + "x" * 24)


def _argv(variant: str, n: int, out: Path, ids_file: Path) -> list[str]:
    if variant == DECLARED:
        flags = [f"--secret=S{i:04d}={secret_id}" for i, secret_id in enumerate(_ids(n))]
        return [h.ZTR, "init", *flags, "--output", str(out)]
    if variant == PREFIX:
        return [h.ZTR, "init", "--prefix", _prefix(n), "--output", str(out)]
    return [h.PYTHON, str(h.HANDWRITTEN / "boto3_get_loop.py"), str(ids_file)]


def _load_seconds(variant: str, result: h.Timed) -> float | None:
    """The fetch phase alone: ztr's own log line, or the loop's printed figure."""
    text = result.stdout if variant == LOOP else result.stderr
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if variant == LOOP:
            return float(entry["load_seconds"])
        if entry.get("msg") == "Successfully loaded secrets from AWS Secrets Manager":
            return float(entry["duration_seconds"])
    return None


def run(rounds: int = 5, sizes: tuple[int, ...] = SIZES, seed: int | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    loads = [h.loadavg()]
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with h.moto_server() as endpoint, h.shm_dir("ztr-bench-scale-") as tmp:
        _seed(h.client(endpoint), sizes)
        with h.fault_proxy(endpoint) as proxy:
            env = h.env_for(proxy.url)
            for n in sizes:
                ids_file = tmp / f"ids-{n}.txt"
                ids_file.write_text("\n".join(_ids(n)) + "\n")
            # Warm-up (bytecode, page cache) without latency, not recorded.
            for variant in VARIANTS:
                h.run_timed(_argv(variant, sizes[0], tmp / "warm.env", tmp / f"ids-{sizes[0]}.txt"), env)
            proxy.latency_seconds = LATENCY_SECONDS
            # Every (N, variant) pair once a round, all shuffled: no size always runs first
            # (right after the 14 s boto3 loop at N=500, say).
            order = [(n, variant) for n in sizes for variant in VARIANTS]
            for round_no in range(1, rounds + 1):
                rng.shuffle(order)
                for n, variant in order:
                    out = tmp / f"out-{n}.env"
                    out.unlink(missing_ok=True)
                    proxy.reset_counts()
                    result = h.run_timed(_argv(variant, n, out, tmp / f"ids-{n}.txt"), env)
                    if result.code != 0:
                        raise SystemExit(f"bench scale: {variant} N={n} exited {result.code}:\n"
                                         f"{result.stderr[-2000:]}")
                    if variant != LOOP and out.read_text().count("\n") != n:
                        raise SystemExit(f"bench scale: {variant} N={n} wrote a wrong file")
                    calls = {op: proxy.calls(op) for op in OPERATIONS}
                    calls["total"] = proxy.calls()
                    runs.append({"round": round_no, "n": n, "variant": variant,
                                 "wall": result.wall_seconds,
                                 "load": _load_seconds(variant, result),
                                 "maxrss_mib": result.maxrss_mib, "calls": calls})
    loads.append(h.loadavg())
    return {"rounds": rounds, "sizes": list(sizes), "latency_seconds": LATENCY_SECONDS,
            "duration_seconds": time.monotonic() - started, "loadavg": loads, "runs": runs,
            "summary": summarise(runs, sizes)}


def summarise(runs: list[dict[str, Any]], sizes: tuple[int, ...] | list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        per_n: dict[str, Any] = {}
        for n in sizes:
            items = [r for r in runs if r["variant"] == variant and r["n"] == n]
            if not items:
                continue
            last = items[-1]["calls"]
            per_n[str(n)] = {
                "wall": h.summary(r["wall"] for r in items),
                "load": h.summary(r["load"] for r in items if r["load"] is not None),
                "maxrss_mib": h.summary(r["maxrss_mib"] for r in items if r["maxrss_mib"]),
                "calls": last,
                "calls_stable": all(r["calls"] == last for r in items),
                "value_calls": last["BatchGetSecretValue"] + last["GetSecretValue"],
            }
        out[variant] = per_n
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    s = result["summary"][DECLARED]
    sizes = [int(n) for n in s]
    calls_ok = all(s[str(n)]["value_calls"] == math.ceil(n / 20) for n in sizes)
    calls_fig = ", ".join(f"N={n}: {s[str(n)]['value_calls']} (want {math.ceil(n / 20)})"
                          for n in sizes)
    out = [{"target": "value calls = ceil(N/20) (ztr --secret)", "met": calls_ok, "figure": calls_fig}]
    if "4" in s and "500" in s:
        ratio = s["500"]["wall"]["median"] / s["4"]["wall"]["median"]
        load_ratio = s["500"]["load"]["median"] / s["4"]["load"]["median"]
        out.append({
            "target": "wall time at N=500 at most 3x that at N=4 (ztr --secret, whole process)",
            "met": ratio <= 3.0,
            "figure": f"{ratio:.2f}x ({s['500']['wall']['median'] * 1000:.0f} ms vs "
                      f"{s['4']['wall']['median'] * 1000:.0f} ms); fetch phase alone "
                      f"{load_ratio:.1f}x ({s['500']['load']['median'] * 1000:.0f} ms vs "
                      f"{s['4']['load']['median'] * 1000:.0f} ms)",
        })
    return out
