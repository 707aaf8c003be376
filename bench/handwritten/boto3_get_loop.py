"""Scale baseline: sequential GetSecretValue for every id in a file (one id a line), the loop a
user writes by hand. Prints the load time and the number of values as JSON."""

import json
import sys
import time

import boto3

with open(sys.argv[1], encoding="utf-8") as handle:
    ids = [line.strip() for line in handle if line.strip()]
client = boto3.client("secretsmanager")
started = time.monotonic()
values = {secret_id: client.get_secret_value(SecretId=secret_id)["SecretString"] for secret_id in ids}
print(json.dumps({"load_seconds": time.monotonic() - started, "values": len(values)}))
