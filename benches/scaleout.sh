#!/bin/bash
# benches/scaleout.sh: issue 13's two figures, on loopback.
#
#   1. Failover: a primary and a `pg_basebackup -R` standby behind one pgmux
#      (`server_host` lists both, `target_session_attrs = read-write`). A
#      writer inserts through pgmux every 20 ms, each insert on a new
#      connection (psql); the primary is stopped (`-m immediate`, as a crash)
#      and the standby promoted (`pg_ctl promote -w`). Reported: from the
#      primary's end to the promotion's, and to the first write pgmux served
#      that began after the primary was gone (no restart, no configuration
#      change); the writer's resolution is one psql run plus 20 ms.
#   2. Peering: two pgmux instances peered (`peer_id`, `[peers]`), a client
#      logged in to A, and BENCH_CANCELS cancel requests for its key sent to
#      B (which forwards each to A) and as many sent to A directly. Reported:
#      proxy CPU (utime+stime) per cancel on A and B, both ways, so the cost
#      of forwarding is the difference.
#
# Run as root (the servers run as `postgres`). Knobs:
#   BENCH_CANCELS=10000     cancel requests per way
#   PGMUX_BIN=path          pgmux binary (default: build target/release/pgmux)
#   BENCH_OUT=dir           where the report and logs are kept
set -uo pipefail

BENCH_CANCELS=${BENCH_CANCELS:-10000}
# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"
bench_setup scaleout initdb pg_ctl pg_basebackup psql
PIDS=()

