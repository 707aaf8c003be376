"""Steady-state baseline: a bare boto3 client that loads the seed's four secrets, then checks
each one's AWSCURRENT version with DescribeSecret every INTERVAL x U(0.8, 1.0) seconds (the
cadence ztr uses), refetching only on a change. Runs until SIGTERM."""

import random
import signal
import sys
import time

import boto3

IDS = [f"production/zero-to-running/{name}"
       for name in ("database-password", "session-secret", "redis-password", "jwt-secret")]
interval = float(sys.argv[1])
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
client = boto3.client("secretsmanager")
known = {}
for secret_id in IDS:
    response = client.get_secret_value(SecretId=secret_id)
    known[secret_id] = response["VersionId"]
print("loaded", flush=True)
while True:
    time.sleep(interval * random.uniform(0.8, 1.0))
    for secret_id in IDS:
        stages = client.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
        current = next((v for v, labels in stages.items() if "AWSCURRENT" in labels), None)
        if current != known[secret_id]:
            known[secret_id] = client.get_secret_value(SecretId=secret_id)["VersionId"]
