#!/bin/sh
# ztr image entrypoint: run ztr, wrap an app with ztr-run, or (ZTR_WAIT_FOR_FILE) wait for an env
# file another container writes, source it and exec the app. Every path ends in exec, so the shell
# never stays behind as PID 1. POSIX sh only: the wait-and-source mode also runs in app images.
set -eu

EX_USAGE=64
EX_UNAVAILABLE=69
EX_NOPERM=77
EX_NOT_FOUND=127
# The longest wait accepted (a year, in seconds): more is a typo, and it keeps sh arithmetic small.
MAX_WAIT_SECONDS=31536000

usage() {
  cat >&2 <<'EOF'
usage: entrypoint.sh COMMAND [ARG...]
  init|watch|run|check|iam-policy|demo|plan [FLAG...]  run that ztr command
  -FLAG... (--help, --version)                        run ztr with these flags
  [--] APP [ARG...]                                   run APP: under ztr-run, secrets in its env,
                                                      or with ZTR_WAIT_FOR_FILE set, exec'd itself
With ZTR_WAIT_FOR_FILE=PATH (ZTR_WAIT_TIMEOUT, default 60s): wait for the env file that another
container's ztr init/watch writes (--format shell), source it, and exec APP itself.
EOF
}

# fail CODE MESSAGE: one line on stderr, then exit CODE.
fail() {
  echo "entrypoint: $2" >&2
  exit "$1"
}

# Sets wait_seconds from ztr's duration words: 250ms, 30s, 5m, 1h or plain seconds, each with an
# optional decimal part, rounded up to whole seconds. Returns 1 if malformed, 2 if over a year.
parse_wait() {
  raw=${1#"${1%%[![:space:]]*}"}
  raw=${raw%"${raw##*[![:space:]]}"}
  case "$raw" in
    *ms) per_unit=1; number=${raw%ms} ;;
    *s) per_unit=1000; number=${raw%s} ;;
    *m) per_unit=60000; number=${raw%m} ;;
    *h) per_unit=3600000; number=${raw%h} ;;
    *) per_unit=1000; number=$raw ;;
  esac
  case "$number" in
    '' | .* | *. | *[!0-9.]* | *.*.*) return 1 ;;
  esac
  whole=${number%%.*}
  fraction=
  case "$number" in *.*) fraction=${number#*.} ;; esac
  whole=${whole#"${whole%%[!0]*}"} # no leading zeros: sh arithmetic reads 010 as octal
  [ "${#whole}" -le 9 ] || return 2
  fraction=$(printf '%.6s' "${fraction}000000") # microunits
  fraction=${fraction#"${fraction%%[!0]*}"}
  milliseconds=$((${whole:-0} * per_unit + (${fraction:-0} * per_unit + 999999) / 1000000))
  wait_seconds=$(((milliseconds + 999) / 1000))
  [ "$wait_seconds" -le "$MAX_WAIT_SECONDS" ] || return 2
}

# While the file is missing: fail at once if it can never appear for this user, because the
# nearest existing directory on its path is not a directory or cannot be entered.
check_reachable() {
  path=$1
  while :; do
    case "$path" in
      */*) parent=${path%/*}; parent=${parent:-/} ;;
      *) parent=. ;;
    esac
    [ ! -e "$parent" ] && [ "$parent" != "$path" ] || break
    path=$parent
  done
  if [ ! -d "$parent" ]; then
    fail "$EX_USAGE" "ZTR_WAIT_FOR_FILE=$1 cannot exist: $parent is not a directory"
  fi
  if [ ! -x "$parent" ]; then
    fail "$EX_NOPERM" "ZTR_WAIT_FOR_FILE=$1 cannot be reached: this user (uid $(id -u)) cannot enter $parent; let it in (ztr's --owner or --file-mode, or the volume's permissions)"
  fi
}

wait_and_source() {
  file=$1
  raw_wait=${ZTR_WAIT_TIMEOUT:-60}
  if parse_wait "$raw_wait"; then :; else
    case $? in
      2) fail "$EX_USAGE" "ZTR_WAIT_TIMEOUT=$raw_wait is longer than a year (${MAX_WAIT_SECONDS}s)" ;;
      *) fail "$EX_USAGE" "ZTR_WAIT_TIMEOUT=$raw_wait is not a duration (examples: 60, 90s, 1.5m, 250ms, 1h)" ;;
    esac
  fi
  # date +%s counts whole seconds: one more makes the wait at least the bound, never less.
  deadline=$(($(date +%s) + wait_seconds + 1))
  # ztr renames the finished file into place, so once it exists it is complete.
  while [ ! -e "$file" ]; do
    check_reachable "$file"
    if [ "$(date +%s)" -ge "$deadline" ]; then
      fail "$EX_UNAVAILABLE" "$file did not appear within ${wait_seconds}s (ZTR_WAIT_FOR_FILE): is ztr init/watch writing it to a volume shared with this container?"
    fi
    # Fractional sleep: GNU coreutils and busybox both take it; fall back to whole seconds.
    sleep 0.1 2>/dev/null || sleep 1
  done
  if [ -d "$file" ]; then
    fail "$EX_USAGE" "ZTR_WAIT_FOR_FILE=$file is a directory: name the env file that ztr --output writes"
  fi
  if [ ! -f "$file" ]; then
    fail "$EX_USAGE" "ZTR_WAIT_FOR_FILE=$file is not a regular file: name the env file that ztr --output writes"
  fi
  if [ ! -r "$file" ]; then
    fail "$EX_NOPERM" "$file exists but this user (uid $(id -u)) cannot read it: set ztr's --owner or --file-mode"
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

# The same dispatch in both modes: a ztr command or flag runs ztr; anything else, or everything
# after --, is the app (even when it is called like a ztr command, e.g. "run").
case "$1" in
  --)
    shift
    [ "$#" -gt 0 ] || { usage; exit "$EX_USAGE"; }
    ;;
  init | watch | run | check | iam-policy | demo | plan | -*)
    # ZTR_WAIT_* are this script's: ztr waits for nothing.
    unset ZTR_WAIT_FOR_FILE ZTR_WAIT_TIMEOUT
    if ! command -v ztr >/dev/null 2>&1; then
      fail "$EX_NOT_FOUND" "$1 is a ztr command, but ztr is not installed here; to run an app called $1, put -- before it"
    fi
    exec ztr "$@"
    ;;
esac

if [ -n "${ZTR_WAIT_FOR_FILE:-}" ]; then
  wait_and_source "$ZTR_WAIT_FOR_FILE"
  exec "$@"
fi
exec ztr-run -- "$@"
