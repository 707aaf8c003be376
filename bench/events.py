"""Push rotation benchmark: event published -> app restarted and file rewritten, and API calls
per pod-month with events (hourly floor) against polling every 5 minutes, from the real code path.

``python -m bench.events [--rotations N] [--window SECONDS]`` against a moto server on
127.0.0.1:0 that serves Secrets Manager, SNS and SQS on one port. Writes bench/out/events.json.

Latency: a ``ztr-run --events-topic T --refresh-interval 1h --debounce 0s --min-uptime 0s
--max-restarts 0`` supervising an app that prints its value, and a ``ztr watch --events-topic T
--refresh-interval 1h --output FILE`` (tmpfs) run side by side. Each rotation is a
PutSecretValue, then the native ``Secret Label Updated`` event published to the topic as
EventBridge would; the clock starts when Publish returns. ``--max-restarts 0`` switches off the
restart budget (6 an hour by default), which 20 rotations in a minute would otherwise measure.
With a 1 h floor, anything seen within seconds came from the event.

Calls per pod-month: two idle ``ztr watch`` processes on the same secrets over the same window,
one with ``--events-topic`` (floor 1 h), one polling every 5 minutes; each one's
``ztr_api_calls_total`` (every HTTP attempt, what AWS bills) is read from its /metrics before
and after. How each figure is scaled is written next to it:
- calls made while idle in the window (the long poll) scale by month / window;
- a scheduled check's calls are those of one ``POST /refresh``, which runs ``Watcher.cycle``,
  the function the refresh timer runs; they scale by month / mean wait, the wait being
  interval x U(JITTER_LOW, 1) (sidecar.watcher);
- the heartbeat (10 min) and orphan sweep (30 min) never fall in a short window: those rows come
  from ``eventstream.expected_monthly_requests`` (the schedule), marked as such.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from . import harness as h
from . import report

ENVIRONMENT = "events"  # the preset's names become events/zero-to-running/...
SECRET = f"{ENVIRONMENT}/zero-to-running/database-password"
MONTH_SECONDS = 30 * 24 * 3600.0
EVENTS_INTERVAL_SECONDS = 3600.0
POLLING_INTERVAL_SECONDS = 300.0
DEBOUNCE_SECONDS = 0.0
TARGET_SECONDS = 2.0 + DEBOUNCE_SECONDS  # issue 12: max <= 2 s plus the debounce
# FACTS.md: Secrets Manager $0.05 per 10,000 calls; SQS $0.40 per million requests (SNS is
# called only at start and exit).
SM_PRICE_USD = 0.05 / 10_000
SQS_PRICE_USD = 0.40 / 1_000_000
PRICE_PER_CALL_USD = {"DescribeSecret": SM_PRICE_USD, "GetSecretValue": SM_PRICE_USD,
                      "BatchGetSecretValue": SM_PRICE_USD, "ListSecrets": SM_PRICE_USD}
MIN_ROTATIONS = 20
MIN_WINDOW_SECONDS = 60.0  # an idle long poll returns every 20 s: at least three in a window
# Below the earliest polling check (JITTER_LOW x 300 s = 240 s): a check inside the window would be
# counted twice, once scaled by the window and once by the mean wait between checks.
MAX_WINDOW_SECONDS = 230.0
ROTATION_DEADLINE_SECONDS = 15.0  # a rotation not seen by then is a miss (the floor is 1 h)
STARTUP_SECONDS = 60.0
POLL_STEP_SECONDS = 0.005
APP = "app restarted (ztr-run)"
FILE = "file rewritten (ztr watch)"


def label_updated(arn: str, name: str, version_id: str) -> str:
    """The native event, as EventBridge delivers it to the topic."""
    return json.dumps({
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Secret Label Updated",
        "source": "aws.secretsmanager", "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": h.REGION,
        "resources": [arn],
        "detail": {"name": name, "labelUpdated": "AWSCURRENT", "versionId": version_id},
    })


def _clients(endpoint: str) -> tuple[Any, Any, Any]:
    import boto3

    def make(service: Any) -> Any:
        return boto3.client(service, endpoint_url=endpoint, region_name=h.REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    return h.client(endpoint), make("sns"), make("sqs")


def _common() -> list[str]:
    return ["--preset", "zero-to-running", "--environment", ENVIRONMENT,
            "--metrics-addr", "127.0.0.1:0"]


def _calls(proc: Any) -> dict[str, float]:
    """Successful and failed HTTP attempts by operation, from the process's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.helpers.proc import http

    status, page = http(proc.metrics_addr() + "/metrics")
    if status != 200:
        raise SystemExit(f"bench events: /metrics answered {status}")
    calls: dict[str, float] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == "ztr_api_calls_total":
                operation = sample.labels["operation"]
                calls[operation] = calls.get(operation, 0.0) + float(sample.value)
    return calls


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    delta = {op: after.get(op, 0.0) - before.get(op, 0.0) for op in set(after) | set(before)}
    return {op: n for op, n in sorted(delta.items()) if n}


