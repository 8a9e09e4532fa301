#!/usr/bin/env bash
# Create (or refresh) the Python venv of the end-to-end suite at
# target/pyenv and install the pinned clients of tests/python/requirements.txt
# into it. Idempotent and quiet: when every pin is already installed it only
# checks and exits. Any failure stops with a message and a non-zero status.
#
#   PYTHON=/path/to/python3 tests/python/setup.sh   # pick the interpreter
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/target/pyenv"
requirements="$here/requirements.txt"
python="${PYTHON:-python3}"

fail() {
  echo "tests/python/setup.sh: $*" >&2
  exit 1
}

command -v "$python" >/dev/null 2>&1 ||
  fail "no $python on PATH; install Python 3.10+ (Debian: apt-get install python3 python3-venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  fail "$("$python" --version 2>&1) is too old: Django 5.2 needs Python 3.10 or later"

mkdir -p "$root/target"
# Two runs at once (two checkouts sharing a target, a CI retry) must not
# build the same venv over each other.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$root/target/pyenv.lock"
  flock 9
fi

# Every pin of requirements.txt installed at exactly its version?
pins_installed() {
  "$venv/bin/python" - "$requirements" <<'PY'
import sys
from importlib import metadata

wrong = []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
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

# A venv whose interpreter no longer runs (the base Python was replaced or
# upgraded) is rebuilt from scratch.
if [ -e "$venv" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
fi

if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian splits venv/ensurepip into python3-venv.
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; } ||
        fail "could not install python3-venv"
    fi
    "$python" -c 'import ensurepip, venv' >/dev/null 2>&1 ||
      fail "$python has no venv/ensurepip module (Debian: apt-get install python3-venv)"
  fi
  "$python" -m venv "$venv" || fail "python -m venv $venv failed"
fi

if pins_installed 2>/dev/null; then
  exit 0
fi

echo "tests/python/setup.sh: installing the pinned Python clients into target/pyenv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  -r "$requirements" || fail "pip install -r tests/python/requirements.txt failed"

pins_installed || fail "after pip install the venv still does not match requirements.txt (see above)"
