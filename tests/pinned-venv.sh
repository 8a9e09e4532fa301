#!/usr/bin/env bash
# Create (or refresh) a Python venv holding exactly the pins of a
# requirements file (following its `-r` includes). Idempotent and quiet:
# when every pin is already installed it only checks. Prints the venv's
# python on stdout; any failure stops with a message and a non-zero status.
# Used by tests/python/setup.sh and deploy/setup-venv.sh.
#
#   tests/pinned-venv.sh VENV_DIR REQUIREMENTS_FILE
#   PYTHON=/path/to/python3 ...   # pick the interpreter
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 VENV_DIR REQUIREMENTS_FILE" >&2; exit 2; }
venv="$1"
requirements="$2"
python="${PYTHON:-python3}"
me="tests/pinned-venv.sh ($(basename "$venv"))"

fail() {
  echo "$me: $*" >&2
  exit 1
}

[ -r "$requirements" ] || fail "cannot read $requirements"
command -v "$python" >/dev/null 2>&1 ||
  fail "no $python on PATH; install Python 3.10+ (Debian: apt-get install python3 python3-venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  fail "$("$python" --version 2>&1) is too old: Django 5.2 needs Python 3.10 or later"

mkdir -p "$(dirname "$venv")"
# Two runs at once (two checkouts sharing a target, a CI retry) must not
# build the same venv over each other.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$venv.lock"
  flock 9
fi

# Every pin (through -r includes) installed at exactly its version?
pins_installed() {
  "$venv/bin/python" - "$requirements" <<'PY'
import os
import sys
from importlib import metadata

def pins(path):
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            yield from pins(os.path.join(os.path.dirname(path), line[2:].strip()))
        elif line and not line.startswith("-"):
            yield line.partition("==")[::2]

wrong = []
for name, version in pins(sys.argv[1]):
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
  "$python" -m venv "$venv" >&2 || fail "python -m venv $venv failed"
fi

if ! pins_installed 2>/dev/null; then
  echo "$me: installing $requirements into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$requirements" >&2 || fail "pip install -r $requirements failed"
  pins_installed || fail "after pip install the venv still does not match $requirements (see above)"
fi
echo "$venv/bin/python"
