#!/usr/bin/env bash
# make test-image: build the real image with buildah and run it with podman against a moto server.
#
# Needs root and Linux; installs buildah, podman, runc and debootstrap when they are missing. No
# Docker engine and no image registry: the base image is Debian bookworm (python3, python3-venv)
# made with debootstrap and `podman import`ed as localhost/debian-python:bookworm, cached in the
# build directory. Everything this script creates lives in .image-build/ (gitignored): podman's
# containers.conf and storage.conf, image storage, wheels, logs. Remove it to start from scratch.
#
# Why wheels: pip inside the build cannot verify PyPI's TLS on these machines (an egress proxy
# re-signs it with a CA only the host trusts), so the host's pip downloads the runtime wheels and
# the build installs from them (--build-arg WHEELS=/wheels, mounted with --volume).
#
# Environment: VENV (default .venv), IMAGE_BUILD_DIR (default .image-build), DEBIAN_MIRROR
# (default: the Debian mirror in this machine's apt sources), STORAGE_DRIVER (overlay or vfs).
# shellcheck disable=SC2016  # the single-quoted scripts expand inside the container, on purpose
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
BUILD=${IMAGE_BUILD_DIR:-$REPO/.image-build}
VENV=${VENV:-.venv}
BASE_IMAGE=localhost/debian-python:bookworm
IMAGE=localhost/ztr:test
SIZE_LIMIT=10000000 # bytes the image may add above its base (issue 13: 10 MB)
SUFFIX=$$
STARTED=$SECONDS
FAILURES=0
MOTO_PID=""
SHARED=""

step() { printf '\n== [%3ds] %s\n' "$((SECONDS - STARTED))" "$*"; }
info() { printf '   %s\n' "$*"; }
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; FAILURES=$((FAILURES + 1)); }
die() { printf 'FAIL %s\n' "$*"; exit 1; }

cleanup() {
  local name
  for name in app-trap app-sleep sidecar-watch app; do
    podman rm --force --ignore "ztr-test-$name-$SUFFIX" >/dev/null 2>&1 || true
  done
  if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; fi
  if [ -n "$SHARED" ]; then rm -rf "$SHARED"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
step "preflight"
[ "$(uname -s)" = Linux ] || die "the image test needs Linux"
[ "$(id -u)" = 0 ] || die "the image test needs root (podman, buildah and debootstrap run as root here)"
mkdir -p "$BUILD"
info "build directory: $BUILD"

step "tools: buildah podman runc debootstrap"
missing=()
for tool in buildah podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
  info "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
    buildah podman runc debootstrap debian-archive-keyring ca-certificates >/dev/null
fi
info "$(podman --version), $(buildah --version | cut -d' ' -f1-3), runc $(runc --version | awk 'NR==1{print $3}')"

step "python venv: $VENV"
if [ ! -x "$VENV/bin/moto_server" ]; then
  info "creating $VENV with the dev extra (pip install -e '.[dev]')"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
fi
PY="$VENV/bin/python"
info "$("$PY" --version)"

# ---------------------------------------------------------------------------------------------
step "podman configuration in $BUILD (runc, cgroupfs, file events, ulimits; storage inside)"
driver=${STORAGE_DRIVER:-}
if [ -z "$driver" ]; then
  # overlay cannot stack on overlay (a build directory inside a container): use vfs there.
  case "$(findmnt --noheadings --output FSTYPE --target "$BUILD" 2>/dev/null || echo unknown)" in
    overlay*) driver=vfs ;;
    *) driver=overlay ;;
  esac
fi
mkdir -p "$BUILD/storage/graph" "$BUILD/storage/run" "$BUILD/storage/tmp" "$BUILD/tmp" "$BUILD/network"
cat >"$BUILD/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$BUILD/storage/tmp"
image_copy_tmp_dir = "$BUILD/tmp"

[network]
network_config_dir = "$BUILD/network"
EOF
cat >"$BUILD/storage.conf" <<EOF
[storage]
driver = "$driver"
graphroot = "$BUILD/storage/graph"
runroot = "$BUILD/storage/run"
EOF
export CONTAINERS_CONF="$BUILD/containers.conf"
export CONTAINERS_STORAGE_CONF="$BUILD/storage.conf"
export BUILDAH_ISOLATION=chroot
export TMPDIR="$BUILD/tmp"
info "storage driver: $driver"

