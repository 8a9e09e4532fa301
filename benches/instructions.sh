#!/bin/bash
# benches/instructions.sh: user-space instructions per transaction, pgmux
# (each I/O backend) beside PgBouncer, counted by valgrind's callgrind.
#
# Wall-clock CPU on this shared 2-core machine moves by 10 % between runs;
# an instruction count does not (it moves by well under 1 %), so it shows
# what a change to pgmux's own code did, even a small one. It counts user
# space only: the kernel's side (system calls, wake-ups) is compare.sh's.
#
# Each proxy runs under callgrind twice per scenario, once for a short
# pgbench run and once for a longer one; the difference of the two totals,
# divided by the difference in transactions, is the cost of a transaction
# with start-up, logins and shutdown taken out. With -C every transaction
# is a login too, so that row is the cost of a connection and one query.
#
# Run as root (PostgreSQL and PgBouncer run as `postgres`; valgrind and
# pgbouncer are installed with apt-get if missing). Knobs:
#   BENCH_TX=400            extra transactions per client in the long run
#   BENCH_CLIENTS=16        pgbench clients (-C rows use 4)
#   BENCH_SCENARIOS="simple extended prepared tpcb connect"
#   BENCH_TARGETS="pgbouncer epoll io_uring"
#   PGMUX_BIN=path          pgmux binary (default: build target/release/pgmux)
#   BENCH_OUT=dir           where the report (instructions.md) and logs go
set -uo pipefail

BENCH_TX=${BENCH_TX:-400}
BENCH_CLIENTS=${BENCH_CLIENTS:-16}
BENCH_SCENARIOS=${BENCH_SCENARIOS:-simple extended prepared tpcb connect}
BENCH_TARGETS=${BENCH_TARGETS:-pgbouncer epoll io_uring}
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"
bench_setup instructions initdb pg_ctl pgbench psql pg_isready
PROXY=""

