#!/usr/bin/env bash
# The Python venv of the end-to-end suite: target/pyenv with the pinned
# clients of tests/python/requirements.txt (psycopg, asyncpg, Django, pytest).
#
#   PYTHON=/path/to/python3 tests/python/setup.sh   # pick the interpreter
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
"$root/tests/pinned-venv.sh" "$root/target/pyenv" "$here/requirements.txt" >/dev/null
