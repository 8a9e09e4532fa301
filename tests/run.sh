#!/usr/bin/env bash
# Run every test of pgmux on a fresh Debian machine: installs what the tests
# need (PostgreSQL server binaries, pgbench/psql/pg_isready), then runs the
# unit, property and end-to-end suites.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] || need_apt+=(postgresql postgresql-contrib)
command -v pgbench >/dev/null 2>&1 || need_apt+=(postgresql-contrib)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
# The TLS tests make their certificates with openssl.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The observability tests run the real tools: promtool and Prometheus, and
# the PgBouncer exporter against pgmux's admin console.
[ -x /usr/bin/promtool ] && [ -x /usr/bin/prometheus ] || need_apt+=(prometheus)
[ -x /usr/bin/prometheus-pgbouncer-exporter ] || need_apt+=(prometheus-pgbouncer-exporter)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: missing packages: ${need_apt[*]} (run as root or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The harness opens thousands of sockets in the load tests.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Python clients (psycopg, asyncpg, Django) for the end-to-end suite.
tests/python/setup.sh

cargo test --workspace --locked "$@"

# The suite above ran on the backend `io_backend = auto` picks here
# (io_uring where the kernel allows it); the end-to-end suite runs again on
# the epoll fallback, which containers with default seccomp profiles get.
PGMUX_IO_BACKEND=epoll cargo test -p pgmux-tests --locked --test proxy "$@"
