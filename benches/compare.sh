#!/usr/bin/env bash
# benches/compare.sh - pgbench side by side: PostgreSQL direct, PgBouncer, and
# pgmux on each of its I/O backends (io_uring and epoll).
#
# Starts a throwaway PostgreSQL, PgBouncer (Debian package) and pgmux (release
# build), all on 127.0.0.1, runs pgbench against every target interleaved
# (A B C D A B C D ... for every scenario in every round, so machine drift
# hits all alike), and measures per transaction each proxy's own CPU time
# (/proc/<pid>/stat), context switches (/proc/<pid>/task/*/status) and, in one
# extra counting round under `perf stat`, its system calls. Then the RSS each
# proxy spends per idle authenticated client, how many transactions one
# pinned core serves, whether two pgmux workers both carry load, and a
# Markdown report for benches/RESULTS.md.
#
# Run as root from anywhere:   benches/compare.sh
# Knobs (environment):
#   BENCH_SECONDS=10        pgbench -T per run
#   BENCH_ROUNDS=3          rounds; figures are medians across rounds
#   BENCH_WARMUP=3          seconds of unrecorded warm-up per target (0 = none)
#   BENCH_SCALE=10          pgbench -i -s
#   BENCH_POOL_SIZE=20      server connections per pool, both proxies
#   BENCH_AUTH=scram-sha-256  password auth everywhere during pgbench
#                           (scram-sha-256 | md5): pgbench to PostgreSQL
#                           direct, pgbench to both proxies, and the proxies
#                           to PostgreSQL
#   BENCH_SCENARIOS="select-c16 select-c200 extended-c50 prepared-c50 tpcb-c50 connect-c16"
#   BENCH_TARGETS="direct pgbouncer pgmux-uring pgmux-epoll"
#                           pgmux-uring / pgmux-epoll run pgmux with
#                           io_backend forced to io_uring / epoll
#   BENCH_PGMUX_WORKERS=1   pgmux worker_threads in the main rounds (PgBouncer
#                           is one thread; the scaling section runs 2)
#   BENCH_COUNT=1           one extra round under `perf stat` counting each
#                           proxy's system calls (0 = skip; needs perf). It is
#                           kept apart because counting a tracepoint costs the
#                           traced process CPU, more for whoever makes more
#                           calls.
#   BENCH_SCALING=1         the pinned-core and two-worker runs (0 = skip)
#   BENCH_PGB_SECRET=verifier  what PgBouncer's userlist holds when BENCH_AUTH
#                           is scram-sha-256: "verifier" (the SCRAM verifier
#                           copied from pg_authid, PgBouncer's recommended
#                           setup; it then reuses the client's proof to log
#                           in to PostgreSQL) or "plain" (plaintext password:
#                           PgBouncer then runs PBKDF2 on every client login).
#                           md5 / plain client auth always use plaintext.
#                           pgmux always gets the plaintext password.
#   BENCH_IDLE_COUNTS="2000 10000"  idle clients held per proxy ("" = skip)
#   BENCH_IDLE_AUTH=md5     client auth for the idle test (md5 | plain)
#   BENCH_IDLE_BATCH=100    idle connections opened per batch (kept under
#                           PgBouncer's default listen backlog of 128)
#   BENCH_TLS=0             1: TLS everywhere, with a certificate made here by
#                           openssl (PostgreSQL ssl = on; pgbench, psql and
#                           the idle clients use sslmode=require; both proxies
#                           serve clients TLS and reach PostgreSQL over TLS,
#                           `require` on both sides, no certificate checks)
#   BENCH_NO_BUILD=1        skip `cargo build --release -p pgmux`
#   PGMUX_BIN=path          use this pgmux binary (implies no build)
#   BENCH_PGMUX_NOTE=text   describes PGMUX_BIN's source in the report
#                           (default: the repository's HEAD commit)
#   BENCH_OUT=dir           keep raw pgbench output, logs and the report here
#                           (default: a new /tmp/pgmux-bench-results.* dir)
# Everything else (data dir, configs, processes) lives in a temp dir that is
# removed on exit; all waits are bounded.

set -uo pipefail

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_WARMUP=${BENCH_WARMUP:-3}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_POOL_SIZE=${BENCH_POOL_SIZE:-20}
BENCH_AUTH=${BENCH_AUTH:-scram-sha-256}
BENCH_TLS=${BENCH_TLS:-0}
BENCH_SCENARIOS=${BENCH_SCENARIOS:-select-c16 select-c200 extended-c50 prepared-c50 tpcb-c50 connect-c16}
BENCH_IDLE_COUNTS=${BENCH_IDLE_COUNTS-2000 10000}
BENCH_IDLE_AUTH=${BENCH_IDLE_AUTH:-md5}
BENCH_PGB_SECRET=${BENCH_PGB_SECRET:-verifier}
BENCH_IDLE_BATCH=${BENCH_IDLE_BATCH:-100}
BENCH_NO_BUILD=${BENCH_NO_BUILD:-0}
BENCH_TARGETS=${BENCH_TARGETS:-direct pgbouncer pgmux-uring pgmux-epoll}
BENCH_PGMUX_WORKERS=${BENCH_PGMUX_WORKERS:-1}
BENCH_COUNT=${BENCH_COUNT:-1}
BENCH_SCALING=${BENCH_SCALING:-1}

DB_USER=bench
DB_NAME=bench
DB_PASS="bench-$(date +%s)-$$"
read -r -a TARGETS <<< "$BENCH_TARGETS"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STARTED_AT=$(date +%s)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "${1:-}" in
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

[ "$(id -u)" = 0 ] || die "run as root (needs runuser/setpriv for the postgres user and apt-get)"
id postgres >/dev/null 2>&1 || die "no 'postgres' user (install postgresql)"
case "$BENCH_AUTH" in scram-sha-256|md5) ;; *) die "BENCH_AUTH must be scram-sha-256 or md5" ;; esac
case "$BENCH_IDLE_AUTH" in md5|plain) ;; *) die "BENCH_IDLE_AUTH must be md5 or plain" ;; esac
case "$BENCH_PGB_SECRET" in verifier|plain) ;; *) die "BENCH_PGB_SECRET must be verifier or plain" ;; esac
for t in "${TARGETS[@]}"; do
    case "$t" in direct|pgbouncer|pgmux-uring|pgmux-epoll) ;; *) die "unknown target $t" ;; esac
done
for v in BENCH_SECONDS BENCH_ROUNDS BENCH_WARMUP BENCH_SCALE BENCH_POOL_SIZE BENCH_IDLE_BATCH BENCH_PGMUX_WORKERS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"
done
[ "$BENCH_ROUNDS" -ge 1 ] && [ "$BENCH_SECONDS" -ge 1 ] || die "BENCH_ROUNDS and BENCH_SECONDS must be >= 1"

