# shellcheck shell=bash
# benches/common.sh: what the bench scripts share, sourced by them (not run).
#
#   bench_setup NAME TOOL...  root check, PostgreSQL's TOOLs found in PGBIN,
#                             PGMUX_BIN built or checked; OUT (BENCH_OUT or a
#                             new /tmp/pgmux-NAME.*) and TMP (owned by
#                             postgres, with a copy of the binary as
#                             $TMP/pgmux, so a later build cannot swap it)
#   log MESSAGE, die MESSAGE  timestamped to stderr; die exits 1

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

bench_setup() {
    local name=$1 tool
    shift
    [ "$(id -u)" = 0 ] || die "run as root (the servers run as the postgres user)"
    PGBIN=$(pg_config --bindir 2>/dev/null || find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1)
    for tool in "$@"; do
        [ -x "$PGBIN/$tool" ] || die "$PGBIN/$tool not found (apt-get install postgresql)"
    done
    if [ -z "${PGMUX_BIN:-}" ]; then
        (cd "$REPO" && cargo build --release -p pgmux --bin pgmux >&2) || die "cargo build failed"
        PGMUX_BIN=$REPO/target/release/pgmux
    fi
    [ -x "$PGMUX_BIN" ] || die "$PGMUX_BIN is not executable"
    OUT=${BENCH_OUT:-$(mktemp -d "/tmp/pgmux-$name.XXXXXX")}
    mkdir -p "$OUT"
    TMP=$(mktemp -d "/tmp/pgmux-$name-run.XXXXXX")
    chown postgres:postgres "$TMP"
    cp "$PGMUX_BIN" "$TMP/pgmux"
}
