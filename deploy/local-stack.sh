#!/usr/bin/env bash
# The compose topology as plain processes on loopback, for machines without
# a container engine: a throwaway PostgreSQL 15 (db), pgmux, BookTrader
# under gunicorn (app) and Prometheus, each with the environment the compose
# files give that service (read through `docker-compose config`); only
# addresses change (free loopback ports instead of service names).
#
#   deploy/local-stack.sh up [--prod]     start, print the addresses, wait for Ctrl-C
#   deploy/local-stack.sh test [--prod]   start, run the end-to-end checks (deploy/e2e.py), stop
#
# --prod adds docker-compose.prod.yml (DJANGO_ENV=production, larger pool).
# While it runs, `make health STACK=local` checks it like `make health` does
# the compose stack. Everything is torn down on exit.
#
# Environment: PGMUX_BIN (else the newer of target/release/pgmux and target/debug/pgmux),
# STACK_PGMUX_CONFIG (pgmux's config file, default deploy/pgmux.toml, the
# image's), PYTHON (for the venv). As root, PostgreSQL runs as `postgres`.
set -euo pipefail
# Keep the source tree free of __pycache__.
export PYTHONDONTWRITEBYTECODE=1

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
mode="${1:-}"
prod=""
[ "${2:-}" = "--prod" ] && prod="--prod"
case "$mode" in
  up | test) ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

say() { echo "local-stack: $*" >&2; }
fail() {
  say "FAILED: $*"
  exit 1
}

# --- what we need -------------------------------------------------------
pgmux_bin="${PGMUX_BIN:-}"
if [ -z "$pgmux_bin" ]; then
  # The newer of the two builds: a stale release binary must not shadow a
  # fresh debug one (or the other way round).
  for candidate in "$root/target/release/pgmux" "$root/target/debug/pgmux"; do
    [ -x "$candidate" ] || continue
    if [ -z "$pgmux_bin" ] || [ "$candidate" -nt "$pgmux_bin" ]; then
      pgmux_bin="$candidate"
    fi
  done
fi
if [ -z "$pgmux_bin" ] || [ ! -x "$pgmux_bin" ]; then
  fail "no pgmux binary: build it (cargo build --release) or set PGMUX_BIN"
fi
pgmux_config="${STACK_PGMUX_CONFIG:-$here/pgmux.toml}"

command -v pg_config >/dev/null 2>&1 || fail "pg_config not found (Debian: apt-get install postgresql postgresql-contrib)"
pgbin="$(pg_config --bindir)"
for tool in initdb pg_ctl; do
  [ -x "$pgbin/$tool" ] || fail "$pgbin/$tool not found (Debian: apt-get install postgresql)"
done
command -v psql >/dev/null 2>&1 || fail "psql not found (Debian: apt-get install postgresql-client)"
command -v prometheus >/dev/null 2>&1 || fail "prometheus not found (Debian: apt-get install prometheus)"
python="$("$here/setup-venv.sh")"
venv_bin="$(dirname "$python")"

as_postgres=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || fail "running as root but there is no postgres user (install the postgresql package)"
  as_postgres=(runuser -u postgres --)
fi

# --- teardown -----------------------------------------------------------
dir="$(mktemp -d "${TMPDIR:-/tmp}/pgmux-stack.XXXXXX")"
stack_env="$root/target/deploy-stack.env"
pids=()
pg_started=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  set +e
  rm -f "$stack_env"
  # Reverse start order: prometheus, app, pgmux.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null
  done
  for pid in "${pids[@]}"; do
    # pgmux drains for up to shutdown_timeout; nothing is connected by now.
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$pg_started" ]; then
    "${as_postgres[@]}" "$pgbin/pg_ctl" -D "$dir/pgdata" -m fast -w stop >/dev/null 2>&1
  fi
  if [ "$status" -ne 0 ] && [ "$mode" = "test" ]; then
    for log in pgmux app prometheus postgres; do
      [ -s "$dir/$log.log" ] || continue
      say "last lines of $log.log:"
      tail -n 20 "$dir/$log.log" >&2
    done
  fi
  rm -rf "$dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- addresses ----------------------------------------------------------