# ---------------------------------------------------------------- scenarios
scenario_args() {
    case "$1" in
        select-c16)   echo "-S -c 16" ;;
        select-c50)   echo "-S -c 50" ;;
        select-c200)  echo "-S -c 200" ;;
        extended-c50) echo "-M extended -S -c 50" ;;
        prepared-c50) echo "-M prepared -S -c 50" ;;
        tpcb-c50)     echo "-c 50" ;;
        connect-c16)  echo "-C -S -c 16" ;;
        *) return 1 ;;
    esac
}
for s in $BENCH_SCENARIOS; do scenario_args "$s" >/dev/null || die "unknown scenario $s"; done

# ---------------------------------------------------------------- tools
PGBIN=$(pg_config --bindir 2>/dev/null || true)
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/postgres" ]; then
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
fi
for b in initdb pg_ctl postgres pgbench psql; do
    [ -x "$PGBIN/$b" ] || die "$PGBIN/$b not found"
done
command -v python3 >/dev/null || die "python3 is required"
if [ "$BENCH_COUNT" = 1 ] && ! perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    log "perf cannot count raw_syscalls:sys_enter here (apt-get install linux-perf); no syscall counts"
    BENCH_COUNT=0
fi
if [ "$BENCH_SCALING" = 1 ] && { [ "$(nproc)" -lt 2 ] || ! command -v taskset >/dev/null; }; then
    log "the scaling runs need 2 CPUs and taskset; skipped"
    BENCH_SCALING=0
fi

if ! command -v pgbouncer >/dev/null 2>&1; then
    log "pgbouncer missing: apt-get install -y pgbouncer"
    # Keep the package's init script from starting a system-wide pgbouncer.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >&2
    rc=$?
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || die "apt-get install pgbouncer failed"
fi
PGBOUNCER=$(command -v pgbouncer)

if [ -n "${PGMUX_BIN:-}" ]; then
    [ -x "$PGMUX_BIN" ] || die "PGMUX_BIN=$PGMUX_BIN is not executable"
else
    PGMUX_BIN=$REPO/target/release/pgmux
    if [ "$BENCH_NO_BUILD" != 1 ]; then
        log "cargo build --release -p pgmux"
        (cd "$REPO" && cargo build --release -p pgmux >&2) || die "cargo build failed"
    fi
    [ -x "$PGMUX_BIN" ] || die "$PGMUX_BIN missing (build it, or unset BENCH_NO_BUILD)"
fi

# ---------------------------------------------------------------- file limits
hard=$(ulimit -Hn)
ulimit -n "$hard" 2>/dev/null || true
max_idle=0
for n in $BENCH_IDLE_COUNTS; do
    [[ $n =~ ^[0-9]+$ ]] || die "BENCH_IDLE_COUNTS: $n is not a number"
    [ "$n" -gt "$max_idle" ] && max_idle=$n
done
MAX_CLIENT=$(( max_idle > 1000 ? max_idle + 1000 : 2000 ))
need=$(( MAX_CLIENT + BENCH_POOL_SIZE + 200 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
    # Root may raise the hard limit up to fs.nr_open.
    ulimit -Hn "$need" 2>/dev/null && ulimit -n "$need" 2>/dev/null
    [ "$(ulimit -n)" -ge "$need" ] || die "open-file limit $(ulimit -n) < $need needed for $max_idle idle clients; lower BENCH_IDLE_COUNTS"
fi
log "open-file limit $(ulimit -n); proxies' max_client_conn $MAX_CLIENT"

# ---------------------------------------------------------------- temp dir + cleanup
TMP=$(mktemp -d /tmp/pgmux-bench.XXXXXX) || die "mktemp failed"
chmod 755 "$TMP"
chown postgres:postgres "$TMP"
OUT=${BENCH_OUT:-$(mktemp -d /tmp/pgmux-bench-results.XXXXXX)}
mkdir -p "$OUT/raw" || die "cannot create $OUT"
PGDATA=$TMP/pgdata
# Run a private copy so a concurrent `cargo build` cannot swap it mid-run.
cp "$PGMUX_BIN" "$TMP/pgmux" || die "cannot copy $PGMUX_BIN"
PGMUX_SRC=$PGMUX_BIN
PGMUX_BIN=$TMP/pgmux
declare -A PID=() PORT=()
IDLE_PID=""
PERF_PID=""
PG_STARTED=0

alive() {
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}

# stop_proc PID SIGNAL: signal, wait up to 10 s, then SIGKILL. Bounded.
stop_proc() {
    local pid=$1 sig=${2:-TERM} i
    [ -n "$pid" ] || return 0
    if alive "$pid"; then
        kill "-$sig" "$pid" 2>/dev/null
        for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then
            log "pid $pid ignored SIG$sig for 10 s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [ -n "$IDLE_PID" ] && stop_proc "$IDLE_PID" TERM
    [ -n "$PERF_PID" ] && stop_proc "$PERF_PID" INT
    for t in "${!PID[@]}"; do
        case "$t" in pgbouncer) stop_proc "${PID[$t]}" INT ;; *) stop_proc "${PID[$t]}" TERM ;; esac
    done
    if [ "$PG_STARTED" = 1 ]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -t 30 -w stop >/dev/null 2>&1 \
            || runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -t 30 -w stop >/dev/null 2>&1
    fi
    for f in "$TMP"/*.log; do
        [ -f "$f" ] && cp "$f" "$OUT/"
    done
    rm -rf "$TMP"
    log "raw output and logs kept in $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- ports
read -r PG_PORT PORT[pgbouncer] PORT[pgmux-uring] PORT[pgmux-epoll] PORT[pgmux-2w] < <(python3 - <<'PY'
import random, socket
ports, tries = [], 0
while len(ports) < 5 and tries < 1000:
    tries += 1
    p = random.randint(15000, 32000)   # below the ephemeral range
    if p in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(*ports)
PY
)
[ -n "${PORT[pgmux-2w]:-}" ] || die "could not find free loopback ports"
PORT[direct]=$PG_PORT
log "ports: postgres $PG_PORT, pgbouncer ${PORT[pgbouncer]}, pgmux-uring ${PORT[pgmux-uring]}, pgmux-epoll ${PORT[pgmux-epoll]}, pgmux-2w ${PORT[pgmux-2w]}; temp $TMP"

case "$BENCH_TLS" in 0) SSLMODE=disable ;; 1) SSLMODE=require ;; *) die "BENCH_TLS must be 0 or 1" ;; esac
export PGPASSWORD=$DB_PASS PGSSLMODE=$SSLMODE PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS

port_of() { echo "${PORT[$1]}"; }
pid_of() { echo "${PID[$1]:-}"; }

# utime+stime of a whole process (all threads), in clock ticks.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# Context switches, voluntary and not, summed over a process's threads.
ctx_switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null \
        | awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ {n += $2} END {print n + 0}'
}
# "name ticks" for each thread of a process (utime+stime).
thread_ticks() {
    local f
    for f in /proc/"$1"/task/*/stat; do
        sed 's/^[0-9]* (\(.*\)) /\1 /' "$f" 2>/dev/null | awk '{print $1, $13 + $14}'
    done
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
CLK_TCK=$(getconf CLK_TCK)

psql_at() { # port db sql
    timeout 30 "$PGBIN/psql" -h 127.0.0.1 -p "$1" -U "$DB_USER" -d "$2" -X -q -A -t -v ON_ERROR_STOP=1 -c "$3"
}

# ---------------------------------------------------------------- PostgreSQL
MAX_CONN=$(( 250 + 2 * BENCH_POOL_SIZE + 50 ))
log "initdb (max_connections $MAX_CONN, $BENCH_AUTH)"
printf '%s\n' "$DB_PASS" > "$TMP/pwfile"
chown postgres:postgres "$TMP/pwfile"
chmod 600 "$TMP/pwfile"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U "$DB_USER" --pwfile="$TMP/pwfile" \
    --auth="$BENCH_AUTH" -E UTF8 --locale=C >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
rm -f "$TMP/pwfile"
cat >> "$PGDATA/postgresql.conf" <<EOF

# --- benches/compare.sh ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP'
max_connections = $MAX_CONN
password_encryption = '$BENCH_AUTH'
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
autovacuum = off
log_min_messages = warning
EOF
# BENCH_TLS: one certificate for PostgreSQL and both proxies.
TLS_CERT=$TMP/tls/server.crt TLS_KEY=$TMP/tls/server.key
if [ "$BENCH_TLS" = 1 ]; then
    mkdir -p "$TMP/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$TLS_KEY" -out "$TLS_CERT" -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$TMP/openssl.log" 2>&1 \
        || { cat "$TMP/openssl.log" >&2; die "openssl could not make the benchmark's certificate"; }
    chown -R postgres:postgres "$TMP/tls"
    chmod 600 "$TLS_KEY"
    printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" "$TLS_CERT" "$TLS_KEY" >> "$PGDATA/postgresql.conf"
fi
PG_STARTED=1
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$TMP/postgres.log" -t 60 -w start >/dev/null \
    || { PG_STARTED=0; tail -n 20 "$TMP/postgres.log" >&2; die "PostgreSQL did not start"; }
# initdb stored the password under its own default (SCRAM); store it again
# under password_encryption so an md5 run really uses md5.
psql_at "$PG_PORT" postgres "ALTER ROLE $DB_USER PASSWORD '$DB_PASS'" || die "ALTER ROLE failed"
psql_at "$PG_PORT" postgres "CREATE DATABASE $DB_NAME" || die "CREATE DATABASE failed"
log "pgbench -i -s $BENCH_SCALE"
timeout 600 "$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -i -q -s "$BENCH_SCALE" "$DB_NAME" \
    >"$OUT/raw/pgbench-init.txt" 2>&1 || { cat "$OUT/raw/pgbench-init.txt" >&2; die "pgbench -i failed"; }

# ---------------------------------------------------------------- proxies
SCRAM_VERIFIER=$(psql_at "$PG_PORT" postgres "SELECT rolpassword FROM pg_authid WHERE rolname = '$DB_USER'")
if [ "$BENCH_AUTH" = scram-sha-256 ]; then
    case "$SCRAM_VERIFIER" in SCRAM-SHA-256\$*) ;; *) die "no SCRAM verifier for $DB_USER in pg_authid" ;; esac
