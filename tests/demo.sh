#!/usr/bin/env bash
# pgmux's main job, end to end on a fresh Debian machine: install PostgreSQL's
# binaries if needed, start a throwaway cluster, put pgmux in front of it and
# drive pgbench through it, printing the pool statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; } || ! command -v pgbench >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/demo.sh: PostgreSQL server binaries are missing: apt-get install postgresql postgresql-contrib" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo run --release --locked -p pgmux-tests --bin demo
