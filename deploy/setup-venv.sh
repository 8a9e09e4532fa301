#!/usr/bin/env bash
# target/deploy-venv with the pins of deploy/requirements.txt: BookTrader's
# runtime (Django, psycopg, gunicorn) and kubernetes-validate. Prints the
# venv's python on stdout.
#
#   PYTHON=/path/to/python3 deploy/setup-venv.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
exec "$root/tests/pinned-venv.sh" "$root/target/deploy-venv" "$here/requirements.txt"