fi

# PgBouncer's userlist for a given client auth type (see BENCH_PGB_SECRET).
write_userlist() {
    local secret=$DB_PASS
    [ "$1" = scram-sha-256 ] && [ "$BENCH_PGB_SECRET" = verifier ] && secret=$SCRAM_VERIFIER
    printf '"%s" "%s"\n' "$DB_USER" "$secret" > "$TMP/userlist.txt"
    chown postgres:postgres "$TMP/userlist.txt"
    chmod 600 "$TMP/userlist.txt"
}

# wait_ready NAME PORT PID: bounded wait until a query passes through the proxy
# (this also opens its first server connection).
wait_ready() {
    local name=$1 port=$2 pid=$3 i
    for ((i = 0; i < 150; i++)); do
        if ! alive "$pid"; then
            tail -n 30 "$TMP/$name.log" >&2
            die "$name exited during start-up"
        fi
        psql_at "$port" "$DB_NAME" "SELECT 1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    tail -n 30 "$TMP/$name.log" >&2
    die "$name not answering on 127.0.0.1:$port after 30 s"
}

start_pgbouncer() { # auth_type
    write_userlist "$1"
    cat > "$TMP/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PORT[pgbouncer]}
unix_socket_dir =
auth_type = $1
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = $BENCH_POOL_SIZE
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = $MAX_CLIENT
max_db_connections = 0
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 60
EOF
    if [ "$BENCH_TLS" = 1 ]; then
        printf 'client_tls_sslmode = require\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\nserver_tls_sslmode = require\n' \
            "$TLS_CERT" "$TLS_KEY" >> "$TMP/pgbouncer.ini"
    fi
    chmod 644 "$TMP/pgbouncer.ini"
    echo "=== pgbouncer start $(date +%T) auth $1" >> "$TMP/pgbouncer.log"
    ( cd "$TMP" && exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
        "$PGBOUNCER" "$TMP/pgbouncer.ini" ) >>"$TMP/pgbouncer.log" 2>&1 &
    PID[pgbouncer]=$!
    wait_ready pgbouncer "${PORT[pgbouncer]}" "${PID[pgbouncer]}"
}

start_pgmux() { # target auth_type [worker_threads]
    local t=$1 backend workers=${3:-$BENCH_PGMUX_WORKERS}
    [ "$t" = pgmux-2w ] && workers=2
    case "$t" in pgmux-epoll) backend=epoll ;; *) backend=io_uring ;; esac
    mkdir -p "$TMP/pgmux-run"   # no proxy.toml here: configuration is env only
    local tls=(PGMUX_SERVER_TLS_SSLMODE=disable)
    [ "$BENCH_TLS" = 1 ] && tls=(PGMUX_SERVER_TLS_SSLMODE=require PGMUX_CLIENT_TLS_SSLMODE=require
        PGMUX_CLIENT_TLS_CERT_FILE="$TLS_CERT" PGMUX_CLIENT_TLS_KEY_FILE="$TLS_KEY")
    echo "=== $t start $(date +%T) auth $2, io_backend $backend, worker_threads $workers" >> "$TMP/$t.log"
    ( cd "$TMP/pgmux-run" && exec env -i PATH="$PATH" HOME="$TMP/pgmux-run" \
        PGMUX_LOG=warn \
        PGMUX_LOG_CONNECTIONS=false \
        PGMUX_IO_BACKEND="$backend" \
        PGMUX_WORKER_THREADS="$workers" \
        PGMUX_LISTEN_ADDR="127.0.0.1:${PORT[$t]}" \
        PGMUX_METRICS_ADDR="" \
        PGMUX_POOL_MODE=transaction \
        PGMUX_POOL_SIZE="$BENCH_POOL_SIZE" \
        PGMUX_MAX_CLIENT_CONN="$MAX_CLIENT" \
        PGMUX_AUTH_TYPE="$2" \
        "${tls[@]}" \
        DB_HOST=127.0.0.1 DB_PORT="$PG_PORT" DB_NAME="$DB_NAME" \
        DB_USER="$DB_USER" DB_PASSWORD="$DB_PASS" \
        "$PGMUX_BIN" ) >>"$TMP/$t.log" 2>&1 &
    PID[$t]=$!
    wait_ready "$t" "${PORT[$t]}" "${PID[$t]}"
}

