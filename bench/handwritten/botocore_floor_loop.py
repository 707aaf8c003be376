"""Steady-state floor: what ztr's chosen stack holds with none of ztr's own code. ztr's client
(sidecar.clients: botocore on the selection of its data), prometheus-client's own metrics server
on 127.0.0.1:0 with one counter, and the same DescribeSecret loop as boto3_describe_loop.py.
No configuration, logging, retries, outputs, watcher, hardened endpoints or signal handling."""

import random
import signal
import sys
import time

import botocore.config
import prometheus_client

from sidecar import clients

IDS = [f"production/zero-to-running/{name}"
       for name in ("database-password", "session-secret", "redis-password", "jwt-secret")]
interval = float(sys.argv[1])
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
checks = prometheus_client.Counter("floor_checks", "DescribeSecret calls")
prometheus_client.start_http_server(0, addr="127.0.0.1")
config = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 2})
client = clients.create_client("secretsmanager", region=None, config=config)
known = {}
for secret_id in IDS:
    response = client.get_secret_value(SecretId=secret_id)
    known[secret_id] = response["VersionId"]
print("loaded", flush=True)
while True:
    time.sleep(interval * random.uniform(0.8, 1.0))
    for secret_id in IDS:
        stages = client.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
        checks.inc()
        current = next((v for v, labels in stages.items() if "AWSCURRENT" in labels), None)
        if current != known[secret_id]:
            known[secret_id] = client.get_secret_value(SecretId=secret_id)["VersionId"]
