"""Run the installed ztr commands as real subprocesses and read their JSON logs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
ZTR = str(BIN / "ztr")
ZTR_RUN = str(BIN / "ztr-run")
PYTHON = sys.executable
HELPERS = Path(__file__).parent


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def logs(self) -> list[dict[str, Any]]:
        return parse_logs(self.stderr)

    def messages(self) -> list[str]:
        return [entry.get("msg", "") for entry in self.logs()]


def parse_logs(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                pass
    return entries


def run(args: Sequence[str], env: Mapping[str, str], *, timeout: float = 60,
        stdin: str | None = None, program: str = ZTR) -> Result:
    proc = subprocess.run([program, *args], env=dict(env), capture_output=True, text=True,
                          timeout=timeout, input=stdin)
    return Result(proc.returncode, proc.stdout, proc.stderr)
