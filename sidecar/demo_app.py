"""The demo's app: prints which secrets it received as fingerprints (never values), then runs
until SIGTERM, like a web server would."""

from __future__ import annotations

import hashlib
import os
import signal
import sys

NAMES = ("DATABASE_PASSWORD", "SESSION_SECRET", "REDIS_PASSWORD", "JWT_SECRET")


def fingerprint(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def main() -> int:
    received = {name: fingerprint(os.environ[name]) for name in NAMES if name in os.environ}
    print(f"app: started as pid {os.getpid()}", flush=True)
    for name in NAMES:
        print(f"app:   {name:<18} {received.get(name, '(not set)')}", flush=True)
    stop = {"signal": 0}

    def on_term(signum: int, frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_term)
    while not stop["signal"]:
        signal.pause()
    print("app: got SIGTERM, shutting down cleanly", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
