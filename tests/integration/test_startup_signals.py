"""SIGTERM that arrives while the start-up load is in flight: nothing starts, nothing is written,
even when the load would then succeed; and ztr does not wait for it to finish."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.faultproxy import FaultProxy
from tests.helpers.proc import Proc
from tests.helpers.ztr import ZTR, ZTR_RUN


@pytest.mark.parametrize("mode", ["init", "run --once", "run"])
def test_startup_sigterm_during_successful_load_starts_nothing(
    mode: str, sm: Any, ztr_env: dict[str, str], fault_proxy: FaultProxy, shm: Path
) -> None:
    sm.create_secret(Name="s/db", SecretString="v1")
    fault_proxy.latency_seconds = 5.0  # the load is in flight when SIGTERM lands, then succeeds
    env = dict(ztr_env, AWS_ENDPOINT_URL_SECRETS_MANAGER=fault_proxy.url)
    out = shm / "app.env"
    common = ["--secret", "DB=s/db", "--output", str(out), "--timeout", "10s"]
    if mode == "init":
        argv = [ZTR, "init", *common]
    else:
        argv = [ZTR_RUN, *common, *(["--once"] if mode == "run --once" else []),
                "--", "sh", "-c", "echo app-started"]
    proc = Proc(argv, env)
    proc.wait_log("Loading secrets from AWS Secrets Manager")
    proc.wait_until(lambda: fault_proxy.calls() >= 1, what="the load's request at the proxy")
    sent = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 128 + signal.SIGTERM
    # The load (5 s of latency, then a success) was abandoned, not waited for.
    assert time.monotonic() - sent < 2.0
    assert proc.count_log("Stopped during start-up: nothing was started") == 1
    assert "app-started" not in proc.stdout
    assert not out.exists()
