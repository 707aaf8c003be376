#!/bin/sh
# The hand-written shell entrypoint: one `aws secretsmanager get-secret-value` per secret, then
# exec the command (what the seed's guide has users write). `aws` is awscli v1 from PyPI.
set -eu
get() {
  aws secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text
}
DATABASE_PASSWORD=$(get production/zero-to-running/database-password)
SESSION_SECRET=$(get production/zero-to-running/session-secret)
REDIS_PASSWORD=$(get production/zero-to-running/redis-password)
JWT_SECRET=$(get production/zero-to-running/jwt-secret)
export DATABASE_PASSWORD SESSION_SECRET REDIS_PASSWORD JWT_SECRET
exec "$@"