as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
    set +e
    [ -n "$PROXY" ] && kill -9 "$PROXY" 2>/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -m immediate -w stop >/dev/null 2>&1
    cp "$TMP"/*.log "$OUT/" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

need=()
command -v callgrind_annotate >/dev/null || need+=(valgrind)
case " $BENCH_TARGETS " in *" pgbouncer "*) command -v pgbouncer >/dev/null || need+=(pgbouncer) ;; esac
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get install -y -qq "${need[@]}" >&2 || die "apt-get install ${need[*]} failed"
fi

read -r PG_PORT PROXY_PORT < <(python3 - <<'PY'
import socket
ports = []
while len(ports) < 2:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ports.append(s.getsockname()[1]); s.close()
print(*ports)
PY
)
export PGPASSWORD=bench-secret
echo "$PGPASSWORD" > "$TMP/pwfile"
chown postgres "$TMP/pwfile"
log "PostgreSQL on $PG_PORT (SCRAM), proxies on $PROXY_PORT"
as_pg "$PGBIN/initdb" -D "$TMP/data" -U app --pwfile="$TMP/pwfile" --auth=scram-sha-256 \
    -E UTF8 --locale=C --no-sync >"$TMP/initdb.log" 2>&1 || die "initdb failed"
as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $TMP -c fsync=off -c max_connections=100" \
    start >/dev/null || die "PostgreSQL did not start"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U app -i -s 1 -q postgres >"$TMP/init.log" 2>&1 \
    || die "pgbench -i failed"
VERIFIER=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$PG_PORT" -U app -d postgres \
    -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
printf '"app" "%s"\n' "$VERIFIER" > "$TMP/userlist.txt"
cat > "$TMP/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PROXY_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 200
logfile = $TMP/pgbouncer.log
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
EOF
chown postgres:postgres "$TMP/userlist.txt" "$TMP/pgbouncer.ini"
chmod 600 "$TMP/userlist.txt"

# Start TARGET under callgrind writing to FILE; PROXY is its pid.
start_proxy() {
    local target=$1 file=$2
    if [ "$target" = pgbouncer ]; then
        runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$file" \
            pgbouncer "$TMP/pgbouncer.ini" >"$TMP/callgrind-$target.log" 2>&1 &
    else
        env -i PATH="$PATH" DB_HOST=127.0.0.1 DB_PORT="$PG_PORT" DB_USER=app DB_NAME=postgres \
            DB_PASSWORD="$PGPASSWORD" PGMUX_LISTEN_ADDR="127.0.0.1:$PROXY_PORT" \
            PGMUX_METRICS_ADDR="" PGMUX_POOL_SIZE=20 PGMUX_POOL_MODE=transaction \
            PGMUX_AUTH_TYPE=scram-sha-256 PGMUX_SERVER_TLS_SSLMODE=disable PGMUX_LOG=warn \
            PGMUX_LOG_CONNECTIONS=false PGMUX_WORKER_THREADS=1 PGMUX_IO_BACKEND="$target" \
            valgrind --tool=callgrind --callgrind-out-file="$file" "$TMP/pgmux" \
            >"$TMP/callgrind-$target.log" 2>&1 &
    fi
    PROXY=$!
    for _ in $(seq 300); do
        "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PROXY_PORT" && return 0
        sleep 0.2
    done
    die "$target did not start under valgrind (see $OUT/callgrind-$target.log)"
}

# The process valgrind runs the proxy in (PgBouncer's is runuser's child),
# and callgrind_control run as that process's user.
valgrind_pid() { [ "$1" = pgbouncer ] && pgrep -P "$PROXY" || echo "$PROXY"; }
control() {
    local target=$1
    shift
    if [ "$target" = pgbouncer ]; then
        runuser -u postgres -- callgrind_control "$@" "$(valgrind_pid "$target")" >/dev/null
    else
        callgrind_control "$@" "$PROXY" >/dev/null
    fi
}

# Killed once its counts are dumped: on io_uring, pgmux's worker does not
# see a signal while valgrind holds it in io_uring_enter.
stop_proxy() {
    kill -9 "$(valgrind_pid "$1")" 2>/dev/null
    wait "$PROXY" 2>/dev/null
    PROXY=""
}

scenario_args() {
    case $1 in
        simple) echo "-S -c $BENCH_CLIENTS" ;;
        extended) echo "-S -M extended -c $BENCH_CLIENTS" ;;
        prepared) echo "-S -M prepared -c $BENCH_CLIENTS" ;;
        tpcb) echo "-c $BENCH_CLIENTS" ;;
        connect) echo "-S -C -c 4" ;;
        *) die "unknown scenario $1" ;;
    esac
}

# Instructions per transaction of TARGET in SCENARIO: after a warm-up
# (the pool's server logins, SCRAM's key stretching among them, would
# swamp a transaction's count), two runs counted from zero, a short one and
# a long one; their difference has the runs' own client logins taken out.
# "n/a" when the target cannot run the scenario (PgBouncer before 1.21 and
# -M prepared in transaction mode).
measure() {
    local target=$1 scenario=$2 args clients file long totals=()
    args=$(scenario_args "$scenario")
    clients=$(echo "$args" | sed -E 's/.*-c ([0-9]+).*/\1/')
    long=$((50 + BENCH_TX))
    file="$TMP/cg.$target.$scenario"
    start_proxy "$target" "$file"
    for t in warm-up 50 "$long"; do
        [ "$t" = warm-up ] || control "$target" -z
        # shellcheck disable=SC2086
        if ! "$PGBIN/pgbench" -h 127.0.0.1 -p "$PROXY_PORT" -U app -n $args -j 2 \
            -t "${t/warm-up/50}" postgres >"$TMP/pgbench.$target.$scenario.$t.log" 2>&1; then
            stop_proxy "$target"
            [ "$target" = pgbouncer ] && { echo n/a; return 0; }
            die "pgbench failed against $target ($scenario)"
        fi
        [ "$t" = warm-up ] && continue
        control "$target" -d
        # The dump is written when valgrind's scheduler next runs a thread.
        for _ in $(seq 100); do [ -s "$file.$((${#totals[@]} + 1))" ] && break; sleep 0.1; done
        totals+=("$(callgrind_annotate "$file.$((${#totals[@]} + 1))" 2>/dev/null \
            | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')")
    done
    stop_proxy "$target"
    if [ -z "${totals[0]}" ] || [ -z "${totals[1]}" ]; then
        die "no callgrind totals for $target ($scenario)"
    fi
    echo $(( (totals[1] - totals[0]) / (clients * BENCH_TX) ))
}

declare -A COUNT
for scenario in $BENCH_SCENARIOS; do
    for target in $BENCH_TARGETS; do
        COUNT[$target.$scenario]=$(measure "$target" "$scenario") || exit 1
        log "$scenario: $target ${COUNT[$target.$scenario]} instructions per transaction"
    done
done

{
    echo "Instructions per transaction in user space (callgrind; start-up and logins"
    echo "subtracted, except in \`connect\`, where each transaction is a login too)."
    echo "pgbench -j 2, $BENCH_TX transactions per client measured, pool 20, SCRAM."
    echo
    printf '| scenario |'
    for target in $BENCH_TARGETS; do printf ' %s |' "$target"; done
    case " $BENCH_TARGETS " in *" pgbouncer "*)
        for target in $BENCH_TARGETS; do
            [ "$target" = pgbouncer ] || printf ' %s ÷ PgBouncer |' "$target"
        done ;;
    esac
    echo
    printf '|---|'
    for _ in $BENCH_TARGETS; do printf -- '--:|'; done
    case " $BENCH_TARGETS " in *" pgbouncer "*)
        for target in $BENCH_TARGETS; do [ "$target" = pgbouncer ] || printf -- '--:|'; done ;;
    esac
    echo
    for scenario in $BENCH_SCENARIOS; do
        # shellcheck disable=SC2016 # the backquotes are Markdown
        printf '| `%s` |' "$(scenario_args "$scenario")"
        for target in $BENCH_TARGETS; do printf ' %s |' "${COUNT[$target.$scenario]}"; done
        case " $BENCH_TARGETS " in *" pgbouncer "*)
            for target in $BENCH_TARGETS; do
                [ "$target" = pgbouncer ] && continue
                python3 -c "a, b = '${COUNT[$target.$scenario]}', '${COUNT[pgbouncer.$scenario]}'; print(' %s |' % ('%.2fx' % (int(a) / int(b)) if b.isdigit() and a.isdigit() else 'n/a'), end='')"
            done ;;
        esac
        echo
    done
} > "$OUT/instructions.md"
cat "$OUT/instructions.md"
log "report: $OUT/instructions.md"
