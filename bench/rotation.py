"""Benchmark 4: rotation latency, PutSecretValue -> the new value in the child (``ztr-run``,
restart on change, a child that prints its value on start) and in the file (``ztr watch``).

Both commands run side by side on the same secrets, so one PutSecretValue gives one sample of
each. Settings: ``--refresh-interval 1s`` with ``--debounce 0s``, then with the default
debounce (5s). ``--min-uptime 0s --max-restarts 0`` switch off the anti-storm budget, which a
child that has been up for hours never meets; with the defaults the bench would measure the
budget (10 s minimum uptime, 6 restarts an hour), not the rotation path. The pause between
rotations is random, so samples fall at every phase of the refresh timer.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

from . import harness as h

ENVIRONMENT = "rotation"  # --environment: the preset's names become rotation/zero-to-running/...
SECRET = f"{ENVIRONMENT}/zero-to-running/database-password"
INTERVAL_SECONDS = 1.0
DEFAULT_DEBOUNCE_SECONDS = 5.0
CHILD = "ztr-run child"
FILE = "ztr watch file"


def _common(debounce: str | None) -> list[str]:
    flags = ["--preset", "zero-to-running", "--environment", ENVIRONMENT,
             "--refresh-interval", "1s", "--metrics-addr", "127.0.0.1:0"]
    return flags + (["--debounce", debounce] if debounce is not None else [])


def _setting(debounce: str | None, samples: int, sm: Any, env: dict[str, str], tmp: Path,
             rng: random.Random) -> dict[str, Any]:
    from tests.helpers.proc import Proc

    output = tmp / "rotation.env"
    output.unlink(missing_ok=True)
    run = Proc([h.ZTR_RUN, *_common(debounce), "--min-uptime", "0s", "--max-restarts", "0", "--",
                "/bin/sh", "-c", 'echo "child-start $DATABASE_PASSWORD"; exec sleep 3600'], env)
    watch = Proc([h.ZTR, "watch", *_common(debounce), "--output", str(output)], env)
    latencies: dict[str, list[float]] = {CHILD: [], FILE: []}
    try:
        first = sm.get_secret_value(SecretId=SECRET)["SecretString"]
        run.wait_stdout(f"child-start {first}", timeout=60)
        watch.wait_log("Wrote secrets; watching for changes", timeout=60)
        for _ in range(samples):
            time.sleep(rng.uniform(0.2, 1.2))  # a random phase against both refresh timers
            value = f"rotated-{uuid.uuid4().hex}"
            started = time.monotonic()
            sm.put_secret_value(SecretId=SECRET, SecretString=value)
            seen: dict[str, float] = {}
            deadline = started + INTERVAL_SECONDS + DEFAULT_DEBOUNCE_SECONDS + 30
            while len(seen) < 2:
                now = time.monotonic()
                if now > deadline:
                    raise SystemExit(f"bench rotation: {sorted({CHILD, FILE} - set(seen))} never "
                                     f"saw the new value:\n" + "\n".join(run.stderr[-10:]))
                if CHILD not in seen and f"child-start {value}" in run.stdout:
                    seen[CHILD] = now - started
                if FILE not in seen and output.exists() and value in output.read_text():
                    seen[FILE] = now - started
                time.sleep(0.005)
            for name, latency in seen.items():
                latencies[name].append(latency)
    finally:
        run.stop()
        watch.stop()
    debounce_seconds = DEFAULT_DEBOUNCE_SECONDS if debounce is None else float(debounce.rstrip("s"))
    bound = INTERVAL_SECONDS + debounce_seconds + 1.0
    return {
        "debounce": debounce or "default (5s)",
        "debounce_seconds": debounce_seconds,
        "bound_seconds": bound,
        "samples": latencies,
        "summary": {name: h.summary(values) for name, values in latencies.items()},
    }


def run(samples_fast: int = 8, samples_default: int = 4, seed: int | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    loads = [h.loadavg()]
    started = time.monotonic()
    with h.moto_server() as endpoint, h.shm_dir("ztr-bench-rotation-") as tmp:
        sm = h.client(endpoint)
        h.seed_preset(sm, ENVIRONMENT)
        env = h.env_for(endpoint)
        settings = [_setting("0s", samples_fast, sm, env, tmp, rng),
                    _setting(None, samples_default, sm, env, tmp, rng)]
    loads.append(h.loadavg())
    return {"interval_seconds": INTERVAL_SECONDS, "duration_seconds": time.monotonic() - started,
            "loadavg": loads, "settings": settings}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for setting in result["settings"]:
        for name in (CHILD, FILE):
            s = setting["summary"][name]
            out.append({
                "target": f"{name}, debounce {setting['debounce']}: at most interval + debounce "
                          f"+ 1 s = {setting['bound_seconds']:.0f} s",
                "met": s["max"] <= setting["bound_seconds"],
                "figure": f"max {s['max']:.2f} s, median {s['median']:.2f} s, min {s['min']:.2f} s "
                          f"({s['n']} rotations)",
            })
    return out
