#!/bin/sh
# ztr image entrypoint: run ztr, wrap an app with ztr-run, or (ZTR_WAIT_FOR_FILE) wait for an env
# file another container writes, source it and exec the app. Every path ends in exec, so the shell
# never stays behind as PID 1. POSIX sh only: the wait-and-source mode also runs in app images.
set -eu

EX_USAGE=64
EX_UNAVAILABLE=69
EX_NOPERM=77

usage() {
  cat >&2 <<'EOF'
usage: entrypoint.sh COMMAND [ARG...]
  init|watch|run|check|iam-policy|demo|plan [FLAG...]  run that ztr command
  -FLAG... (--help, --version)                        run ztr with these flags
  [--] APP [ARG...]                                   run APP under ztr-run, secrets in its env
With ZTR_WAIT_FOR_FILE=PATH (ZTR_WAIT_TIMEOUT, default 60s): wait for the env file that another
container's ztr init/watch writes (--format shell), source it, and exec APP itself.
EOF
}

# The wait bound in whole seconds, from 45, 45s, 5m or 1h (ztr's own duration words).
timeout_seconds() {
  case "$1" in
    '' | *[!0-9smh]* | [smh]* | *[smh]?*) return 1 ;;
  esac
  number=${1%[smh]}
  number=${number#"${number%%[!0]*}"} # no leading zeros: sh arithmetic reads 010 as octal
  case "$1" in
    *m) echo "$((${number:-0} * 60))" ;;
    *h) echo "$((${number:-0} * 3600))" ;;
    *) echo "${number:-0}" ;;
  esac
}

wait_and_source() {
  file=$1
  raw=${ZTR_WAIT_TIMEOUT:-60}
  if ! bound=$(timeout_seconds "$raw"); then
    echo "entrypoint: ZTR_WAIT_TIMEOUT=$raw is not a duration in seconds (examples: 60, 90s, 5m)" >&2
    exit "$EX_USAGE"
  fi
  # date +%s counts whole seconds: one more makes the wait at least $bound seconds, never less.
  deadline=$(($(date +%s) + bound + 1))
  # ztr renames the finished file into place, so once it exists it is complete.
  while [ ! -e "$file" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "entrypoint: $file did not appear within ${bound}s (ZTR_WAIT_FOR_FILE): is ztr init/watch writing it to a volume shared with this container?" >&2
      exit "$EX_UNAVAILABLE"
    fi
    # Fractional sleep: GNU coreutils and busybox both take it; fall back to whole seconds.
    sleep 0.1 2>/dev/null || sleep 1
  done
  if [ ! -r "$file" ]; then
    echo "entrypoint: $file exists but this user (uid $(id -u)) cannot read it: set ztr's --owner or --file-mode" >&2
    exit "$EX_NOPERM"
  fi
  unset ZTR_WAIT_FOR_FILE ZTR_WAIT_TIMEOUT
  set -a
  # shellcheck disable=SC1090  # the path is only known at run time
  . "$file"
  set +a
}

if [ "$#" -eq 0 ]; then
  usage
  exit "$EX_USAGE"
fi

if [ -n "${ZTR_WAIT_FOR_FILE:-}" ]; then
  if [ "$1" = "--" ]; then
    shift
    [ "$#" -gt 0 ] || { usage; exit "$EX_USAGE"; }
  fi
  wait_and_source "$ZTR_WAIT_FOR_FILE"
  exec "$@"
fi

case "$1" in
  --)
    # Everything after -- is the app, even when it is called like a ztr command (e.g. "run").
    shift
    [ "$#" -gt 0 ] || { usage; exit "$EX_USAGE"; }
    exec ztr-run -- "$@"
    ;;
  init | watch | run | check | iam-policy | demo | plan | -*)
    exec ztr "$@"
    ;;
  *)
    exec ztr-run -- "$@"
    ;;
esac