def _events_up(proc: Any) -> bool:
    from tests.helpers.proc import http, metric

    return metric(http(proc.metrics_addr() + "/metrics")[1], "ztr_events_up") == 1.0


@contextmanager
def _procs() -> Iterator[list[Any]]:
    """Processes appended to the list are stopped (SIGTERM, then SIGKILL) on any exit."""
    procs: list[Any] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop(timeout=15)


def _latency(rotations: int, endpoint: str, topic: str, tmp: Path, sm: Any, sns: Any,
             procs: list[Any]) -> dict[str, Any]:
    from tests.helpers.proc import Proc

    env = h.env_for(endpoint, AWS_ENDPOINT_URL_SQS=endpoint, AWS_ENDPOINT_URL_SNS=endpoint)
    output = tmp / "events.env"
    events = ["--events-topic", topic, "--refresh-interval", "1h"]
    app = Proc([h.ZTR_RUN, *_common(), *events, "--debounce", "0s", "--min-uptime", "0s",
                "--max-restarts", "0", "--",
                "/bin/sh", "-c", 'echo "app-start $DATABASE_PASSWORD"; exec sleep 3600'], env)
    procs.append(app)
    watch = Proc([h.ZTR, "watch", *_common(), *events, "--output", str(output)], env)
    procs.append(watch)
    described = sm.describe_secret(SecretId=SECRET)
    first = sm.get_secret_value(SecretId=SECRET)["SecretString"]
    app.wait_stdout(f"app-start {first}", timeout=STARTUP_SECONDS)
    watch.wait_log("Wrote secrets; watching for changes", timeout=STARTUP_SECONDS)
    app.wait_until(lambda: _events_up(app), timeout=STARTUP_SECONDS, what="events up (run)")
    watch.wait_until(lambda: _events_up(watch), timeout=STARTUP_SECONDS, what="events up (watch)")
    latencies: dict[str, list[float]] = {APP: [], FILE: []}
    missed: dict[str, int] = {APP: 0, FILE: 0}
    watch_before = _calls(watch)
    for _ in range(rotations):
        time.sleep(0.3)  # let the previous restart settle; the timer is an hour away anyway
        value = f"rotated-{uuid.uuid4().hex}"
        version = sm.put_secret_value(SecretId=SECRET, SecretString=value)["VersionId"]
        sns.publish(TopicArn=topic, Message=label_updated(described["ARN"], SECRET, version))
        started = time.monotonic()
        seen: dict[str, float] = {}
        while len(seen) < 2 and time.monotonic() - started < ROTATION_DEADLINE_SECONDS:
            now = time.monotonic()
            if APP not in seen and f"app-start {value}" in app.stdout:
                seen[APP] = now - started
            if FILE not in seen and output.exists() and value in output.read_text():
                seen[FILE] = now - started
            time.sleep(POLL_STEP_SECONDS)
        for name in (APP, FILE):
            if name in seen:
                latencies[name].append(seen[name])
            else:
                missed[name] += 1
    per_rotation = {op: n / rotations for op, n in _delta(_calls(watch), watch_before).items()}
    return {"samples": latencies, "missed": missed,
            "summary": {name: h.summary(values) for name, values in latencies.items()},
            "watch_calls_per_rotation": per_rotation}


def _check_cost(proc: Any) -> dict[str, float]:
    """One scheduled check's calls: POST /refresh runs Watcher.cycle, as the timer does."""
    from tests.helpers.proc import http

    before = _calls(proc)
    status, body = http(proc.metrics_addr() + "/refresh", method="POST", timeout=30)
    if status != 200:
        raise SystemExit(f"bench events: POST /refresh answered {status}: {body}")
    return _delta(_calls(proc), before)


