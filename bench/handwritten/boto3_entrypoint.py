"""The hand-written alternative to `ztr-run --once`: one BatchGetSecretValue for the seed's four
secrets, then exec the command with them in its environment (what a careful user writes)."""

import os
import sys

import boto3

SECRETS = {
    "DATABASE_PASSWORD": "production/zero-to-running/database-password",
    "SESSION_SECRET": "production/zero-to-running/session-secret",
    "REDIS_PASSWORD": "production/zero-to-running/redis-password",
    "JWT_SECRET": "production/zero-to-running/jwt-secret",
}

env = dict(os.environ)
response = boto3.client("secretsmanager").batch_get_secret_value(SecretIdList=list(SECRETS.values()))
values = {entry["Name"]: entry["SecretString"] for entry in response["SecretValues"]}
for variable, name in SECRETS.items():
    if name in values:
        env[variable] = values[name]
os.execvpe(sys.argv[1], sys.argv[1:], env)