start_target() { # target auth_type [worker_threads]
    case "$1" in
        direct) ;;
        pgbouncer) start_pgbouncer "$2" ;;
        *) start_pgmux "$@" ;;
    esac
}
stop_target() {
    case "$1" in
        direct) ;;
        pgbouncer) stop_proc "${PID[pgbouncer]:-}" INT ;;
        *) stop_proc "${PID[$1]:-}" TERM ;;
    esac
    unset "PID[$1]"
}

# ---------------------------------------------------------------- pgbench runs
RAW=$OUT/raw/pgbench.tsv
printf 'round\tscenario\ttarget\tstatus\ttps\tlatency_ms\ttransactions\tfailed\tproxy_cpu_ticks\tproxy_cs\tproxy_syscalls\n' > "$RAW"
FAILURES=$OUT/failures.txt
THREADS=$OUT/raw/threads.tsv
printf 'round\tscenario\ttarget\tthread\tcpu_ticks\n' > "$THREADS"
: > "$FAILURES"
RESTARTS=0

# A proxy that died is logged and restarted (at most 3 times in all) so the
# remaining runs still mean something.
ensure_up() {
    local t=$1 pid
    [ "$t" = direct ] && return 0
    pid=$(pid_of "$t")
    alive "$pid" && return 0
    {
        echo "### $t (pid $pid) was found dead before a run at $(date +%T); log tail:"
        tail -n 40 "$TMP/$t.log"
        echo
    } | tee -a "$FAILURES" >&2
    [ "$RESTARTS" -lt 3 ] || die "$t died again; giving up"
    unset "PID[$t]"
    RESTARTS=$((RESTARTS + 1))
    wait "$pid" 2>/dev/null
    start_target "$t" "$BENCH_AUTH"
}

# run_pgbench ROUND SCENARIO TARGET SECONDS RECORD [PGBENCH_PREFIX...]
# RECORD: 1 = a measured run, 0 = warm-up, count = syscalls counted by perf.
run_pgbench() {
    local round=$1 scen=$2 t=$3 secs=$4 record=$5
    shift 5
    local port pid args out c0="" c1="" x0="" x1="" rc status tps lat tx failed cpu="-" cs="-" calls="-"
    ensure_up "$t"
    port=$(port_of "$t")
    pid=$(pid_of "$t")
    args=$(scenario_args "$scen")
    out=$OUT/raw/r${round}-${scen}-${t}.txt
    if [ -n "$pid" ]; then
        [ "$t" != pgbouncer ] && thread_ticks "$pid" > "$out.threads0"
        c0=$(cpu_ticks "$pid")
        x0=$(ctx_switches "$pid")
        if [ "$record" = count ]; then
            perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$out.perf" >/dev/null 2>&1 &
            PERF_PID=$!
            sleep 0.5   # perf attaches to every thread before the run starts
        fi
    fi
    # shellcheck disable=SC2086  # $args is a word list on purpose
    timeout -k 10 $((secs * 3 + 120)) "$@" "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U "$DB_USER" \
        -n -j 2 -T "$secs" $args "$DB_NAME" >"$out" 2>&1
    rc=$?
    if [ -n "$pid" ] && alive "$pid"; then
        c1=$(cpu_ticks "$pid")
        x1=$(ctx_switches "$pid")
        if [ -f "$out.threads0" ]; then
            # Each worker thread's share: "round scenario target thread ticks".
            thread_ticks "$pid" | awk -v r="$round" -v s="$scen" -v t="$t" '
                NR == FNR { before[$1] += $2; next }
                { after[$1] += $2 }
                END { for (n in after) if (n ~ /^pgmux-worker/) printf "%s\t%s\t%s\t%s\t%d\n", r, s, t, n, after[n] - before[n] }
            ' "$out.threads0" - >> "$THREADS"
        fi
    fi
    if [ -n "$PERF_PID" ]; then
        stop_proc "$PERF_PID" INT
        PERF_PID=""
        calls=$(awk -F, '$3 ~ /raw_syscalls:sys_enter/ {print $1}' "$out.perf" 2>/dev/null)
        [[ $calls =~ ^[0-9]+$ ]] || calls="-"
    fi
    [ -n "$c0" ] && [ -n "$c1" ] && cpu=$((c1 - c0))
    [ -n "$x0" ] && [ -n "$x1" ] && cs=$((x1 - x0))
    tps=$(awk '/^tps = / {print $3; exit}' "$out")
    lat=$(awk '/^latency average = / {print $4; exit}' "$out")
    tx=$(awk -F': ' '/^number of transactions actually processed/ {split($2, a, "/"); print a[1]; exit}' "$out")
    failed=$(awk -F': ' '/^number of failed transactions/ {split($2, a, " "); print a[1]; exit}' "$out")
    status=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status=timeout
    elif [ "$rc" != 0 ]; then
        status=exit$rc
    elif [ -z "$tps" ] || [ -z "$tx" ] || [ "$tx" = 0 ]; then
        status=noresult
    elif [ -n "$failed" ] && [ "$failed" != 0 ]; then
        status=failed$failed
    fi
    [ -n "$pid" ] && ! alive "$pid" && status="${status}+proxydied"
    if [ "$record" != 0 ]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$scen" "$t" "$status" \
            "${tps:--}" "${lat:--}" "${tx:--}" "${failed:-0}" "$cpu" "$cs" "$calls" >> "$RAW"
    fi
    if [ "$status" != ok ]; then
        {
            echo "### round $round, $scen, $t: $status (pgbench exit $rc) at $(date +%T)"
            echo "pgbench $args:"
            grep -v '^progress' "$out" | tail -n 25
            if [ "$t" != direct ]; then
                echo "--- $t log tail:"
                tail -n 25 "$TMP/$t.log"
            fi
            echo
        } | tee -a "$FAILURES" >&2
    fi
    log "r$round $(printf '%-13s %-11s' "$scen" "$t") tps ${tps:--}  lat ${lat:--} ms  tx ${tx:--}  cpu ${cpu} ticks  cs ${cs}  syscalls ${calls}  [$status]"
}

log "starting proxies (client auth $BENCH_AUTH, pool_size $BENCH_POOL_SIZE, transaction mode)"
for t in "${TARGETS[@]}"; do start_target "$t" "$BENCH_AUTH"; done

if [ "$BENCH_WARMUP" -gt 0 ]; then
    for t in "${TARGETS[@]}"; do run_pgbench 0 select-c16 "$t" "$BENCH_WARMUP" 0; done
fi
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    log "round $round of $BENCH_ROUNDS"
    for scen in $BENCH_SCENARIOS; do
        for t in "${TARGETS[@]}"; do run_pgbench "$round" "$scen" "$t" "$BENCH_SECONDS" 1; done
    done
done
if [ "$BENCH_COUNT" = 1 ]; then
    log "counting round: system calls under perf stat"
    for scen in $BENCH_SCENARIOS; do
        for t in "${TARGETS[@]}"; do
            [ "$t" = direct ] || run_pgbench count "$scen" "$t" "$BENCH_SECONDS" count
        done
    done