def _costs(window: float, endpoint: str, topic: str, tmp: Path, procs: list[Any]) -> dict[str, Any]:
    from sidecar.eventstream import expected_monthly_requests
    from sidecar.watcher import JITTER_LOW
    from tests.helpers.proc import Proc

    env = h.env_for(endpoint, AWS_ENDPOINT_URL_SQS=endpoint, AWS_ENDPOINT_URL_SNS=endpoint)
    modes = {
        "events": (["--events-topic", topic, "--refresh-interval", "1h"], EVENTS_INTERVAL_SECONDS),
        "polling": (["--refresh-interval", "5m"], POLLING_INTERVAL_SECONDS),
    }
    started: dict[str, Any] = {}
    for mode, (flags, _) in modes.items():
        proc = Proc([h.ZTR, "watch", *_common(), *flags, "--output", str(tmp / f"{mode}.env")], env)
        procs.append(proc)
        started[mode] = proc
    for proc in started.values():
        proc.wait_log("Wrote secrets; watching for changes", timeout=STARTUP_SECONDS)
    started["events"].wait_until(lambda: _events_up(started["events"]), timeout=STARTUP_SECONDS,
                                 what="events up")
    startup = {mode: _calls(proc) for mode, proc in started.items()}
    # A 90 s window holds 4 or 5 long polls: the count alone is quantised. The cadence (time
    # between the first and last completed ReceiveMessage seen, sampled every 0.25 s) is not.
    receives: list[tuple[float, float]] = []
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < window:
        count = _calls(started["events"]).get("ReceiveMessage", 0.0)
        if not receives or count != receives[-1][1]:
            receives.append((now, count))
        time.sleep(0.25)
    elapsed = time.monotonic() - t0
    idle = {mode: _delta(_calls(proc), startup[mode]) for mode, proc in started.items()}
    result: dict[str, Any] = {"window_seconds": elapsed, "month_seconds": MONTH_SECONDS,
                              "jitter_low": JITTER_LOW, "modes": {}}
    schedule = expected_monthly_requests("topic")
    for mode, (_, interval) in modes.items():
        check = _check_cost(started[mode])
        mean_wait = interval * (JITTER_LOW + 1.0) / 2.0
        rows: dict[str, dict[str, Any]] = {}
        for op, n in idle[mode].items():
            rows.setdefault(op, {"per_month": 0.0, "how": []})
            rows[op]["per_month"] += n * MONTH_SECONDS / elapsed
            rows[op]["how"].append(f"{n:.0f} in {elapsed:.0f} s idle x month/window")
        for op, n in check.items():
            rows.setdefault(op, {"per_month": 0.0, "how": []})
            rows[op]["per_month"] += n * MONTH_SECONDS / mean_wait
            rows[op]["how"].append(f"{n:.0f} per check x month/{mean_wait:.0f} s mean wait")
        if mode == "events":
            for op in ("TagQueue", "ListQueues", "ListQueueTags"):
                if op not in rows:  # outside the window: the keeper's schedule
                    rows[op] = {"per_month": schedule[op], "how": ["schedule (not in window)"]}
        result["modes"][mode] = {
            "interval_seconds": interval, "mean_wait_seconds": mean_wait,
            "startup_calls": startup[mode], "idle_calls": idle[mode], "check_calls": check,
            "per_month": {op: row["per_month"] for op, row in sorted(rows.items())},
            "how": {op: "; ".join(row["how"]) for op, row in sorted(rows.items())},
            "total_per_month": sum(row["per_month"] for row in rows.values()),
        }
    result["receive_schedule_per_month"] = schedule["ReceiveMessage"]
    steps = receives[1:]  # the first entry is the count at the window's start
    if len(steps) >= 2:
        cadence = (steps[-1][0] - steps[0][0]) / (steps[-1][1] - steps[0][1])
        result["receive_cadence_seconds"] = cadence
        result["receive_cadence_per_month"] = MONTH_SECONDS / cadence
    for mode in result["modes"].values():
        mode["cost_per_month_usd"] = sum(n * PRICE_PER_CALL_USD.get(op, SQS_PRICE_USD)
                                         for op, n in mode["per_month"].items())
    return result


def run(rotations: int = MIN_ROTATIONS, window: float = 90.0) -> dict[str, Any]:
    loads = [h.loadavg()]
    t0 = time.monotonic()
    with ExitStack() as stack:
        endpoint = stack.enter_context(h.moto_server())
        tmp = stack.enter_context(h.shm_dir("ztr-bench-events-"))
        sm, sns, _ = _clients(endpoint)
        h.seed_preset(sm, ENVIRONMENT)
        topic = str(sns.create_topic(Name="ztr-bench-events")["TopicArn"])
        with _procs() as procs:
            latency = _latency(rotations, endpoint, topic, tmp, sm, sns, procs)
        with _procs() as procs:
            costs = _costs(window, endpoint, topic, tmp, procs)
    loads.append(h.loadavg())
    return {"rotations": rotations, "debounce_seconds": DEBOUNCE_SECONDS,
            "target_seconds": TARGET_SECONDS, "duration_seconds": time.monotonic() - t0,
            "loadavg": loads, "nproc": os.cpu_count(), "latency": latency, "costs": costs}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name in (APP, FILE):
        s = result["latency"]["summary"][name]
        missed = result["latency"]["missed"][name]
        out.append({
            "target": f"{name}: max <= 2 s + debounce ({result['debounce_seconds']:.0f} s)",
            "met": bool(s.get("n")) and not missed and s["max"] <= result["target_seconds"],
            "figure": (f"median {s['median']:.3f} s, max {s['max']:.3f} s ({s['n']} rotations, "
                       f"{missed} missed)") if s.get("n") else f"no sample ({missed} missed)",
        })
    return out