# ---------------------------------------------------------------------------------------------
step "base image $BASE_IMAGE (debootstrap, cached)"
debian_mirror() {
  # The first Debian archive URI in apt's sources (deb822 .sources or one-line .list files).
  {
    grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
      sed -e 's/\[[^]]*\]//' | awk '{print $2}'
  } | grep -E '^https?://.*/debian/?$' | head -n 1
}
if podman image exists "$BASE_IMAGE"; then
  info "cached"
else
  mirror=${DEBIAN_MIRROR:-$(debian_mirror || true)}
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs="$BUILD/rootfs"
  rm -rf "$rootfs"
  info "debootstrap --variant=minbase --include=python3,python3-venv bookworm from $mirror"
  if ! debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" \
    >"$BUILD/debootstrap.log" 2>&1; then
    tail -n 20 "$BUILD/debootstrap.log"
    die "debootstrap (log: $BUILD/debootstrap.log)"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --quiet - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  info "imported"
fi

# ---------------------------------------------------------------------------------------------
step "runtime wheels (host pip; the build installs from them, not from PyPI)"
"$PY" - >"$BUILD/requirements.txt" <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as handle:
    data = tomllib.load(handle)
# setuptools for the build backend (pip builds the project in the image), then the runtime deps.
print("\n".join(data["build-system"]["requires"] + data["project"]["dependencies"]))
EOF
rm -rf "$BUILD/wheels"
if ! "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  --dest "$BUILD/wheels" --requirement "$BUILD/requirements.txt" >"$BUILD/wheels.log" 2>&1; then
  tail -n 20 "$BUILD/wheels.log"
  die "pip download (log: $BUILD/wheels.log)"
fi
info "$(find "$BUILD/wheels" -name '*.whl' | wc -l) wheels: $(tr '\n' ' ' <"$BUILD/requirements.txt")"

step "buildah build -t $IMAGE (Dockerfile, context $REPO)"
version=$("$PY" -c 'import sidecar; print(sidecar.__version__)')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if ! buildah build --layers=false \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg WHEELS=/wheels \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  --volume "$BUILD/wheels:/wheels:ro" \
  --file Dockerfile --tag "$IMAGE" . >"$BUILD/build.log" 2>&1; then
  tail -n 40 "$BUILD/build.log"
  die "buildah build (log: $BUILD/build.log)"
fi
podman image prune --force >/dev/null # the previous build's image, now untagged
grep -E '^(\[[0-9]/[0-9]\] )?STEP [0-9]+/[0-9]+: (FROM|RUN|COPY)' "$BUILD/build.log" | cut -c1-110 | sed 's/^/   /' || true
info "$(podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE")"

step "image configuration"
config=$(podman image inspect --format '{{.Config.User}}|{{.Config.StopSignal}}|{{json .Config.Entrypoint}}|{{index .Config.Labels "org.opencontainers.image.version"}}' "$IMAGE")
if [ "$config" = "65532:65532|SIGTERM|[\"/entrypoint.sh\"]|$version" ]; then
  pass "image config: user 65532:65532, STOPSIGNAL SIGTERM, ENTRYPOINT [\"/entrypoint.sh\"], version label"
else
  fail "image config: got $config"