fi
for t in "${TARGETS[@]}"; do stop_target "$t"; done

# ---------------------------------------------------------------- idle clients
cat > "$TMP/idle_clients.py" <<'PY'
"""Hold N authenticated, idle PostgreSQL client connections.

Opens connections in batches, runs the startup + md5/cleartext password
exchange on each until ReadyForQuery, writes a JSON status file, then holds
every connection until the stop file appears (or --hold seconds pass).
"""
import argparse, hashlib, json, os, selectors, socket, ssl, struct, sys, time

ap = argparse.ArgumentParser()
for name in ("host", "user", "password", "database", "status", "stop"):
    ap.add_argument("--" + name, required=True)
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--n", type=int, required=True)
ap.add_argument("--batch", type=int, default=200)
ap.add_argument("--hold", type=float, default=300.0)
ap.add_argument("--tls", action="store_true", help="SSLRequest, then TLS (no certificate check)")
a = ap.parse_args()
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE

def packet(kind, payload):
    return kind + struct.pack("!I", len(payload) + 4) + payload

params = b"user\0" + a.user.encode() + b"\0database\0" + a.database.encode() + b"\0\0"
startup = struct.pack("!II", len(params) + 8, 196608) + params

def md5hex(data):
    return hashlib.md5(data).hexdigest().encode()

inner = md5hex(a.password.encode() + a.user.encode())

class Conn:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

held, errors = [], {}

def fail(sel, c, why):
    errors[why] = errors.get(why, 0) + 1
    try:
        sel.unregister(c.sock)
    except (KeyError, ValueError):
        pass
    c.sock.close()

sel = selectors.DefaultSelector()
t0 = time.monotonic()
opened = 0
while opened < a.n:
    batch = min(a.batch, a.n - opened)
    opened += batch
    pending = set()
    for _ in range(batch):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect((a.host, a.port))
            if a.tls:
                s.sendall(struct.pack("!II", 8, 80877103))
                if s.recv(1) != b"S":
                    raise OSError("TLS refused")
                s = tls.wrap_socket(s)
            s.sendall(startup)
        except OSError as e:
            errors["connect: " + (e.strerror or str(e))] = errors.get("connect: " + (e.strerror or str(e)), 0) + 1
            s.close()
            continue
        s.setblocking(False)
        c = Conn(s)
        sel.register(s, selectors.EVENT_READ, c)
        pending.add(c)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            c = key.data
            try:
                data = c.sock.recv(65536)
                # TLS: records already decrypted wait in the SSL object.
                while isinstance(c.sock, ssl.SSLSocket) and c.sock.pending():
                    data += c.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            except OSError as e:
                pending.discard(c); fail(sel, c, "recv: " + (e.strerror or str(e))); continue
            if not data:
                pending.discard(c); fail(sel, c, "closed by proxy during login"); continue
            c.buf += data
            while len(c.buf) >= 5:
                kind = c.buf[:1]
                length = struct.unpack("!I", c.buf[1:5])[0]
                if len(c.buf) < 1 + length:
                    break
                body, c.buf = c.buf[5:1 + length], c.buf[1 + length:]
                try:
                    if kind == b"R":
                        code = struct.unpack("!I", body[:4])[0]
                        if code == 5:
                            reply = b"md5" + md5hex(inner + body[4:8]) + b"\0"
                            c.sock.sendall(packet(b"p", reply))
                        elif code == 3:
                            c.sock.sendall(packet(b"p", a.password.encode() + b"\0"))
                        elif code != 0:
                            raise ValueError("unsupported auth request %d" % code)
                    elif kind == b"E":
                        fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
                        raise ValueError("ErrorResponse: " + fields.get(b"M", b"?").decode(errors="replace"))
                    elif kind == b"Z":
                        sel.unregister(c.sock)
                        pending.discard(c)
                        held.append(c.sock)
                        break
                except (OSError, ValueError) as e:
                    pending.discard(c); fail(sel, c, str(e)); break
    for c in list(pending):
        fail(sel, c, "no ReadyForQuery within 60 s")

status = {"requested": a.n, "ready": len(held), "failed": a.n - len(held),
          "errors": errors, "seconds": round(time.monotonic() - t0, 2)}
tmp = a.status + ".tmp"
with open(tmp, "w") as f:
    json.dump(status, f)
os.rename(tmp, a.status)
print(json.dumps(status), flush=True)

end = time.monotonic() + a.hold
while not os.path.exists(a.stop) and time.monotonic() < end:
    time.sleep(0.2)
for s in held:
    s.close()
PY

IDLE=$OUT/raw/idle.tsv
printf 'clients\tproxy\tready\tfailed\trss_before_kb\trss_after_kb\tseconds\terrors\n' > "$IDLE"