as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for d in primary standby; do
        [ -d "$TMP/$d" ] && as_pg "$PGBIN/pg_ctl" -D "$TMP/$d" -m immediate -w stop >/dev/null 2>&1
    done
    cp "$TMP"/*.log "$OUT/" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

read -r P S A B < <(python3 - <<'PY'
import socket
ports = []
while len(ports) < 4:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ports.append(s.getsockname()[1]); s.close()
print(*ports)
PY
)
opts() { echo "-c listen_addresses=127.0.0.1 -p $1 -k $TMP -c fsync=off -c wal_level=replica -c max_wal_senders=4 -c hot_standby=on"; }
psql_at() { "$PGBIN/psql" -X -At -h 127.0.0.1 -p "$1" -U postgres -d "${3:-postgres}" -c "$2"; }
ms_now() { date +%s%3N; }

log "primary on $P, standby on $S"
as_pg "$PGBIN/initdb" -D "$TMP/primary" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >/dev/null || die initdb
echo "host replication all 127.0.0.1/32 trust" >> "$TMP/primary/pg_hba.conf"
as_pg "$PGBIN/pg_ctl" -D "$TMP/primary" -l "$TMP/primary.log" -o "$(opts "$P")" -w start >/dev/null || die "primary start"
psql_at "$P" "CREATE ROLE app LOGIN" >/dev/null || die "create role"
psql_at "$P" "CREATE DATABASE app OWNER app" >/dev/null || die "create database"
as_pg "$PGBIN/pg_basebackup" -D "$TMP/standby" -R -c fast -X stream -h 127.0.0.1 -p "$P" -U postgres || die basebackup
as_pg "$PGBIN/pg_ctl" -D "$TMP/standby" -l "$TMP/standby.log" -o "$(opts "$S")" -w start >/dev/null || die "standby start"

start_pgmux() { # port peer_id log [extra env...]
    local port=$1 id=$2 name=$3
    shift 3
    env -i PATH="$PATH" DB_HOST="127.0.0.1:$P,127.0.0.1:$S" DB_USER=app DB_NAME=app \
        PGMUX_LISTEN_ADDR="127.0.0.1:$port" PGMUX_METRICS_ADDR="" PGMUX_AUTH_TYPE=trust \
        PGMUX_TARGET_SESSION_ATTRS=read-write PGMUX_SERVER_CONNECT_TIMEOUT=2 \
        PGMUX_SERVER_TLS_SSLMODE=disable PGMUX_LOG=warn PGMUX_WORKER_THREADS=1 \
        PGMUX_PEER_ID="$id" "$@" "$TMP/pgmux" >"$TMP/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" && return 0; sleep 0.1; done
    die "pgmux $name did not start (see $TMP/$name.log)"
}

# ---------------------------------------------------------------- peering
# Written to the config file each instance reads: [peers] is a table.
cat > "$TMP/peers.toml" <<EOF
[peers.1]
host = "127.0.0.1"
port = $A
[peers.2]
host = "127.0.0.1"
port = $B
EOF
start_pgmux "$A" 1 pgmux-a PGMUX_CONFIG="$TMP/peers.toml"
start_pgmux "$B" 2 pgmux-b PGMUX_CONFIG="$TMP/peers.toml"
PID_A=${PIDS[0]} PID_B=${PIDS[1]}
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
cancels() { # port: log in to A, send BENCH_CANCELS cancels for that key to port
    python3 - "$A" "$1" "$BENCH_CANCELS" <<'PY'
import socket, struct, sys
a, to, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = socket.create_connection(("127.0.0.1", a))
body = b"user\0app\0database\0app\0\0"
c.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
buf = b""
while b"Z\0\0\0\5" not in buf:
    chunk = c.recv(4096)
    if not chunk:
        sys.exit("login refused")
    buf += chunk
i = buf.index(b"K\0\0\0\x0c")
pid, key = struct.unpack("!II", buf[i + 5:i + 13])
packet = struct.pack("!iiII", 16, 80877102, pid, key)
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", to))
    s.sendall(packet)
    while s.recv(64):
        pass
    s.close()
PY
}
declare -A CPU
for way in direct forwarded; do
    port=$A; [ "$way" = forwarded ] && port=$B
    a0=$(ticks "$PID_A"); b0=$(ticks "$PID_B")
    cancels "$port" || die "cancel client failed"
    a1=$(ticks "$PID_A"); b1=$(ticks "$PID_B")
    CPU[$way]="$((a1 - a0)) $((b1 - b0))"
    log "$way: ticks A $((a1 - a0)), B $((b1 - b0)) for $BENCH_CANCELS cancels"
done
kill "$PID_A" "$PID_B"; wait "$PID_A" "$PID_B" 2>/dev/null; PIDS=()

# ---------------------------------------------------------------- failover
start_pgmux "$A" 0 pgmux-failover
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "$A" -U app -d app -c "create table t (at bigint)" || die "create table"
: > "$TMP/writes.log"
(
    # Each line: when the write began, when it ended, and how.
    while [ ! -e "$TMP/stop-writer" ]; do
        began=$(ms_now)
        if "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$A" -U app -d app \
            -c "insert into t values ($began)" >/dev/null 2>&1; then
            echo "$began $(ms_now) ok" >> "$TMP/writes.log"
        else
            echo "$began $(ms_now) fail" >> "$TMP/writes.log"
        fi
        sleep 0.02
    done
) &
WRITER=$!
sleep 2
as_pg "$PGBIN/pg_ctl" -D "$TMP/primary" -m immediate -w stop >/dev/null || die "stop primary"
# The primary is gone once its stop returned: writes that began before may
# still have reached it.
T_DOWN=$(ms_now)
as_pg "$PGBIN/pg_ctl" -D "$TMP/standby" -w promote >/dev/null || die promote
T_PROMOTED=$(ms_now)
first_ok() { awk -v t="$T_DOWN" '$1 >= t && $3 == "ok" {print $2; exit}' "$TMP/writes.log"; }
for _ in $(seq 300); do
    [ -n "$(first_ok)" ] && break
    sleep 0.1
done
touch "$TMP/stop-writer"; wait "$WRITER"
T_FIRST=$(first_ok)
FAILED=$(awk -v t="$T_DOWN" '$1 >= t && $3 == "fail"' "$TMP/writes.log" | wc -l)
[ -n "$T_FIRST" ] || die "no write succeeded after the promotion (see $OUT/writes.log)"
cp "$TMP/writes.log" "$OUT/"

read -r da db <<<"${CPU[direct]}"
read -r fa fb <<<"${CPU[forwarded]}"
HZ=$(getconf CLK_TCK)
us() { python3 -c "print(f'{$1 / $HZ * 1e6 / $BENCH_CANCELS:.1f}')"; }
{
    echo "### Failover and peering ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null), $(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "| Failover (one run) | ms |"
    echo "|---|--:|"
    echo "| primary down (its stop returned) → \`pg_ctl promote -w\` returned | $((T_PROMOTED - T_DOWN)) |"
    echo "| primary down → first write served through pgmux ($FAILED writes failed meanwhile) | $((T_FIRST - T_DOWN)) |"
    echo
    echo "| $BENCH_CANCELS cancel requests | CPU on A (µs per cancel) | CPU on B (µs per cancel) |"
    echo "|---|--:|--:|"
    echo "| sent to A, which holds the session | $(us "$da") | $(us "$db") |"
    echo "| sent to B, forwarded to A | $(us "$fa") | $(us "$fb") |"
} | tee "$OUT/report.md"
log "report: $OUT/report.md"
