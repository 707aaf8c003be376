"""The floor under `ztr-run --once`: the client ztr makes (sidecar.clients: botocore with the
selection of its data), one BatchGetSecretValue for the seed's four secrets, exec. No CLI,
configuration, logging, retries or checks: what ztr's own code adds is the distance to this."""

import os
import sys

import botocore.config

from sidecar import clients

SECRETS = {
    "DATABASE_PASSWORD": "production/zero-to-running/database-password",
    "SESSION_SECRET": "production/zero-to-running/session-secret",
    "REDIS_PASSWORD": "production/zero-to-running/redis-password",
    "JWT_SECRET": "production/zero-to-running/jwt-secret",
}

env = dict(os.environ)
config = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 2})
client = clients.create_client("secretsmanager", region=os.environ.get("AWS_REGION"), config=config)
response = client.batch_get_secret_value(SecretIdList=list(SECRETS.values()))
values = {entry["Name"]: entry["SecretString"] for entry in response["SecretValues"]}
for variable, name in SECRETS.items():
    if name in values:
        env[variable] = values[name]
os.execvpe(sys.argv[1], sys.argv[1:], env)