idle_run() { # N target
    local n=$1 t=$2 pid before after i st ready failed secs errs
    start_target "$t" "$BENCH_IDLE_AUTH"
    pid=$(pid_of "$t")
    sleep 1
    before=$(rss_kb "$pid")
    rm -f "$TMP/idle.status" "$TMP/idle.stop"
    python3 "$TMP/idle_clients.py" --host 127.0.0.1 --port "$(port_of "$t")" --user "$DB_USER" \
        --password "$DB_PASS" --database "$DB_NAME" --n "$n" --batch "$BENCH_IDLE_BATCH" \
        --status "$TMP/idle.status" --stop "$TMP/idle.stop" --hold 600 $( [ "$BENCH_TLS" = 1 ] && echo --tls ) \
        >"$OUT/raw/idle-$n-$t.txt" 2>&1 &
    IDLE_PID=$!
    for ((i = 0; i < 1800; i++)); do   # at most 6 minutes
        [ -f "$TMP/idle.status" ] && break
        alive "$IDLE_PID" || break
        sleep 0.2
    done
    if [ -f "$TMP/idle.status" ]; then
        sleep 2   # let the proxy settle before reading RSS
        if alive "$pid"; then after=$(rss_kb "$pid"); else after="-"; fi
        st=$(cat "$TMP/idle.status")
        read -r ready failed secs errs < <(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(s["ready"], s["failed"], s["seconds"], json.dumps(s["errors"]).replace("\t"," ") or "{}")' "$st")
    else
        after="-"; ready=0; failed=$n; secs="-"; errs="idle client script gave no status"
        tail -n 20 "$OUT/raw/idle-$n-$t.txt" >&2
    fi
    touch "$TMP/idle.stop"
    for ((i = 0; i < 150; i++)); do alive "$IDLE_PID" || break; sleep 0.2; done
    stop_proc "$IDLE_PID" TERM
    IDLE_PID=""
    if ! alive "$pid"; then
        { echo "### idle test $n clients: $t died; log tail:"; tail -n 40 "$TMP/$t.log"; echo; } | tee -a "$FAILURES" >&2
    fi
    if [ "$failed" != 0 ]; then
        { echo "### idle test $n clients, $t: $failed of $n did not get ReadyForQuery: $errs"; echo "--- $t log tail:"; tail -n 20 "$TMP/$t.log"; echo; } | tee -a "$FAILURES" >&2
    fi
    stop_target "$t"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$t" "$ready" "$failed" "$before" "$after" "$secs" "$errs" >> "$IDLE"
    log "idle $n $t: ready $ready failed $failed, RSS ${before} -> ${after} kB (${secs} s to connect)"
}

for n in $BENCH_IDLE_COUNTS; do
    for t in "${TARGETS[@]}"; do
        [ "$t" = direct ] || idle_run "$n" "$t"
    done
done

# ---------------------------------------------------------------- scaling
# (a) One core for the proxy: PostgreSQL and pgbench on CPU 0, the proxy
#     (every thread) on CPU 1, pgmux with one worker. What a core serves is
#     then TPS ÷ the share of CPU 1 the proxy used.
# (b) Two pgmux workers, nothing pinned: do both carry transactions, and do
#     context switches per transaction stay where one worker has them?
pin_postgres() { # cpu-list: the postmaster and its backends (new ones inherit it)
    local p
    for p in $(pgrep -u postgres -x postgres); do taskset -a -p -c "$1" "$p" >/dev/null 2>&1; done
}
SCALING_SCEN=select-c50
if [ "$BENCH_SCALING" = 1 ]; then
    ALL_CPUS="0-$(( $(nproc) - 1 ))"
    pinned_targets=()
    for t in "${TARGETS[@]}"; do [ "$t" = direct ] || pinned_targets+=("$t"); done
    log "scaling (a): proxy pinned to CPU 1, PostgreSQL and pgbench to CPU 0"
    pin_postgres 0
    for t in "${pinned_targets[@]}"; do
        start_target "$t" "$BENCH_AUTH" 1
        taskset -a -p -c 1 "${PID[$t]}" >/dev/null
    done
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        for t in "${pinned_targets[@]}"; do
            run_pgbench "pinned-$round" "$SCALING_SCEN" "$t" "$BENCH_SECONDS" 1 taskset -c 0
        done
    done
    for t in "${pinned_targets[@]}"; do stop_target "$t"; done
    pin_postgres "$ALL_CPUS"
    if [[ " ${TARGETS[*]} " == *" pgmux-uring "* ]]; then
        log "scaling (b): pgmux with two workers beside one worker and PgBouncer, unpinned"
        two=(pgbouncer pgmux-uring pgmux-2w)
        for t in "${two[@]}"; do start_target "$t" "$BENCH_AUTH"; done
        for ((round = 1; round <= BENCH_ROUNDS; round++)); do
            for t in "${two[@]}"; do run_pgbench "workers-$round" "$SCALING_SCEN" "$t" "$BENCH_SECONDS" 1; done
        done
        for t in "${two[@]}"; do stop_target "$t"; done
    fi
fi

# ---------------------------------------------------------------- report
if [ -n "${BENCH_PGMUX_NOTE:-}" ]; then
    commit=$BENCH_PGMUX_NOTE
else
    commit="commit $(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git -C "$REPO" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        commit="$commit (working tree had uncommitted changes)"
    fi
fi
export R_CPU="$(grep -m1 'model name' /proc/cpuinfo | sed 's/^[^:]*: *//')"
export R_NPROC="$(nproc)"
export R_MEM="$(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
export R_KERNEL="$(uname -sr)"
export R_OS="$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
export R_PG="$("$PGBIN/postgres" --version)"
export R_PGB="$("$PGBOUNCER" --version 2>&1 | head -n1)"
export R_PGMUX="$("$PGMUX_BIN" --version 2>&1 | head -n1) ($PGMUX_SRC), $commit"
export R_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
export R_ELAPSED=$(( $(date +%s) - STARTED_AT ))
export R_SECONDS=$BENCH_SECONDS R_ROUNDS=$BENCH_ROUNDS R_SCALE=$BENCH_SCALE R_POOL=$BENCH_POOL_SIZE
export R_TLS=$BENCH_TLS R_AUTH=$BENCH_AUTH R_IDLE_AUTH=$BENCH_IDLE_AUTH R_CLK_TCK=$CLK_TCK R_SCENARIOS=$BENCH_SCENARIOS
export R_FAILURES=$FAILURES R_TARGETS="${TARGETS[*]}" R_WORKERS=$BENCH_PGMUX_WORKERS R_THREADS=$THREADS
if [ "$BENCH_AUTH" = scram-sha-256 ] && [ "$BENCH_PGB_SECRET" = verifier ]; then
    export R_PGB_SECRET="PgBouncer's userlist holds the SCRAM verifier from pg_authid (it logs in to PostgreSQL by reusing the client's SCRAM proof)"
else
    export R_PGB_SECRET="PgBouncer's userlist holds the plaintext password"
fi

python3 - "$RAW" "$IDLE" "$THREADS" > "$OUT/report.md" <<'PY'
import csv, os, statistics, sys

E = os.environ
raw_path, idle_path, threads_path = sys.argv[1], sys.argv[2], sys.argv[3]
clk = float(E["R_CLK_TCK"])
secs = float(E["R_SECONDS"])
DESC = {
    "select-c16": "select-only, simple, -c 16",
    "select-c50": "select-only, simple, -c 50",
    "select-c200": "select-only, simple, -c 200",
    "extended-c50": "select-only, extended (-M extended -S), -c 50",
    "prepared-c50": "select-only, prepared (-M prepared -S), -c 50",
    "tpcb-c50": "TPC-B (default script), -c 50",
    "connect-c16": "select-only, new connection per transaction (-C -S), -c 16",
}
TARGETS = E["R_TARGETS"].split()
PGMUXES = [t for t in TARGETS if t.startswith("pgmux")]
NAME = {"direct": "PostgreSQL direct", "pgbouncer": "PgBouncer",
        "pgmux-uring": "pgmux, io_uring", "pgmux-epoll": "pgmux, epoll",
        "pgmux-2w": "pgmux, io_uring, 2 workers"}

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

def kind(rnd):
    return "main" if rnd.isdigit() else rnd.split("-")[0]

runs = {}
with open(raw_path) as f:
    for r in csv.DictReader(f, delimiter="\t"):
        runs.setdefault((kind(r["round"]), r["scenario"], r["target"]), []).append(r)

def per_tx(r, col, scale=1.0):
    v, tx = num(r[col]), num(r["transactions"])
    return v * scale / tx if v is not None and tx else None

def summary(scen, t, k="main"):
    rs = runs.get((k, scen, t), [])
    good = [r for r in rs if r["status"] == "ok"]
    tps = [num(r["tps"]) for r in good]
    counted = [r for r in runs.get(("count", scen, t), []) if r["status"] == "ok"]
    busy = [num(r["proxy_cpu_ticks"]) / clk / secs for r in good if num(r["proxy_cpu_ticks"]) is not None]
    return {
        "n": len(rs), "bad": len(rs) - len(good),
        "bad_status": sorted({r["status"] for r in rs if r["status"] != "ok"}),
        "tps": med(tps), "tps_min": min(tps) if tps else None, "tps_max": max(tps) if tps else None,
        "lat": med([num(r["latency_ms"]) for r in good]),
        "cpu": med([per_tx(r, "proxy_cpu_ticks", 1e6 / clk) for r in good]),
        "cs": med([per_tx(r, "proxy_cs") for r in good]),
        "calls": med([per_tx(r, "proxy_syscalls") for r in counted]),
        "busy": med(busy),
    }

def f0(x): return "-" if x is None else f"{x:,.0f}"
def f1(x): return "-" if x is None else f"{x:.1f}"
def f2(x): return "-" if x is None else f"{x:.2f}"
def f3(x): return "-" if x is None else f"{x:.3f}"
def ratio(a, b): return a / b if a is not None and b else None
def rx(x): return "-" if x is None else f"{x:.2f}×"
def pct(x): return "-" if x is None else f"{x * 100:.0f} %"
def mark(ok): return "-" if ok is None else ("✅" if ok else "❌")
def check(x, limit, below=True):
    if x is None:
        return "-"
    return f"{rx(x)} {mark(x <= limit if below else x >= limit)}"

out = []
p = out.append
p(f"Run {E['R_DATE']}: {E['R_ROUNDS']} rounds × {E['R_SECONDS']} s per run, pgbench -j 2, scale {E['R_SCALE']}, "
  f"pool_size {E['R_POOL']} on both proxies (transaction mode), pgmux with worker_threads = {E['R_WORKERS']}. "
  f"Wall time {int(E['R_ELAPSED']) // 60} min {int(E['R_ELAPSED']) % 60} s.")
p("")
p("| Machine | |")
p("|---|---|")
p(f"| CPUs (`nproc`) | {E['R_NPROC']} |")
p(f"| CPU model | {E['R_CPU']} |")
p(f"| Memory | {E['R_MEM']} |")
p(f"| OS / kernel | {E['R_OS']} / {E['R_KERNEL']} |")
p(f"| PostgreSQL | {E['R_PG']} |")
p(f"| PgBouncer | {E['R_PGB']} |")
p(f"| pgmux | {E['R_PGMUX']} |")
p("")
p(f"Client authentication to both proxies during pgbench: **{E['R_AUTH']}** "
  f"(PostgreSQL also asks for {E['R_AUTH']}, from pgbench in the direct runs and from both proxies). "
  f"{E['R_PGB_SECRET']}; pgmux gets the plaintext password (DB_PASSWORD). "
  f"Idle-client test: **{E['R_IDLE_AUTH']}** on both proxies. Listen backlogs at their defaults: PgBouncer 128, pgmux 1024 (listen_backlog).")
p("")
if E["R_TLS"] == "1":
    p("**TLS everywhere (BENCH_TLS=1):** pgbench, psql and the idle clients with `sslmode=require`; "
      "PostgreSQL `ssl = on`; both proxies serve clients TLS (`client_tls_sslmode = require`) and reach "
      "PostgreSQL over TLS (`server_tls_sslmode = require`), with one self-signed P-256 certificate.")
    p("")
p("### Throughput, latency and what each transaction costs the proxy (medians across rounds)")
p("")
p("CPU = the proxy's utime+stime over the run (/proc/<pid>/stat) ÷ transactions; context switches = voluntary + "
  "involuntary, summed over the proxy's threads (/proc/<pid>/task/*/status) ÷ transactions; system calls = "
  "`perf stat -e raw_syscalls:sys_enter -p <pid>` over one extra counting round ÷ its transactions "
  "(kept out of the CPU and TPS figures: counting a tracepoint costs the traced process).")
p("")
p("| Scenario | Target | TPS | TPS min–max | Mean latency (ms) | TPS ÷ PgBouncer | TPS ÷ direct | CPU (µs/tx) | CPU ÷ PgBouncer | Syscalls/tx | Context switches/tx | Runs failed |")
p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
scens = E["R_SCENARIOS"].split()
S = {}
for scen in scens:
    s = {t: summary(scen, t) for t in TARGETS}
    S[scen] = s
    pgb = s.get("pgbouncer", {})
    dr = s.get("direct", {})
    for t in TARGETS:
        x = s[t]
        bad = f"{x['bad']}/{x['n']}" + (f" ({', '.join(x['bad_status'])})" if x["bad"] else "")
        proxy = t != "direct"
        p(f"| {DESC.get(scen, scen)} | {NAME[t]} | {f0(x['tps'])} | {f0(x['tps_min'])}–{f0(x['tps_max'])} | {f3(x['lat'])} | "
          f"{rx(ratio(x['tps'], pgb.get('tps')))} | {rx(ratio(x['tps'], dr.get('tps')))} | "
          f"{f1(x['cpu']) if proxy else '-'} | {rx(ratio(x['cpu'], pgb.get('cpu'))) if proxy else '-'} | "
          f"{f2(x['calls']) if proxy else '-'} | {f2(x['cs']) if proxy else '-'} | {bad} |")

if "pgbouncer" in TARGETS and PGMUXES:
    p("")
    p("### pgmux against issue 10's targets (÷ PgBouncer, same run)")
    p("")
    p("CPU ≤ 0.85× (≤ 1.00× with -C); system calls ≤ 1.00× on epoll and ≤ 0.60× on io_uring; "
      "context switches ≤ 1.00×; TPS ≥ 1.00×.")
    p("")
    p("| Scenario | pgmux | CPU | Syscalls | Context switches | TPS |")
    p("|---|---|--:|--:|--:|--:|")
    for scen in scens:
        pgb = S[scen]["pgbouncer"]
        for t in PGMUXES:
            x = S[scen][t]
            cpu_limit = 1.0 if scen.startswith("connect") else 0.85
            call_limit = 0.6 if t == "pgmux-uring" else 1.0
            p(f"| {DESC.get(scen, scen)} | {NAME[t]} | {check(ratio(x['cpu'], pgb['cpu']), cpu_limit)} | "
              f"{check(ratio(x['calls'], pgb['calls']), call_limit)} | {check(ratio(x['cs'], pgb['cs']), 1.0)} | "
              f"{check(ratio(x['tps'], pgb['tps']), 1.0, below=False)} |")

if "connect-c16" in scens and "select-c16" in scens:
    p("")
    p("### The cost of a login")
    p("")
    p("`-C -S -c 16` opens a new connection for every transaction; the login's own share is that run's figure "
      "minus the same transaction on a kept connection (`-S -c 16`).")
    p("")
    p("| Target | CPU per connect+select (µs) | of which the login (µs) | Syscalls per connect+select | of which the login | Context switches per connect+select |")
    p("|---|--:|--:|--:|--:|--:|")
    for t in TARGETS:
        if t == "direct":
            continue
        c, q = S["connect-c16"][t], S["select-c16"][t]
        login_cpu = None if c["cpu"] is None or q["cpu"] is None else c["cpu"] - q["cpu"]
        login_calls = None if c["calls"] is None or q["calls"] is None else c["calls"] - q["calls"]
        p(f"| {NAME[t]} | {f1(c['cpu'])} | {f1(login_cpu)} | {f1(c['calls'])} | {f1(login_calls)} | {f2(c['cs'])} |")

if "prepared-c50" in scens and "extended-c50" in scens and PGMUXES:
    p("")
    p("### Prepared statements in transaction mode (-S, -c 50)")
    p("")
    p("| Measure | Ratio | Target | |")
    p("|---|--:|---|---|")
    pm, ex = S["prepared-c50"], S["extended-c50"]
    if "direct" in TARGETS:
        p(f"| PostgreSQL direct: -M prepared ÷ -M extended | {rx(ratio(pm['direct']['tps'], ex['direct']['tps']))} | (what preparing is worth) | |")
    for t in PGMUXES:
        own = ratio(pm[t]["tps"], ex[t]["tps"])
        p(f"| {NAME[t]}: -M prepared ÷ its own -M extended | {rx(own)} | > 1.00× | {mark(None if own is None else own > 1.0)} |")
        if "pgbouncer" in TARGETS:
            vs = ratio(pm[t]["tps"], ex["pgbouncer"]["tps"])
            p(f"| {NAME[t]} -M prepared ÷ PgBouncer -M extended | {rx(vs)} | ≥ 1.10× | {mark(None if vs is None else vs >= 1.1)} |")
    if "pgbouncer" in TARGETS:
        pb = pm["pgbouncer"]
        p(f"| PgBouncer -M prepared: runs failed | {pb['bad']}/{pb['n']} {('(' + ', '.join(pb['bad_status']) + ')') if pb['bad'] else ''} | | |")

idle = []
if os.path.exists(idle_path):
    with open(idle_path) as f:
        idle = list(csv.DictReader(f, delimiter="\t"))
if idle:
    p("")
    p("### RSS per idle authenticated client")
    p("")
    p("(VmRSS after − VmRSS before) ÷ clients, read from /proc/<pid>/status with all clients logged in and idle; "
      "each proxy freshly started, one warm-up query through it before the baseline.")
    p("")
    p("| Idle clients | Proxy | Logged in | Time to log all in (s) | RSS before (MiB) | RSS after (MiB) | KiB per client | ÷ PgBouncer | Target ≤ 1.00× |")
    p("|--:|---|--:|--:|--:|--:|--:|--:|---|")
    per = {}
    for r in idle:
        b, a, ready = num(r["rss_before_kb"]), num(r["rss_after_kb"]), num(r["ready"])
        per[(r["clients"], r["proxy"])] = (a - b) / ready if a is not None and b is not None and ready else None
    for r in idle:
        x = per[(r["clients"], r["proxy"])]
        rr = ratio(x, per.get((r["clients"], "pgbouncer")))
        goal = "" if r["proxy"] == "pgbouncer" else mark(None if rr is None else rr <= 1.0)
        b, a = num(r["rss_before_kb"]), num(r["rss_after_kb"])
        p(f"| {int(r['clients']):,} | {NAME.get(r['proxy'], r['proxy'])} | {int(num(r['ready']) or 0):,} | "
          f"{r['seconds']} | {f1(None if b is None else b / 1024)} | {f1(None if a is None else a / 1024)} | {f2(x)} | "
          f"{'-' if r['proxy'] == 'pgbouncer' else rx(rr)} | {goal} |")

threads = {}
if os.path.exists(threads_path):
    with open(threads_path) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            threads.setdefault((kind(r["round"]), r["target"]), {}).setdefault(r["thread"], []).append(num(r["cpu_ticks"]))

pinned = {t: summary("select-c50", t, "pinned") for t in TARGETS if runs.get(("pinned", "select-c50", t))}
if pinned:
    p("")
    p("### Scaling (a): one core for the proxy")
    p("")
    p("`taskset`: PostgreSQL and pgbench on CPU 0, the proxy (all threads; pgmux with one worker) on CPU 1, "
      "`-S -c 50`. Here PostgreSQL's core is the limit, so the proxy's core is not full: what one proxy core "
      "would serve is TPS ÷ its busy share (= 1 s ÷ CPU per transaction).")
    p("")
    p("| Proxy | TPS | CPU (µs/tx) | Proxy core busy | Transactions one core serves (est.) | ÷ PgBouncer | Context switches/tx |")
    p("|---|--:|--:|--:|--:|--:|--:|")
    cap = {t: (None if x["cpu"] is None else 1e6 / x["cpu"]) for t, x in pinned.items()}
    for t, x in pinned.items():
        p(f"| {NAME[t]} | {f0(x['tps'])} | {f1(x['cpu'])} | {pct(x['busy'])} | "
          f"{f0(cap[t])} | {rx(ratio(cap[t], cap.get('pgbouncer')))} | {f2(x['cs'])} |")

workers = {t: summary("select-c50", t, "workers") for t in TARGETS + ["pgmux-2w"] if runs.get(("workers", "select-c50", t))}
if workers:
    p("")
    p("### Scaling (b): two pgmux workers")
    p("")
    p("Nothing pinned, `-S -c 50`; the two-worker pgmux beside the one-worker pgmux and PgBouncer in the same rounds. "
      "Share = each worker thread's CPU ÷ all workers' CPU.")
    p("")
    p("| Proxy | TPS | CPU (µs/tx) | Context switches/tx | Worker shares |")
    p("|---|--:|--:|--:|---|")
    for t, x in workers.items():
        ts = threads.get(("workers", t), {})
        total = sum(sum(v for v in vs if v) for vs in ts.values())
        shares = ", ".join(f"{n.replace('pgmux-worker-', 'w')} {sum(v for v in vs if v) / total * 100:.0f} %"
                           for n, vs in sorted(ts.items())) if total else "-"
        p(f"| {NAME[t]} | {f0(x['tps'])} | {f1(x['cpu'])} | {f2(x['cs'])} | {shares if t != 'pgbouncer' else '(one thread)'} |")

if pinned and pinned.get("pgbouncer") and any(pinned.get(t) for t in PGMUXES):
    p("")
    p("### What this predicts for 8 and 16 cores")
    p("")
    p("PgBouncer is one thread: one process tops out at one core, whatever the machine. pgmux runs one worker per "
      "core with nothing shared on a transaction's path, so its ceiling is cores × one core's figure (less what "
      "PostgreSQL itself needs; the figures assume the proxy gets those cores).")
    p("")
    p("| Proxy | 1 core (measured, est.) | 8 cores | 16 cores |")
    p("|---|--:|--:|--:|")
    for t, x in pinned.items():
        c = None if x["cpu"] is None else 1e6 / x["cpu"]
        many = (lambda n: c) if t == "pgbouncer" else (lambda n: None if c is None else c * n)
        p(f"| {NAME[t]} | {f0(c)} | {f0(many(8))} | {f0(many(16))} |")

fails = E.get("R_FAILURES")
if fails and os.path.exists(fails) and os.path.getsize(fails) > 0:
    p("")
    p(f"Some runs failed; details (pgbench output, proxy log tails) in `{fails}`.")
print("\n".join(out))
PY

echo
echo "=============================================================================="
cat "$OUT/report.md"
echo "=============================================================================="
log "done in $(( $(date +%s) - STARTED_AT )) s; report: $OUT/report.md"
