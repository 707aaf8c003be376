"""``ztr plan``: API calls per second against each account quota, and the monthly bill, for a
fleet running ztr. Derived from the code that makes the calls (``plan_fetch``, the refresh
loop's one DescribeSecret per secret per cycle), not from a separate guess."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import IO

from .. import logs
from ..config import EVENTS_REFRESH_INTERVAL_SECONDS, Config
from ..refs import FetchKey
from ..signals import SignalInbox
from ..source import plan_fetch
from ..watcher import JITTER_LOW

# Per account and region (FACTS: Secrets Manager quotas).
QUOTAS_TPS = {
    "GetSecretValue": 10_000.0,
    "DescribeSecret": 40_000.0,
    "BatchGetSecretValue": 100.0,
    "ListSecrets": 100.0,
}
PRICE_PER_10K_CALLS = 0.05
SQS_PRICE_PER_MILLION = 0.40  # requests, empty long-poll receives included
SQS_QUOTA_TPS = 300_000.0  # standard queues: nearly unlimited; shown for the table's shape
PRICE_PER_SECRET_MONTH = 0.40
SECONDS_PER_MONTH = 30 * 24 * 3600


@dataclass(frozen=True)
class Line:
    operation: str
    per_pod_per_cycle: float
    fleet_tps: float
    quota_tps: float
    quota_used_percent: float
    calls_per_month: float
    cost_per_month: float


@dataclass(frozen=True)
class Plan:
    pods: int
    secrets: int
    interval_seconds: float
    startup_calls_per_pod: dict[str, int]
    refresh: list[Line]
    api_cost_per_month: float
    storage_cost_per_month: float
    events: bool = False


def startup_calls(secrets: int) -> dict[str, int]:
    """Calls one pod makes to load ``secrets`` AWSCURRENT secrets (the loader's own plan)."""
    keys = [FetchKey(f"s{i}") for i in range(secrets)]
    chunks, single = plan_fetch(keys)
    calls = {"BatchGetSecretValue": len(chunks), "GetSecretValue": len(single)}
    return {op: n for op, n in calls.items() if n}


def make_plan(pods: int, secrets: int, interval_seconds: float, *, events: bool = False) -> Plan:
    """Polling every ``interval_seconds``; with ``events``, push rotation: the event stream's own
    SQS requests (from the stream's constants) plus DescribeSecret at ``interval_seconds`` as the
    floor."""
    # The refresh loop waits interval x U(JITTER_LOW, 1): on average a little more often.
    mean_interval = interval_seconds * (1 + JITTER_LOW) / 2
    per_cycle = {"DescribeSecret": float(secrets)}  # one per unpinned secret per cycle
    lines = []
    api_cost = 0.0
    for operation, calls in per_cycle.items():
        tps = pods * calls / mean_interval
        monthly = tps * SECONDS_PER_MONTH
        cost = monthly / 10_000 * PRICE_PER_10K_CALLS
        api_cost += cost
        quota = QUOTAS_TPS[operation]
        lines.append(Line(operation, calls, round(tps, 3), quota, round(100 * tps / quota, 4),
                          round(monthly), round(cost, 2)))
    if events:
        from ..eventstream import expected_monthly_requests

        for operation, per_pod in expected_monthly_requests("topic", fleet_queues=pods).items():
            monthly = pods * per_pod
            tps = monthly / SECONDS_PER_MONTH
            cost = monthly / 1_000_000 * SQS_PRICE_PER_MILLION
            api_cost += cost
            # A stream, not a cycle: per pod it is in CALLS/MONTH / pods; the column shows "-".
            lines.append(Line(f"SQS {operation}", 0, round(tps, 3), SQS_QUOTA_TPS,
                              round(100 * tps / SQS_QUOTA_TPS, 4), round(monthly), round(cost, 2)))
    return Plan(pods, secrets, interval_seconds, startup_calls(secrets), lines,
                round(api_cost, 2), round(secrets * PRICE_PER_SECRET_MONTH, 2), events)


def render(plan: Plan) -> str:
    mode = "push rotation (events), polling floor every" if plan.events else "refresh every"
    head = (f"fleet: {plan.pods} pods x {plan.secrets} secrets, {mode} "
            f"{plan.interval_seconds:g}s (jittered x0.8-1.0)")
    start = ", ".join(f"{n} {op}" for op, n in plan.startup_calls_per_pod.items())
    rows = [["OPERATION", "PER POD/CYCLE", "FLEET TPS", "QUOTA TPS", "QUOTA USED", "CALLS/MONTH",
             "COST/MONTH"]]
    for line in plan.refresh:
        per_cycle = "-" if line.operation.startswith("SQS ") else f"{line.per_pod_per_cycle:g}"
        rows.append([line.operation, per_cycle, f"{line.fleet_tps:g}",
                     f"{line.quota_tps:g}", f"{line.quota_used_percent:g}%",
                     f"{line.calls_per_month:,.0f}", f"${line.cost_per_month:,.2f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                      for r in rows)
    return (f"{head}\nstart-up, per pod: {start} (value calls = ceil(N/20))\n\n{table}\n\n"
            f"API calls: ${plan.api_cost_per_month:,.2f}/month; secret storage: "
            f"${plan.storage_cost_per_month:,.2f}/month ({plan.secrets} x "
            f"${PRICE_PER_SECRET_MONTH:.2f}, shared by the fleet)")


def main(config: Config, redactor: logs.Redactor, inbox: SignalInbox) -> int:
    return report(config)


def report(config: Config, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    plans = [make_plan(config.pods, config.secrets_per_pod, config.refresh_interval_seconds)]
    if config.events:
        plans.append(make_plan(config.pods, config.secrets_per_pod,
                               EVENTS_REFRESH_INTERVAL_SECONDS, events=True))
    if config.report_format == "json":
        document = asdict(plans[0]) if len(plans) == 1 else {
            "polling": asdict(plans[0]), "events": asdict(plans[1])}
        print(json.dumps(document, indent=2), file=out)
    else:
        print("\n\n".join(render(plan) for plan in plans), file=out)
    return 0
