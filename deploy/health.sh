#!/usr/bin/env bash
# `make health`: is every part of BookTrader's stack healthy?
#   db      pg_isready -U postgres
#   pgmux   GET /readyz via `pgmux health` (listening, not draining, PostgreSQL reachable)
#   app     manage.py check --database default, then migrate --check, which
#           really reaches PostgreSQL through pgmux (Django 5's check alone
#           opens no connection)
#   then prints the backend connections: SELECT count(*) FROM pg_stat_activity
#
# STACK=compose (default) runs each check inside its container with
# `docker compose exec` (COMPOSE overrides the command, e.g. to add the prod
# file); STACK=local checks the processes of deploy/local-stack.sh, whose
# addresses it reads from target/deploy-stack.env.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
stack="${STACK:-compose}"
failed=0

# check NAME COMMAND...: run it, print one line, remember a failure.
check() {
  local name="$1"
  shift
  local out
  if out="$("$@" 2>&1)"; then
    printf 'health: ok    %-6s %s\n' "$name" "$(tail -n 1 <<<"$out")"
  else
    printf 'health: FAIL  %-6s %s\n' "$name" "$(tail -n 3 <<<"$out" | tr '\n' ' ')"
    failed=1
  fi
}

# The local stack's checks (variables from target/deploy-stack.env), called
# through check().
# shellcheck disable=SC2317
local_db() { pg_isready -h "$STACK_PGHOST" -p "$STACK_PGPORT" -U postgres; }
# shellcheck disable=SC2317
local_pgmux() {
  "$STACK_PGMUX_BIN" health --addr "$STACK_METRICS_ADDR"
  local status=$?
  [ "$status" -eq 0 ] && echo "ready (pgmux health: GET /readyz 200)"
  # 2 is a usage error: a pgmux built before the `health` subcommand.
  [ "$status" -ne 2 ] && return "$status"
  echo "(this pgmux has no 'health' subcommand; asking /readyz, else /healthz, directly)"
  "$STACK_PYTHON" - "http://$STACK_METRICS_ADDR" <<'PY'
import sys, urllib.error, urllib.request
for path in ("/readyz", "/healthz"):
    try:
        with urllib.request.urlopen(sys.argv[1] + path, timeout=3) as r:
            print(f"GET {path}: {r.status}")
            sys.exit(0 if r.status == 200 else 1)
    except urllib.error.HTTPError as e:
        if e.code != 404 or path == "/healthz":
            print(f"GET {path}: {e.code}")
            sys.exit(1)
sys.exit(1)
PY
}
# shellcheck disable=SC2317
local_app() { (
  cd "$STACK_APP_DIR" || exit 1
  # shellcheck disable=SC1090
  . "$STACK_APP_ENV"
  "$STACK_PYTHON" manage.py check --database default &&
    "$STACK_PYTHON" manage.py migrate --check &&
    echo "django checks and migrations ok through pgmux"
); }
# shellcheck disable=SC2317
local_connections() {
  psql -h "$STACK_PGHOST" -p "$STACK_PGPORT" -U postgres -d postgres -Atc 'SELECT count(*) FROM pg_stat_activity'
}

case "$stack" in
  compose)
    if [ -n "${COMPOSE:-}" ]; then
      read -r -a compose <<<"$COMPOSE"
    elif docker compose version >/dev/null 2>&1; then
      compose=(docker compose -f "$here/docker-compose.yml")
    else
      compose=(docker-compose -f "$here/docker-compose.yml")
    fi
    if ! "${compose[@]}" ps -q >/dev/null 2>&1; then
      echo "health: FAIL  cannot reach the compose stack with '${compose[*]}' (container engine running? stack up? make up)"
      exit 1
    fi
    check db "${compose[@]}" exec -T db pg_isready -U postgres
    check pgmux "${compose[@]}" exec -T pgmux sh -c \
      'pgmux health --addr 127.0.0.1:9930 && echo "ready (pgmux health: GET /readyz 200)"'
    check app "${compose[@]}" exec -T app sh -c \
      'python manage.py check --database default && python manage.py migrate --check && echo "django checks and migrations ok through pgmux"'
    connections=("${compose[@]}" exec -T db psql -U postgres -Atc 'SELECT count(*) FROM pg_stat_activity')
    ;;
  local)
    env_file="$root/target/deploy-stack.env"
    if [ ! -r "$env_file" ]; then
      echo "health: no local stack running ($env_file missing): start deploy/local-stack.sh up" >&2
      exit 1
    fi
    # shellcheck disable=SC1090
    . "$env_file"
    check db local_db
    check pgmux local_pgmux
    check app local_app
    connections=(local_connections)
    ;;
  *)
    echo "health: STACK must be compose or local, not '$stack'" >&2
    exit 2
    ;;
esac

if count="$("${connections[@]}" 2>&1)"; then
  echo "health: backend connections (SELECT count(*) FROM pg_stat_activity): $count"
else
  echo "health: FAIL  could not count backend connections: $(tail -n 3 <<<"$count" | tr '\n' ' ')"
  failed=1
fi
exit "$failed"