read -r pg_port pgmux_port metrics_port app_port prom_port < <("$python" -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
')
sock="$dir/sock"

# --- the environment compose gives each service --------------------------
"$python" "$here/compose_env.py" env $prod pgmux >"$dir/pgmux.env" || fail "reading the compose files"
"$python" "$here/compose_env.py" env $prod app >"$dir/app.env" || fail "reading the compose files"
# Only addresses change: service names become loopback ports.
cat >>"$dir/pgmux.env" <<ENV
export DB_HOST=127.0.0.1 DB_PORT=$pg_port
export PGMUX_LISTEN_ADDR=127.0.0.1:$pgmux_port PGMUX_METRICS_ADDR=127.0.0.1:$metrics_port
export PGMUX_CONFIG=$(printf %q "$pgmux_config")
ENV
cat >>"$dir/app.env" <<ENV
export DB_HOST=127.0.0.1 DB_PORT=$pgmux_port
export GUNICORN_BIND=127.0.0.1:$app_port
export DJANGO_SETTINGS_MODULE=booktrader.settings
ENV
# In a subshell: drop the contract and PGMUX_* variables this shell
# inherited, then take the service's own, as its container would. (pgmux
# also takes every PGMUX_* variable for a setting and refuses unknown ones,
# such as PGMUX_BIN.)
service_env() {
  local var
  while read -r var; do
    unset "$var"
  done < <(compgen -e | grep -E '^(PGMUX_|DB_|DJANGO_)')
  # shellcheck disable=SC1090
  . "$1"
}
db_env() { (
  # shellcheck disable=SC1091
  . "$dir/app.env"
  # shellcheck disable=SC2153 # set by app.env
  echo "$DB_NAME" "$DB_USER" "$DB_PASSWORD"
); }
read -r db_name db_user db_password < <(db_env)

# --- db: PostgreSQL 15 ----------------------------------------------------
mkdir -p "$dir/pgdata" "$sock"
[ ${#as_postgres[@]} -eq 0 ] || chown -R postgres: "$dir"
chmod 755 "$dir"
say "db: initdb, PostgreSQL on 127.0.0.1:$pg_port"
"${as_postgres[@]}" "$pgbin/initdb" -D "$dir/pgdata" -U postgres --auth-local=trust \
  --auth-host=scram-sha-256 --no-sync >"$dir/initdb.log" 2>&1 || {
  cat "$dir/initdb.log" >&2
  fail "initdb"
}
pg_started=1
"${as_postgres[@]}" "$pgbin/pg_ctl" -D "$dir/pgdata" -w -t 60 -l "$dir/postgres.log" \
  -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$sock -c max_connections=100 -c fsync=off" \
  start >/dev/null || {
  cat "$dir/postgres.log" >&2
  fail "PostgreSQL did not start"
}
pg_isready -q -h "$sock" -p "$pg_port" -U postgres || fail "pg_isready -U postgres"
# The compose db's init script, verbatim: the app's role and database.
PGHOST="$sock" PGPORT="$pg_port" DB_NAME="$db_name" DB_USER="$db_user" DB_PASSWORD="$db_password" \
  "$here/postgres-init/10-booktrader.sh" >/dev/null || fail "postgres-init/10-booktrader.sh"

# --- pgmux ----------------------------------------------------------------
say "pgmux: $pgmux_bin on 127.0.0.1:$pgmux_port, metrics on 127.0.0.1:$metrics_port"
(
  service_env "$dir/pgmux.env"
  exec "$pgmux_bin"
) >"$dir/pgmux.log" 2>&1 &
pids+=("$!")
http_status() { "$python" - "$1" <<'PY'
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print(0)
PY
}
ready=""
for _ in $(seq 1 100); do
  kill -0 "${pids[0]}" 2>/dev/null || fail "pgmux exited: $(tail -n 5 "$dir/pgmux.log")"
  case "$(http_status "http://127.0.0.1:$metrics_port/readyz")" in
    200) ready=readyz ;;
    # A pgmux without /readyz yet: fall back to /healthz.
    404) [ "$(http_status "http://127.0.0.1:$metrics_port/healthz")" = 200 ] && ready=healthz ;;
  esac
  [ -n "$ready" ] && break
  sleep 0.1
done
[ -n "$ready" ] || fail "pgmux never became ready"
[ "$ready" = readyz ] || say "pgmux: WARNING: this binary has no /readyz; waited on /healthz"

# --- app: BookTrader under gunicorn ---------------------------------------
say "app: manage.py migrate through pgmux, then gunicorn on 127.0.0.1:$app_port"
(
  cd "$here/booktrader"
  service_env "$dir/app.env"
  "$python" manage.py migrate --noinput
) >"$dir/migrate.log" 2>&1 || {
  cat "$dir/migrate.log" >&2
  fail "manage.py migrate"
}
(
  cd "$here/booktrader"
  service_env "$dir/app.env"
  exec "$venv_bin/gunicorn" -c gunicorn.conf.py booktrader.wsgi
) >"$dir/app.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 150); do
  kill -0 "${pids[1]}" 2>/dev/null || fail "gunicorn exited: $(tail -n 5 "$dir/app.log")"
  [ "$(http_status "http://127.0.0.1:$app_port/health/")" = 200 ] && break
  sleep 0.2
done
[ "$(http_status "http://127.0.0.1:$app_port/health/")" = 200 ] || fail "the app never answered /health/"

# --- prometheus -----------------------------------------------------------
# deploy/prometheus.yml with its targets on loopback and a short interval.
mkdir -p "$dir/prometheus"
sed -e "s/\"pgmux:9930\"/\"127.0.0.1:$metrics_port\"/" -e "s/\"localhost:9090\"/\"127.0.0.1:$prom_port\"/" \
  -e "s/scrape_interval: 15s/scrape_interval: 1s/" "$here/prometheus.yml" >"$dir/prometheus/prometheus.yml"
cp "$here/prometheus-rules.yml" "$dir/prometheus/"
grep -q "127.0.0.1:$metrics_port" "$dir/prometheus/prometheus.yml" || fail "could not point prometheus.yml at pgmux"
say "prometheus: 127.0.0.1:$prom_port, scraping pgmux every 1 s"
prometheus --config.file="$dir/prometheus/prometheus.yml" --storage.tsdb.path="$dir/prometheus/data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$dir/prometheus.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do
  kill -0 "${pids[2]}" 2>/dev/null || fail "prometheus exited: $(tail -n 5 "$dir/prometheus.log")"
  [ "$(http_status "http://127.0.0.1:$prom_port/-/ready")" = 200 ] && break
  sleep 0.2
done

# --- for `make health STACK=local` and e2e.py -----------------------------
cat >"$stack_env" <<ENV
# Written by deploy/local-stack.sh; removed when it stops.
STACK_DIR=$dir
STACK_PGHOST=$sock
STACK_PGPORT=$pg_port
STACK_PGMUX_BIN=$pgmux_bin
STACK_PGMUX_ADDR=127.0.0.1:$pgmux_port
STACK_METRICS_ADDR=127.0.0.1:$metrics_port
STACK_APP_URL=http://127.0.0.1:$app_port
STACK_PROMETHEUS_URL=http://127.0.0.1:$prom_port
STACK_APP_DIR=$here/booktrader
STACK_APP_ENV=$dir/app.env
STACK_PGMUX_ENV=$dir/pgmux.env
STACK_PYTHON=$python
STACK_PROD=$prod
ENV

say "up: app http://127.0.0.1:$app_port  pgmux 127.0.0.1:$pgmux_port  metrics http://127.0.0.1:$metrics_port/metrics  prometheus http://127.0.0.1:$prom_port"
if [ "$mode" = up ]; then
  say "psql: psql -h $sock -p $pg_port -U postgres -c 'SELECT count(*) FROM pg_stat_activity'"
  say "health: make health STACK=local    stop: Ctrl-C"
  wait "${pids[0]}"
  fail "pgmux exited: $(tail -n 5 "$dir/pgmux.log")"
fi

"$python" "$here/e2e.py" "$stack_env"