def markdown(result: dict[str, Any]) -> str:
    lat, costs = result["latency"], result["costs"]
    lines = [f"## Push rotation: {result['rotations']} rotations, debounce "
             f"{result['debounce_seconds']:.0f} s, floor 1 h (loadavg {' -> '.join(result['loadavg'])}, "
             f"{result['nproc']} cores)", "",
             "| publish returned -> | median | max | min | missed | target max <= 2 s |",
             "|---|---|---|---|---|---|"]
    for name in (APP, FILE):
        s = lat["summary"][name]
        if s.get("n"):
            met = s["max"] <= result["target_seconds"] and not lat["missed"][name]
            lines.append(f"| {name} | {s['median'] * 1000:.0f} ms | {s['max'] * 1000:.0f} ms | "
                         f"{s['min'] * 1000:.0f} ms | {lat['missed'][name]} | "
                         f"{'met' if met else 'NOT MET'} |")
        else:
            lines.append(f"| {name} | - | - | - | {lat['missed'][name]} | NOT MET |")
    per_rotation = ", ".join(f"{op} {n:g}" for op, n in lat["watch_calls_per_rotation"].items())
    lines += ["", f"`ztr watch` calls per rotation event (all operations): {per_rotation}", "",
              f"API calls per pod-month (30 days), 4 secrets, idle window {costs['window_seconds']:.0f} s:",
              "", "| operation | events (floor 1 h) | polling (5 min) | how scaled (events / polling) |",
              "|---|---|---|---|"]
    ev, po = costs["modes"]["events"], costs["modes"]["polling"]
    for op in sorted(set(ev["per_month"]) | set(po["per_month"])):
        lines.append(f"| {op} | {ev['per_month'].get(op, 0):,.0f} | {po['per_month'].get(op, 0):,.0f} | "
                     f"{ev['how'].get(op, '-')} / {po['how'].get(op, '-')} |")
    lines.append(f"| **total calls** | **{ev['total_per_month']:,.0f}** | "
                 f"**{po['total_per_month']:,.0f}** | |")
    lines.append(f"| **cost** | **${ev['cost_per_month_usd']:.3f}** | **${po['cost_per_month_usd']:.3f}** "
                 "| SQS $0.40/M, Secrets Manager $0.05/10k |")
    lines += ["", f"Scheduled checks: mean wait = interval x ({costs['jitter_low']} + 1)/2 "
                  f"({ev['mean_wait_seconds']:.0f} s / {po['mean_wait_seconds']:.0f} s). "
                  "Schedule rows: eventstream.expected_monthly_requests (sweep of a topic with 9+ "
                  "queues inspects 8). ReceiveMessage by the schedule: "
                  f"{costs['receive_schedule_per_month']:,.0f}"]
    if "receive_cadence_seconds" in costs:
        lines[-1] += (f"; by the measured cadence (one per {costs['receive_cadence_seconds']:.2f} s): "
                      f"{costs['receive_cadence_per_month']:,.0f}")
    lines[-1] += "."
    return "\n".join(lines)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: processes stopped, moto shut


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__.split("\n")[0])
    parser.add_argument("--rotations", type=int, default=MIN_ROTATIONS,
                        help=f"rotations to time (default and minimum {MIN_ROTATIONS})")
    parser.add_argument("--window", type=float, default=90.0,
                        help=f"idle window for the call counts, seconds (default 90, minimum "
                             f"{MIN_WINDOW_SECONDS:.0f}, at most {MAX_WINDOW_SECONDS:.0f})")
    args = parser.parse_args(argv)
    if not MIN_ROTATIONS <= args.rotations <= 500:
        parser.error(f"--rotations must be between {MIN_ROTATIONS} and 500")
    if not MIN_WINDOW_SECONDS <= args.window <= MAX_WINDOW_SECONDS:
        parser.error(f"--window must be between {MIN_WINDOW_SECONDS:.0f} and "
                     f"{MAX_WINDOW_SECONDS:.0f} seconds")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    result = run(rotations=args.rotations, window=args.window)
    # Not h.machine(): it would install awscli into bench/out on first use.
    result["machine"] = {"nproc": os.cpu_count(), "python": sys.version.split()[0],
                         "loadavg": h.loadavg()}
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    path = report.save("events", result)
    print(markdown(result))
    for target in targets(result):
        print(f"  {'met    ' if target['met'] else 'NOT MET'}  {target['target']}: {target['figure']}")
    print(f"bench events: {result['duration_seconds']:.0f} s -> {path.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
