"""``ztr demo``: ztr at work against an embedded Secrets Manager (moto), no AWS account needed.

Seeds the seed guide's four secrets, runs a small app under ``ztr-run --preset
zero-to-running``, rotates ``database-password`` and narrates what happens."""

from __future__ import annotations

import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import IO, Any

from .. import logs
from ..config import Config
from ..errors import UnavailableError
from ..signals import SignalInbox
from ..startup import settle

PREFIX = "production/zero-to-running/"
SEEDED = ("database-password", "session-secret", "redis-password", "jwt-secret")
SHOWN_METRICS = ("ztr_secrets_loaded", "ztr_secret_changes_total", "ztr_child_restarts_total",
                 "ztr_child_up", "ztr_stale", "ztr_refresh_total", "ztr_api_calls_total")
STEP_TIMEOUT_SECONDS = 20.0


class _Lines:
    """Lines from the ztr-run process (its logs and the app's output), echoed as they come."""

    def __init__(self, proc: subprocess.Popen[str], out: IO[str]) -> None:
        self.out = out
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        for stream, tag in ((proc.stdout, "app"), (proc.stderr, "ztr")):
            threading.Thread(target=self._pump, args=(stream, tag), daemon=True).start()

    def _pump(self, stream: Any, tag: str) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if tag == "ztr":
                line = re.sub(r"^\S+Z (\S+)\s+", r"\1 ", line)  # drop the timestamp
            print(f"    {tag} | {line.removeprefix('app: ')}", file=self.out, flush=True)
            self.lines.put(line)

    def wait_for(self, predicate: Callable[[str], Any], what: str) -> Any:
        deadline = time.monotonic() + STEP_TIMEOUT_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnavailableError(f"demo: timed out waiting for {what}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            found = predicate(line)
            if found:
                return found


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def main(config: Config, redactor: logs.Redactor, inbox: SignalInbox) -> int:
    settle()  # the demo hosts moto for a minute: collect its garbage as usual
    return show(config)


def show(config: Config, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise UnavailableError(
            "ztr demo needs moto: pip install 'ztr-sidecar[demo]' (or run `make demo`)"
        ) from None
    import botocore.session

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log would drown the story
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        credentials = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
                       "AWS_REGION": "us-east-1"}
        client: Any = botocore.session.get_session().create_client(
            "secretsmanager", region_name="us-east-1", endpoint_url=endpoint,
            aws_access_key_id="demo", aws_secret_access_key="demo")  # noqa: S106 - moto, in process
        say("ztr demo: secrets from AWS Secrets Manager into an app, kept current on rotation.\n")
        say(f"1. An embedded Secrets Manager (moto) listens on {endpoint}. Seeding the guide's "
            "four secrets:")
        for name in SEEDED:
            client.create_secret(Name=PREFIX + name, SecretString=secrets.token_urlsafe(24))
            say(f"     {PREFIX}{name}")
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("AWS_", "ZTR_"))}
        env.update(credentials)
        env.update(AWS_ENDPOINT_URL_SECRETS_MANAGER=endpoint, USE_AWS_SECRETS="true",
                   NODE_ENV="production", PYTHONUNBUFFERED="1")
        command = [
            os.path.join(os.path.dirname(sys.executable), "ztr-run"),
            "--preset", "zero-to-running", "--refresh-interval", "1s", "--debounce", "1s",
            "--min-uptime", "0s", "--metrics-addr", "127.0.0.1:0", "--log-format", "text",
            "--", sys.executable, "-m", "sidecar.demo_app",
        ]
        say("\n2. Starting the app under ztr-run. It prints the secrets it received as "
            "fingerprints, never values:")
        say("     ztr-run --preset zero-to-running --refresh-interval 1s -- python -m sidecar.demo_app\n")
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, bufsize=1)
        try:
            return _narrate(proc, client, say, out)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        server.stop()


def _narrate(proc: subprocess.Popen[str], client: Any, say: Callable[[str], None],
             out: IO[str]) -> int:
    lines = _Lines(proc, out)
    addr = lines.wait_for(lambda line: (m := re.search(r"addr=(\S+)", line)) and m.group(1),
                          "the metrics endpoint")
    before = lines.wait_for(lambda line: (m := re.search(r"DATABASE_PASSWORD\s+(sha256:\w+)", line))
                            and m.group(1), "the app to start")
    lines.wait_for(lambda line: "JWT_SECRET" in line, "the app's last variable")
    status, _ = _get(f"http://{addr}/readyz")
    say(f"\n3. GET http://{addr}/readyz -> {status} (ready: the first load is complete)")
    say("\n4. Rotating database-password (PutSecretValue, as a rotation Lambda's finishSecret "
        "would). ztr checks version ids every second, without fetching values:\n")
    client.put_secret_value(SecretId=PREFIX + "database-password",
                            SecretString=secrets.token_urlsafe(24))
    after = lines.wait_for(lambda line: (m := re.search(r"DATABASE_PASSWORD\s+(sha256:\w+)", line))
                           and m.group(1) != before and m.group(1), "the restarted app")
    lines.wait_for(lambda line: "JWT_SECRET" in line, "the restarted app's last variable")
    say(f"\n   DATABASE_PASSWORD fingerprint: {before} -> {after}: the app was restarted once, "
        "with the new value.")
    status, page = _get(f"http://{addr}/metrics")
    say(f"\n5. A few lines of GET http://{addr}/metrics:")
    for line in page.splitlines():
        if line.startswith(SHOWN_METRICS) and ("result=" not in line or 'result="success"' in line):
            say(f"     {line}")
    say("\n6. Stopping: SIGTERM goes to ztr-run, which forwards it to the app and exits with "
        "the app's code:\n")
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=STEP_TIMEOUT_SECONDS)
    time.sleep(0.1)  # let the output threads print the last lines
    say(f"\n   ztr-run exited {code}.")
    say("\nThat is ztr: no secret in the image, the app's code or its logs; rotation picked "
        "up in seconds;\nmetrics and health endpoints for the operator. See README.md for "
        "Kubernetes, ECS and Docker.")
    return 0 if code == 0 else 1