fi
contents=$(podman run --rm --network none --entrypoint /bin/sh "$IMAGE" -c '
  for tool in gcc cc make pip pip3; do command -v "$tool" >/dev/null && echo "has $tool"; done
  [ -e /opt/ztr/bin/pip ] && echo "has venv pip"
  [ -d /src ] && echo "has /src"
  [ -d /root/.cache ] && echo "has /root/.cache"
  find /opt/ztr -path "*/site-packages/tests" -o -name "*.whl" | sed "s/^/has /"
  ztr --version >/dev/null || echo "ztr --version failed"' 2>&1 || true)
if [ -z "$contents" ]; then
  pass "final stage: no compiler, pip, sources, caches or tests; ztr runs"
else
  fail "final stage: $(echo "$contents" | tr '\n' ';')"
fi

step "image size: what the ztr image adds above its base (at most $((SIZE_LIMIT / 1000000)) MB)"
base_bytes=$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")
image_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
added=$((image_bytes - base_bytes))
# Where the added bytes go (apparent sizes, KiB): the biggest packages, the selection, botocore/data.
podman run --rm --network none --entrypoint /bin/sh "$IMAGE" -c '
  cd /opt/ztr/lib/python3*/site-packages || exit
  du -s --apparent-size --block-size=1K -- * | sort -rn | head -n 8
  du -s --apparent-size --block-size=1K botocore/data /opt/ztr/share/ztr /opt/ztr' 2>&1 |
  awk '{printf "   %7d KiB  %s\n", $1, $2}' || true
info "$BASE_IMAGE: $base_bytes bytes; $IMAGE: $image_bytes bytes"
added_mb=$(awk -v b="$added" 'BEGIN {printf "%.2f MB (%.2f MiB)", b / 1e6, b / 1048576}')
if [ "$added" -le "$SIZE_LIMIT" ]; then
  pass "image size: the ztr image adds $added_mb ($added bytes) above its base"
else
  fail "image size: the ztr image adds $added_mb ($added bytes) above its base, over $SIZE_LIMIT bytes"
fi

# ---------------------------------------------------------------------------------------------
step "moto server on 127.0.0.1 and secrets"
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ENDPOINT="http://127.0.0.1:$port"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$BUILD/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$MOTO_PID" 2>/dev/null || { cat "$BUILD/moto.log"; die "moto_server exited"; }
  sleep 0.1
done
info "moto at $ENDPOINT (pid $MOTO_PID)"
# A value that breaks naive quoting: quotes, $, backquotes, backslashes and a newline.
# shellcheck disable=SC2089  # the quotes are the data, not syntax
VALUE=$'p@ss \'single\' "double" $HOME `uname` \\n\\\nsecond line'
# shellcheck disable=SC2090
export VALUE ENDPOINT
"$PY" - <<'EOF'
import json, os
import boto3
sm = boto3.client("secretsmanager", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
sm.create_secret(Name="ztr-image-test/db",
                 SecretString=json.dumps({"username": "app", "password": os.environ["VALUE"]}))
sm.create_secret(Name="ztr-image-test/api-key", SecretString="k-123")
for name in ("database-password", "session-secret", "redis-password", "jwt-secret"):
    sm.create_secret(Name=f"production/zero-to-running/{name}", SecretString=f"image-{name}")
EOF
info "seeded ztr-image-test/db (JSON), ztr-image-test/api-key and the zero-to-running preset's four"

AWS_ENV=(-e AWS_ACCESS_KEY_ID=testing -e AWS_SECRET_ACCESS_KEY=testing -e AWS_REGION=us-east-1
  -e "AWS_ENDPOINT_URL_SECRETS_MANAGER=$ENDPOINT" -e "AWS_ENDPOINT_URL_STS=$ENDPOINT"
  -e AWS_EC2_METADATA_DISABLED=true
  -e ZTR_METRICS_ADDR=127.0.0.1:0)
SECRETS_ENV=(-e "DB_PASSWORD=sm://ztr-image-test/db#password" -e "API_KEY=sm://ztr-image-test/api-key")
RUN=(podman run --rm --network host --read-only "${AWS_ENV[@]}")

# ---------------------------------------------------------------------------------------------
step "1. init writes the env file into a --tmpfs mount (mode 0600, owner 65532)"
out=$("${RUN[@]}" --tmpfs /run/ztr:rw,nosuid,nodev,noexec,size=1m,mode=1777 --entrypoint /bin/sh "$IMAGE" -c '
  /entrypoint.sh init --secret DB_PASSWORD=ztr-image-test/db#password \
    --secret API_KEY=ztr-image-test/api-key --output /run/ztr/env 2>/dev/null || exit
  stat -c "%a %u:%g" /run/ztr/env
  . /run/ztr/env
  printf "%s|%s" "$API_KEY" "$DB_PASSWORD"' 2>&1) || true
expected="600 65532:65532"$'\n'"k-123|$VALUE"
if [ "$out" = "$expected" ]; then
  pass "1. init: /run/ztr/env on tmpfs, mode 600, owner 65532:65532, values round-trip through sh"
else
  fail "1. init: expected $(printf %q "$expected"), got $(printf %q "$out")"
fi

step "2. wrapping sh -c '...' injects the secrets (ztr-run as PID 1)"
out=$("${RUN[@]}" "${SECRETS_ENV[@]}" "$IMAGE" \
  sh -c 'printf "%s|%s|%s" "$(cat /proc/1/comm)" "$API_KEY" "$DB_PASSWORD"' 2>"$BUILD/step2.err") || true
if [ "$out" = "ztr-run|k-123|$VALUE" ]; then
  pass "2. wrap: API_KEY and DB_PASSWORD arrive exactly; PID 1 is ztr-run (the entrypoint exec'd)"
else
  fail "2. wrap: got $(printf %q "$out"); stderr: $(tail -n 3 "$BUILD/step2.err" | tr '\n' ' ')"
fi

step "3. podman stop ends a wrapped app within 2 s with the app's own exit code"
stop_case() { # label, expected exit code, ready pattern (in the logs), arguments after the image
  local label=$1 expected=$2 pattern=$3 name="ztr-test-$1-$SUFFIX" ready="" started elapsed_ms code
  shift 3
  podman run -d --name "$name" --network host --read-only --tmpfs /run/ztr:rw,size=1m,mode=1777 \
    "${AWS_ENV[@]}" "${SECRETS_ENV[@]}" "$IMAGE" "$@" >/dev/null
  for _ in $(seq 150); do
    if podman logs "$name" 2>&1 | grep -q -- "$pattern"; then ready=yes; break; fi
    sleep 0.1
  done
  if [ -z "$ready" ]; then
    fail "3. stop ($label): never ready: $(podman logs "$name" 2>&1 | tail -n 3 | tr '\n' ' ')"
    podman rm --force "$name" >/dev/null
    return
  fi
  started=$(date +%s%N)
  podman stop --time 10 "$name" >/dev/null
  elapsed_ms=$((($(date +%s%N) - started) / 1000000))
  code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  podman rm --force "$name" >/dev/null
  if [ "$code" = "$expected" ] && [ "$elapsed_ms" -lt 2000 ]; then
    pass "3. stop ($label): exit $code after ${elapsed_ms} ms (stop timeout 10 s, so no SIGKILL)"
  else
    fail "3. stop ($label): exit $code (expected $expected) after ${elapsed_ms} ms (limit 2000)"
  fi
}
# An app that handles TERM and exits 0, and one that dies of it (128 + 15), both under ztr-run.
stop_case app-trap 0 '^ready$' sh -c 'trap "echo got TERM; exit 0" TERM; echo ready; while :; do sleep 0.2; done'
stop_case app-sleep 143 '^ready$' sh -c 'echo ready; exec sleep 1000'
# ztr watch as a (native) sidecar: it is PID 1 itself and must stop on TERM as promptly.
stop_case sidecar-watch 0 'watching for changes' watch --output /run/ztr/env

step "4. runs as non-root (65532) with --read-only"
out=$("${RUN[@]}" "${SECRETS_ENV[@]}" "$IMAGE" \
  sh -c 'echo "$(id -u):$(id -g)"; if touch /probe 2>/dev/null; then echo writable; else echo read-only; fi' 2>/dev/null) || true
if [ "$out" = $'65532:65532\nread-only' ]; then
  pass "4. non-root: uid:gid 65532:65532, root filesystem read-only, ztr-run still works"
else
  fail "4. non-root: got $(printf %q "$out")"
fi

step "5. wait-and-source: an app container waits for the env file another container writes"
SHARED=$(mktemp -d /dev/shm/ztr-image-test.XXXXXX) # tmpfs on the host, like emptyDir medium Memory
chown 65532:65532 "$SHARED"
app="ztr-test-app-$SUFFIX"
podman run -d --name "$app" --network host --read-only -v "$SHARED:/run/ztr" \
  -e ZTR_WAIT_FOR_FILE=/run/ztr/env -e ZTR_WAIT_TIMEOUT=30 "$IMAGE" \
  sh -c 'printf "%s|%s|%s" "$$" "$API_KEY" "$DB_PASSWORD"' >/dev/null
sleep 1 # the app is waiting before the file exists
"${RUN[@]}" -v "$SHARED:/run/ztr" "$IMAGE" init --secret DB_PASSWORD=ztr-image-test/db#password \
  --secret API_KEY=ztr-image-test/api-key --output /run/ztr/env 2>"$BUILD/step5.err" || true
code=$(podman wait "$app" 2>/dev/null || echo "?")
out=$(podman logs "$app" 2>&1 || true)
podman rm --force "$app" >/dev/null
if [ "$code" = 0 ] && [ "$out" = "1|k-123|$VALUE" ]; then
  pass "5. wait-and-source: the app (PID 1, no ztr) sourced the file once it appeared"
else
  fail "5. wait-and-source: exit $code, output $(printf %q "$out"); init: $(tail -n 2 "$BUILD/step5.err" | tr '\n' ' ')"
fi
started=$SECONDS
out=$(podman run --rm --network none --read-only -e ZTR_WAIT_FOR_FILE=/run/ztr/missing \
  -e ZTR_WAIT_TIMEOUT=1 "$IMAGE" true 2>&1) && code=0 || code=$?
if [ "$code" = 69 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [ $((SECONDS - started)) -lt 10 ]; then
  pass "5. wait-and-source timeout: exit 69, one line: $out"
else
  fail "5. wait-and-source timeout: exit $code, output $(printf %q "$out")"
fi

# ---------------------------------------------------------------------------------------------
step "6. the botocore data selection: built from the image's botocore, the only data ztr loads"
out=$("${RUN[@]}" -e "AWS_ENDPOINT_URL=$ENDPOINT" --entrypoint /opt/ztr/bin/python3 "$IMAGE" -c '
import json, os
import botocore.loaders
from sidecar import clients
loader = clients.selection_loader()
assert loader is not None, "no selection: ztr would load all of botocore/data"
assert loader.directory.startswith("/opt/ztr/share/ztr/"), loader.directory
problems = clients.verify(loader.directory)
assert not problems, problems
data = botocore.loaders.Loader.BUILTIN_DATA_PATH
kept = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)))
assert kept == sorted(loader.services), kept
session = clients.new_session()
assert session.get_component("data_loader") is loader
calls = {"secretsmanager": lambda c: len(c.list_secrets()["SecretList"]),
         "sts": lambda c: c.get_caller_identity()["Account"],
         "sqs": lambda c: c.create_queue(QueueName="ztr-image")["QueueUrl"].rsplit("/", 1)[1],
         "sns": lambda c: c.create_topic(Name="ztr-image")["TopicArn"].rsplit(":", 1)[1]}
got = {name: call(clients.create_client(name, region="us-east-1", session=session))
       for name, call in calls.items()}
print(json.dumps({"services": kept, "calls": got}, sort_keys=True))' 2>&1) || true
if printf '%s' "$out" | grep -q '"calls": {"secretsmanager": 6, "sns": "ztr-image", "sqs": "ztr-image", "sts": "123456789012"}'; then
  pass "6. selection: verified against botocore; botocore/data holds only its services; secretsmanager, sts, sqs, sns clients call moto from it"
  info "$out"
else
  fail "6. selection: $(printf '%s' "$out" | tail -n 5 | tr '\n' ' ')"
fi

step "7. every command against moto with the pruned data: check, iam-policy, plan, run --once, watch"
SECRET_FLAGS=(--secret DB_PASSWORD=ztr-image-test/db#password --secret API_KEY=ztr-image-test/api-key)
out=$("${RUN[@]}" "$IMAGE" check --format json "${SECRET_FLAGS[@]}" 2>"$BUILD/step7.err") && code=0 || code=$?
if [ "$code" = 0 ] && printf '%s' "$out" | grep -q '"arn": "arn:aws:sts::123456789012:' &&
  [ "$(printf '%s' "$out" | grep -c '"result": "ok"')" = 2 ]; then
  pass "7. check: both secrets ok, identity from STS"
else
  fail "7. check: exit $code, $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300) $(tail -n 2 "$BUILD/step7.err" | tr '\n' ' ')"
fi
out=$("${RUN[@]}" "$IMAGE" iam-policy "${SECRET_FLAGS[@]}" 2>"$BUILD/step7.err") && code=0 || code=$?
if [ "$code" = 0 ] && printf '%s' "$out" | grep -q 'arn:aws:secretsmanager:us-east-1:123456789012:secret:ztr-image-test/db-'; then
  pass "7. iam-policy: the secrets' ARNs, account from STS"
else
  fail "7. iam-policy: exit $code, $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300) $(tail -n 2 "$BUILD/step7.err" | tr '\n' ' ')"
fi
out=$("${RUN[@]}" "$IMAGE" plan --pods 100 --format json 2>"$BUILD/step7.err") && code=0 || code=$?
if [ "$code" = 0 ] && printf '%s' "$out" | grep -q '"pods": 100'; then
  pass "7. plan: a fleet of 100 pods"
else
  fail "7. plan: exit $code, $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300) $(tail -n 2 "$BUILD/step7.err" | tr '\n' ' ')"
fi
out=$("${RUN[@]}" "$IMAGE" run --once "${SECRET_FLAGS[@]}" -- \
  sh -c 'printf "%s|%s|%s" "$(cat /proc/1/comm)" "$API_KEY" "$DB_PASSWORD"' 2>"$BUILD/step7.err") || true
if [ "$out" = "sh|k-123|$VALUE" ]; then
  pass "7. run --once: the app replaced ztr (PID 1 is sh) with both secrets"
else
  fail "7. run --once: got $(printf %q "$out"); stderr: $(tail -n 2 "$BUILD/step7.err" | tr '\n' ' ')"
fi
out=$("${RUN[@]}" --tmpfs /run/ztr:rw,size=1m,mode=1777 --entrypoint /bin/sh "$IMAGE" -c '
  ztr watch --secret API_KEY=ztr-image-test/api-key --output /run/ztr/env 2>/dev/null &
  for _ in $(seq 100); do [ -s /run/ztr/env ] && break; sleep 0.1; done
  kill -TERM $! && wait $!
  echo "exit $?"; cat /run/ztr/env' 2>&1) || true
if [ "$out" = "exit 0"$'\n'"export API_KEY='k-123'" ]; then
  pass "7. watch: wrote the env file, then stopped on TERM with exit 0"
else
  fail "7. watch: got $(printf %q "$out")"
fi

step "8. time to exec in the image: ztr-run --once against a hand-written boto3 script (interleaved)"
# The boto3 script gets boto3 and a whole botocore (every model) from this venv, mounted read-only:
# what a user's image with boto3 would hold; like boto3 users it names its region in
# AWS_DEFAULT_REGION. The figures are informative (the machine is shared).
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rounds=${IMAGE_TIMING_ROUNDS:-15}
"${RUN[@]}" -e AWS_DEFAULT_REGION=us-east-1 -v "$site:/bench/site:ro" \
  -v "$REPO/bench/handwritten:/bench/handwritten:ro" --entrypoint /bin/sh "$IMAGE" -c '
  ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
  for round in $(seq "$1"); do
    for variant in ztr boto3; do
      if [ $((round % 2)) = 0 ]; then variant=$([ "$variant" = ztr ] && echo boto3 || echo ztr); fi
      started=$(date +%s%N)
      if [ "$variant" = ztr ]; then
        ztr-run --once --preset zero-to-running -- /bin/true 2>/dev/null
      else
        PYTHONPATH=/bench/site python3 /bench/handwritten/boto3_entrypoint.py /bin/true 2>/dev/null
      fi || echo "failed $variant"
      echo "$round $variant $(ms "$started")"
    done
  done' sh "$rounds" >"$BUILD/timing.txt" 2>&1 || true
timing=$("$PY" - "$BUILD/timing.txt" <<'EOF'
import statistics, sys
text = open(sys.argv[1]).read()
rows = [line.split() for line in text.splitlines() if len(line.split()) == 3]
if "failed" in text or not rows:
    print("failed: " + text[-300:].replace("\n", " "))
    sys.exit()
rounds = {}
for round_no, variant, ms in rows:
    if round_no != "1":  # the first round warms the page cache
        rounds.setdefault(round_no, {})[variant] = int(ms)
both = [r for r in rounds.values() if len(r) == 2]
ztr = statistics.median(r["ztr"] for r in both)
boto3 = statistics.median(r["boto3"] for r in both)
paired = statistics.median(r["ztr"] / r["boto3"] for r in both)
print(f"ztr-run --once {ztr:.0f} ms, boto3 script {boto3:.0f} ms (medians of {len(both)} rounds): "
      f"{ztr / boto3:.2f}x; median of per-round ratios {paired:.2f}x")
EOF
)
case "$timing" in
  failed*) fail "8. timing: $timing" ;;
  *) pass "8. timing: $timing" ;;
esac

# ---------------------------------------------------------------------------------------------
step "summary"
if [ "$FAILURES" -gt 0 ]; then
  printf 'FAIL %d check(s) failed in %ds (logs in %s)\n' "$FAILURES" "$((SECONDS - STARTED))" "$BUILD"
  exit 1
fi
printf 'PASS all image checks in %ds\n' "$((SECONDS - STARTED))"
