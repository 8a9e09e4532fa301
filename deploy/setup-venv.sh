#!/usr/bin/env bash
# Create (or refresh) target/deploy-venv with the pinned packages of
# deploy/requirements.txt: BookTrader's runtime (Django, psycopg, gunicorn)
# and kubernetes-validate. Idempotent: when every pin is installed it only
# checks. Prints the venv's python on stdout.
#
#   PYTHON=/path/to/python3 deploy/setup-venv.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/target/deploy-venv"
python="${PYTHON:-python3}"

fail() {
  echo "deploy/setup-venv.sh: $*" >&2
  exit 1
}

command -v "$python" >/dev/null 2>&1 ||
  fail "no $python on PATH; install Python 3.10+ (Debian: apt-get install python3 python3-venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  fail "$("$python" --version 2>&1) is too old: Django 5.2 needs Python 3.10 or later"

mkdir -p "$root/target"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$root/target/deploy-venv.lock"
  flock 9
fi

# Every pin (of both requirements files) installed at exactly its version?
pins_installed() {
  "$venv/bin/python" - "$here/requirements.txt" "$here/booktrader/requirements.txt" <<'PY'
import sys
from importlib import metadata

wrong = []
for path in sys.argv[1:]:
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != version:
            wrong.append(f"{name} {have or 'missing'} (want {version})")
if wrong:
    print("; ".join(wrong), file=sys.stderr)
    sys.exit(1)
PY
}

if [ -e "$venv" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
fi

if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; } ||
        fail "could not install python3-venv"
    fi
    "$python" -c 'import ensurepip, venv' >/dev/null 2>&1 ||
      fail "$python has no venv/ensurepip module (Debian: apt-get install python3-venv)"
  fi
  "$python" -m venv "$venv" >&2 || fail "python -m venv $venv failed"
fi

if ! pins_installed 2>/dev/null; then
  echo "deploy/setup-venv.sh: installing deploy/requirements.txt into target/deploy-venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$here/requirements.txt" >&2 || fail "pip install -r deploy/requirements.txt failed"
  pins_installed || fail "after pip install the venv still does not match deploy/requirements.txt (see above)"
fi
echo "$venv/bin/python"
