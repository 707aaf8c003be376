"""``ztr check``: a dry run that reports access to every declared secret, never a value."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import IO, Any

from .. import logs, refs
from ..config import Config
from ..errors import (
    AccessDeniedError,
    SecretNotFoundError,
    SecretValueError,
    UnavailableError,
    ZtrError,
)
from ..loader import extract
from ..process import forbid_core_dumps
from ..signals import SignalInbox
from ..source import SecretInfo, SecretSource, SecretVersion, caller_identity
from ..startup import make_loader

OK = "ok"


@dataclass
class Row:
    variable: str
    secret_id: str
    required: bool
    result: str
    exit_code: int = 0
    detail: str = ""
    version_id: str = ""
    last_changed: str = ""
    last_rotated: str = ""
    rotation_enabled: bool | None = None
    next_rotation: str = ""


def _date(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else ""


def classify(error: ZtrError) -> str:
    """A short result for a table cell: the error's type decides it."""
    return error.label


def _row(binding: refs.Binding, outcome: SecretVersion | ZtrError | None,
         source: SecretSource) -> Row:
    label = binding.name + "*" if binding.is_wildcard else binding.name
    row = Row(label, binding.ref.secret_id, not binding.ref.optional, OK)
    if isinstance(outcome, SecretVersion):
        row.version_id = outcome.version_id
        try:
            extract(binding, outcome)
        except SecretValueError as exc:
            row.result, row.exit_code, row.detail = classify(exc), exc.exit_code, str(exc)
    elif isinstance(outcome, ZtrError):
        if isinstance(outcome, SecretNotFoundError) and binding.ref.optional:
            row.result, row.detail = "missing (optional)", str(outcome)
        else:
            if isinstance(outcome, SecretNotFoundError):
                outcome = source.explain_missing(outcome)  # "did you mean ...", only when reported
            row.result, row.exit_code, row.detail = classify(outcome), outcome.exit_code, str(outcome)
    return row


def main(config: Config, redactor: logs.Redactor, inbox: SignalInbox) -> int:
    forbid_core_dumps()  # it fetches values to check them
    return report(config)


def report(config: Config, out: IO[str] | None = None) -> int:
    """Check every declared secret, print a table or JSON, return init's exit code."""
    out = out or sys.stdout
    if not config.enabled:
        print(f"AWS Secrets Manager disabled ({config.disabled_reason}): nothing to check", file=out)
        return 0
    loader = make_loader(config)
    identity = caller_identity(config.region, config.timeout_seconds)
    try:
        bindings, results = loader.load_all()
    except (UnavailableError, AccessDeniedError, SecretNotFoundError) as exc:
        # The listing or the whole call failed: one row says why.
        bindings, results = (), {}
        rows = [Row("*", config.prefix or "(all)", True, classify(exc), exc.exit_code, str(exc))]
    else:
        rows = [_row(b, results.get(b.ref.fetch_key), loader.source) for b in bindings]
    described: dict[str, SecretInfo | None] = {}  # one DescribeSecret per secret
    for row, binding in zip(rows, bindings, strict=False):
        if row.result == OK or row.exit_code == SecretValueError.exit_code:
            secret_id = binding.ref.secret_id
            if secret_id not in described:
                described[secret_id] = _describe(loader.source, secret_id)
            _add_rotation(described[secret_id], row)
    report = {
        "identity": {"account": identity.account, "arn": identity.arn, "error": identity.error},
        "region": config.region,
        "endpoint": loader.source.endpoint,
        "secrets": [asdict(row) for row in rows],
    }
    if config.report_format == "json":
        print(json.dumps(report, indent=2), file=out)
    else:
        _print_table(report, rows, out)
    failing = [row for row in rows if row.exit_code and row.required]
    return failing[0].exit_code if failing else 0


def _describe(source: SecretSource, secret_id: str) -> SecretInfo | None:
    try:
        return source.describe(secret_id)
    except ZtrError:
        return None  # DescribeSecret is optional for check: init never needs it


def _add_rotation(info: SecretInfo | None, row: Row) -> None:
    if info is None:
        return
    row.last_changed = _date(info.last_changed)
    row.last_rotated = _date(info.last_rotated)
    row.rotation_enabled = info.rotation_enabled
    row.next_rotation = _date(info.next_rotation)


def _print_table(report: dict[str, Any], rows: list[Row], out: IO[str]) -> None:
    identity = report["identity"]
    who = identity["arn"] or f"unknown ({identity['error']})"
    print(f"identity: {who}", file=out)
    print(f"region:   {report['region']}", file=out)
    print(f"endpoint: {report['endpoint']}", file=out)
    headers = ["VARIABLE", "SECRET", "RESULT", "VERSION", "LAST CHANGED", "LAST ROTATED",
               "ROTATION", "NEXT ROTATION"]
    table = [headers] + [
        [row.variable, row.secret_id, row.result, row.version_id[:8], row.last_changed,
         row.last_rotated, {None: "", True: "on", False: "off"}[row.rotation_enabled],
         row.next_rotation]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    print(file=out)
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip(),
              file=out)
    problems = [row for row in rows if row.detail]
    if problems:
        print(file=out)
        for row in problems:
            print(f"{row.variable}: {row.detail}", file=out)
