#!/usr/bin/env bash
# Fuzz pgmux with cargo-fuzz (libFuzzer), one target or all of them.
#
#   tests/fuzz.sh TARGET SECONDS [RUNS]   run one target for SECONDS (or until
#                                         RUNS executions, if given first)
#   tests/fuzz.sh all SECONDS [RUNS]      build once, then run every target
#   tests/fuzz.sh list                    name the targets
#
# The targets are in tests/fuzz/fuzz_targets/ and what each asserts is in
# crates/pgmux/src/fuzzing/. Installs what is missing (a nightly toolchain,
# cargo-fuzz). Each run starts from the committed seeds
# (tests/fuzz/seeds/TARGET/) plus what earlier runs found on this machine
# (tests/fuzz/corpus/TARGET/, not committed). One process, one job: the
# machine's two cores are shared.
#
# Bounds, each a finding when broken (override with the variables):
#   PGMUX_FUZZ_RSS_MB=2048     peak resident memory of the fuzzing process
#                              (AddressSanitizer's own shadow included)
#   PGMUX_FUZZ_MALLOC_MB=64    any single allocation
#   PGMUX_FUZZ_TIMEOUT=10      seconds one input may run: longer is a hang
#   PGMUX_FUZZ_MAX_LEN=8192    largest input tried, in bytes
# A finding is saved under tests/fuzz/artifacts/TARGET/ and the script exits
# non-zero; replay it with
#   tests/fuzz/target/$(rustc -vV | sed -n 's/host: //p')/release/TARGET FILE
# and make it a regression test in the normal suite.
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz_dir=tests/fuzz
mapfile -t targets < <(find "$fuzz_dir/fuzz_targets" -maxdepth 1 -name '*.rs' -printf '%f\n' | sed 's/\.rs$//' | sort)

usage() {
  echo "usage: tests/fuzz.sh TARGET|all SECONDS [RUNS]   (targets: ${targets[*]})" >&2
  exit 2
}

[ "${1:-}" = list ] && { printf '%s\n' "${targets[@]}"; exit 0; }
[ $# -ge 2 ] || usage
which=$1
seconds=$2
runs=${3:--1}
if [ "$which" = all ]; then
  selected=("${targets[@]}")
else
  printf '%s\n' "${targets[@]}" | grep -qx -- "$which" || usage
  selected=("$which")
fi

rss_mb=${PGMUX_FUZZ_RSS_MB:-2048}
malloc_mb=${PGMUX_FUZZ_MALLOC_MB:-64}
timeout_s=${PGMUX_FUZZ_TIMEOUT:-10}
max_len=${PGMUX_FUZZ_MAX_LEN:-8192}

# What is missing: nightly (cargo-fuzz needs its sanitizer flags) and cargo-fuzz.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# One build for every selected target: release, with debug assertions and
# overflow checks, under AddressSanitizer (cargo-fuzz's defaults).
build_args=()
[ "$which" = all ] || build_args=("$which")
cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" "${build_args[@]}"
bin_dir="$fuzz_dir/target/$(rustc +nightly -vV | sed -n 's/host: //p')/release"

failed=()
for target in "${selected[@]}"; do
  corpus="$fuzz_dir/corpus/$target"
  artifacts="$fuzz_dir/artifacts/$target"
  seeds="$fuzz_dir/seeds/$target"
  mkdir -p "$corpus" "$artifacts" "$seeds"
  log=$(mktemp)
  echo "== fuzz $target: ${seconds}s${3:+ or $runs runs} (rss ${rss_mb} MB, malloc ${malloc_mb} MB, timeout ${timeout_s}s)"
  status=0
  # New inputs go to the first directory (the local corpus); the seeds
  # are only read.
  "$bin_dir/$target" \
    -max_total_time="$seconds" -runs="$runs" \
    -rss_limit_mb="$rss_mb" -malloc_limit_mb="$malloc_mb" \
    -timeout="$timeout_s" -max_len="$max_len" \
    -print_final_stats=1 -artifact_prefix="$artifacts/" \
    "$corpus" "$seeds" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  if [ "$status" -ne 0 ]; then
    tail -60 "$log"
    echo "fuzz $target: FAILED (exit $status) after ${execs:-?} executions; input saved in $artifacts/"
    failed+=("$target")
  else
    echo "fuzz $target: ok, ${execs:-?} executions (${rate:-?}/s), peak RSS ${rss:-?} MB, corpus $(find "$corpus" -maxdepth 1 -type f | wc -l) inputs"
  fi
  rm -f "$log"
done

echo "fuzz: $(( ${#selected[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in ${failed[*]}" >&2
  exit 1
fi
