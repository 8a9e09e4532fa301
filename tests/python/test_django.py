"""Django through pgmux: the project in django_app/ (settings from BookTrader's
DB_* / DJANGO_ENV variables) runs `check --database default`, `migrate` and
its own test suite (`manage.py test`, which creates and drops test_<name>
through pgmux), each as a real `manage.py` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from support import Pgmux

PROJECT = Path(__file__).resolve().parent / "django_app"


def django_env(pgmux: Pgmux, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DJANGO_"))}
    env.update(
        DB_NAME=pgmux.dbname,
        DB_USER=pgmux.user,
        DB_PASSWORD=pgmux.password,
        DB_HOST=pgmux.host,
        DB_PORT=str(pgmux.port),
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(overrides)
    return env


def manage(pgmux: Pgmux, *args: str, timeout: float = 240, **env: str) -> str:
    """Run manage.py; fail with its output unless it succeeds."""
    try:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=PROJECT,
            env=django_env(pgmux, **env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"manage.py {' '.join(args)} hung for {timeout}s; output so far:\n{e.stdout}\n{e.stderr}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"manage.py {' '.join(args)} exited {done.returncode}:\n{output}"
    return output


def settings_seen(pgmux: Pgmux, **env: str) -> dict:
    code = (
        "import json; from django.conf import settings as s; d = s.DATABASES['default']; "
        "print(json.dumps({'debug': s.DEBUG, 'conn_max_age': d['CONN_MAX_AGE'], "
        "'connect_timeout': d['OPTIONS']['connect_timeout'], 'prepare_threshold': d['OPTIONS']['prepare_threshold'], "
        "'no_server_side_cursors': d['DISABLE_SERVER_SIDE_CURSORS'], 'name': d['NAME'], 'port': d['PORT']}))"
    )
    return json.loads(manage(pgmux, "shell", "-c", code, **env).strip().splitlines()[-1])


def test_settings_follow_the_booktrader_contract(pgmux):
    dev = settings_seen(pgmux)
    assert dev == {
        "debug": True,
        "conn_max_age": 300,
        "connect_timeout": 10,
        "prepare_threshold": None,
        "no_server_side_cursors": True,
        "name": pgmux.dbname,
        "port": str(pgmux.port),
    }
    prod = settings_seen(pgmux, DJANGO_ENV="production")
    assert (prod["debug"], prod["conn_max_age"], prod["connect_timeout"]) == (False, 600, 30)
    pinned = settings_seen(pgmux, DJANGO_ENV="production", DB_CONN_MAX_AGE="42", DB_CONNECT_TIMEOUT="7")
    assert (pinned["conn_max_age"], pinned["connect_timeout"]) == (42, 7)


@pytest.mark.parametrize("django_env_name", ["development", "production"])
def test_check_database(pgmux, django_env_name):
    out = manage(pgmux, "check", "--database", "default", DJANGO_ENV=django_env_name)
    assert "System check identified no issues" in out


def test_migrate_forwards_backwards_and_forwards(pgmux):
    def tables() -> set[str]:
        with psycopg.connect(**pgmux.psycopg_kwargs(prepare_threshold=None)) as c:
            rows = c.execute("select tablename from pg_tables where schemaname = 'public'").fetchall()
        return {r[0] for r in rows}

    manage(pgmux, "makemigrations", "--check", "--dry-run")
    manage(pgmux, "migrate", "--noinput")
    assert {"library_author", "library_book", "django_migrations", "auth_user"} <= tables()
    manage(pgmux, "migrate", "library", "zero", "--noinput")
    assert "library_book" not in tables()
    out = manage(pgmux, "migrate", "--noinput", "-v", "2")
    assert "Applying library.0001_initial... OK" in out
    assert {"library_author", "library_book"} <= tables()
    plan = manage(pgmux, "showmigrations", "library")
    assert "[X] 0001_initial" in plan


def test_django_test_runner(pgmux):
    test_db = f"test_{pgmux.dbname}"
    out = manage(pgmux, "test", "--noinput", "-v", "2", DB_CONN_MAX_AGE="60")
    assert f"Creating test database for alias 'default' ('{test_db}')" in out
    assert "Ran 8 tests" in out and "\nOK" in out, out
    # ... and it dropped it again, through pgmux.
    with psycopg.connect(**pgmux.psycopg_kwargs(prepare_threshold=None)) as c:
        left = c.execute("select count(*) from pg_database where datname = %s", [test_db]).fetchone()
    assert left == (0,), f"{test_db} was not dropped:\n{out}"
