#!/usr/bin/env bash
# The deployment proofs, for CI (called from .ci/run) and by hand
# (make deploy-check). No container engine is needed:
#
#  static   docker-compose config on the dev file and on dev + prod, with the
#           effective environment asserted (compose_env.py check); the
#           image's pgmux.toml and the k8s ConfigMap through
#           `pgmux --check-config`; the Kubernetes manifests with
#           kubernetes-validate --strict plus the shutdown-budget rules;
#           promtool on prometheus.yml and its rules; the Grafana
#           dashboard's JSON and PromQL; the Dockerfiles; shellcheck on
#           deploy/ and tests/*.sh
#  e2e      deploy/local-stack.sh test, development then production: the
#           compose topology as processes, BookTrader driven through pgmux
#           (deploy/e2e.py)
#
#   deploy/check.sh            # everything
#   deploy/check.sh static     # only the static checks
#
# Installs what is missing (Debian packages as root, the Python venv in
# target/deploy-venv). pgmux: $PGMUX_BIN, else the newer of
# target/release/pgmux and target/debug/pgmux, else `cargo build --release`.
# Ends with `deploy/check.sh: N passed, N failed`.
set -uo pipefail
export PYTHONDONTWRITEBYTECODE=1

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root" || exit 1
what="${1:-all}"
passed=0
failed=0
failures=()

section() { printf '\n== deploy/check.sh: %s\n' "$*"; }
# run NAME COMMAND...: run it, show its output, count it.
run() {
  local name="$1"
  shift
  echo "-- $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    echo "-- FAILED: $name"
    failed=$((failed + 1))
    failures+=("$name")
  fi
}
die() {
  echo "deploy/check.sh: $*" >&2
  exit 1
}

# --- tools --------------------------------------------------------------
section "tools"
missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
{ command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; } || missing+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; } ||
    die "apt-get install ${missing[*]} failed"
fi
python="$("$here/setup-venv.sh")" || die "deploy/setup-venv.sh failed"

pgmux_bin="${PGMUX_BIN:-}"
if [ -z "$pgmux_bin" ]; then
  for candidate in "$root/target/release/pgmux" "$root/target/debug/pgmux"; do
    [ -x "$candidate" ] || continue
    if [ -z "$pgmux_bin" ] || [ "$candidate" -nt "$pgmux_bin" ]; then
      pgmux_bin="$candidate"
    fi
  done
fi
if [ -z "$pgmux_bin" ]; then
  echo "no pgmux binary yet: cargo build --release -p pgmux"
  cargo build --release --locked -p pgmux --bin pgmux || die "cargo build failed"
  pgmux_bin="$root/target/release/pgmux"
fi
[ -x "$pgmux_bin" ] || die "PGMUX_BIN=$pgmux_bin is not an executable"
export PGMUX_BIN="$pgmux_bin"
echo "pgmux: $pgmux_bin; $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /'); $(promtool --version 2>&1 | head -n 1); shellcheck $(shellcheck --version | sed -n 's/^version: //p')"

# --- static -------------------------------------------------------------
section "compose: docker-compose config, dev and dev + prod, effective environment"
run "compose files and their environment" "$python" "$here/compose_env.py" check "$pgmux_bin"

section "pgmux configuration files through pgmux --check-config"
config_ok() {
  local file="$1" out
  if out="$(env -i PATH="$PATH" "$pgmux_bin" --check-config --config "$file" 2>&1)"; then
    grep -E '^(listen_addr|metrics_addr|pool_size|shutdown_timeout) ' <<<"$out" | tr '\n' ' '
    echo
  else
    echo "$out"
    return 1
  fi
}
run "deploy/pgmux.toml (the image's config)" config_ok "$here/pgmux.toml"
run "deploy/pgmux-tls.toml (TLS to a managed database)" config_ok "$here/pgmux-tls.toml"
k8s_toml="$(mktemp)"
trap 'rm -f "$k8s_toml"' EXIT
"$python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["pgmux.toml"])' \
  "$here/k8s/common/pgmux-config.yaml" >"$k8s_toml"
run "deploy/k8s/common/pgmux-config.yaml (the ConfigMap's pgmux.toml)" config_ok "$k8s_toml"
"$python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["pgmux.toml"])' \
  "$here/k8s/peered/pgmux-peered-config.yaml" >"$k8s_toml"
run "deploy/k8s/peered/pgmux-peered-config.yaml (peers listed)" config_ok "$k8s_toml"

section "Kubernetes manifests"
mapfile -t manifests < <(find "$here/k8s" -name '*.yaml' | sort)
run "kubernetes-validate --strict (${#manifests[@]} files)" \
  "$(dirname "$python")/kubernetes-validate" --strict --quiet "${manifests[@]}"
run "probes, scrape annotations, shutdown budget, peer list against pod names" "$python" "$here/static_checks.py" k8s "${manifests[@]}"

section "Prometheus and Grafana"
run "promtool check config deploy/prometheus.yml (with its rules)" promtool check config "$here/prometheus.yml"
run "grafana/pgmux-dashboard.json: JSON, and every PromQL expression parses" "$python" "$here/static_checks.py" dashboard

section "Dockerfiles"
run "deploy/Dockerfile and deploy/booktrader/Dockerfile" "$python" "$here/static_checks.py" dockerfiles

section "shellcheck"
mapfile -t scripts < <({ find "$here" -name '*.sh' -not -path '*/target/*'; ls "$root"/tests/*.sh; } | sort)
run "shellcheck (${#scripts[@]} scripts)" shellcheck "${scripts[@]}"

# --- e2e ----------------------------------------------------------------
if [ "$what" != static ]; then
  section "end to end: deploy/local-stack.sh test (development)"
  run "local stack, development" "$here/local-stack.sh" test
  section "end to end: deploy/local-stack.sh test --prod (DJANGO_ENV=production)"
  run "local stack, production" "$here/local-stack.sh" test --prod
fi

echo
if [ "$failed" -gt 0 ]; then
  echo "deploy/check.sh: failed:"
  printf '  - %s\n' "${failures[@]}"
fi
echo "deploy/check.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
