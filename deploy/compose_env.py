#!/usr/bin/env python3
"""The environment that BookTrader's compose files give each service, as
`docker-compose config` resolves it (anchors, the prod override,
${VAR:-default} interpolation).

    compose_env.py env [--prod] SERVICE     # `export K='V'` lines for a shell
    compose_env.py check PGMUX_BIN          # assert the contract (deploy/check.sh)

deploy/local-stack.sh runs pgmux and the app with exactly these variables,
changing only addresses. `check` asserts what the compose files promise:
the app and pgmux share every variable but DB_HOST; DJANGO_ENV is
development, or production with the override; and the effective settings
that follow (pgmux --check-config, Django's DATABASES) are 300 s / 10 s in
development and 600 s / 30 s in production.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEV = HERE / "docker-compose.yml"
PROD = HERE / "docker-compose.prod.yml"
CONTRACT = ["DJANGO_ENV", "DB_CONN_MAX_AGE", "DB_CONNECT_TIMEOUT", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_HOST", "DB_PORT"]


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    sys.exit("compose_env.py: neither docker-compose nor `docker compose` is installed (Debian: apt-get install docker-compose)")


def config(prod: bool) -> dict:
    files = ["-f", str(DEV)] + (["-f", str(PROD)] if prod else [])
    env = dict(os.environ)
    # The prod override requires a secret key; validation needs any value.
    env.setdefault("DJANGO_SECRET_KEY", "compose-validation-not-a-secret")
    out = subprocess.run(compose_command() + files + ["config"], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"compose_env.py: `docker-compose {' '.join(files)} config` failed:\n{out.stderr}")
    return yaml.safe_load(out.stdout)


def service_env(cfg: dict, service: str) -> dict[str, str]:
    env = cfg["services"][service].get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def pgmux_settings(pgmux_bin: str, env: dict[str, str]) -> dict:
    """pgmux --check-config with the service's environment and the image's
    configuration file, parsed (TOML)."""
    import tomllib

    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")} | env
    config_file = os.environ.get("STACK_PGMUX_CONFIG", str(HERE / "pgmux.toml"))
    out = subprocess.run([pgmux_bin, "--check-config", "--config", config_file], env=run_env, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"pgmux --check-config failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return tomllib.loads(out.stdout)


def django_settings(env: dict[str, str]) -> dict:
    """The app's DATABASES['default'] under the service's environment."""
    code = (
        "import json, django; from django.conf import settings; django.setup();"
        "d = settings.DATABASES['default'];"
        "print(json.dumps({k: d[k] for k in ('HOST', 'PORT', 'NAME', 'USER', 'CONN_MAX_AGE', 'DISABLE_SERVER_SIDE_CURSORS')}"
        " | {'connect_timeout': d['OPTIONS']['connect_timeout']}))"
    )
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DJANGO_SETTINGS_MODULE": "booktrader.settings"} | env
    out = subprocess.run([sys.executable, "-B", "-c", code], cwd=HERE / "booktrader", env=run_env, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"loading BookTrader's settings failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def check(pgmux_bin: str) -> int:
    failures = 0

    def expect(what: str, ok: bool, detail: str = "") -> None:
        nonlocal failures
        print(f"  {'ok  ' if ok else 'FAIL'} {what}{'' if ok else ': ' + detail}")
        failures += not ok

    for prod, profile, lifetime, timeout in ((False, "development", 300, 10), (True, "production", 600, 30)):
        label = "dev + prod" if prod else "dev"
        print(f"compose ({label}): expecting DJANGO_ENV={profile}, lifetime {lifetime} s, connect timeout {timeout} s")
        cfg = config(prod)
        expect(f"{label}: services db, pgmux, app, prometheus", set(cfg["services"]) >= {"db", "pgmux", "app", "prometheus"}, str(set(cfg["services"])))
        app, pgmux = service_env(cfg, "app"), service_env(cfg, "pgmux")
        for name, env in (("app", app), ("pgmux", pgmux)):
            expect(f"{label}: {name} DJANGO_ENV={env.get('DJANGO_ENV')}", env.get("DJANGO_ENV") == profile, f"want {profile}")
        expect(f"{label}: app DB_HOST=pgmux", app.get("DB_HOST") == "pgmux", repr(app.get("DB_HOST")))
        expect(f"{label}: pgmux DB_HOST=db (the real PostgreSQL)", pgmux.get("DB_HOST") == "db", repr(pgmux.get("DB_HOST")))
        differ = sorted(k for k in CONTRACT if k != "DB_HOST" and app.get(k) != pgmux.get(k))
        expect(f"{label}: app and pgmux share every contract variable but DB_HOST", not differ, f"differ: {differ}")
        port = pgmux.get("PGMUX_LISTEN_ADDR", "").rsplit(":", 1)[-1]
        expect(f"{label}: pgmux listens on the app's DB_PORT ({app.get('DB_PORT')})", port == app.get("DB_PORT"), f"PGMUX_LISTEN_ADDR={pgmux.get('PGMUX_LISTEN_ADDR')!r}")
        db_check = cfg["services"]["db"].get("healthcheck", {}).get("test", [])
        expect(f"{label}: db health check is pg_isready -U postgres every 10s",
               "pg_isready -U postgres" in " ".join(db_check) and cfg["services"]["db"]["healthcheck"].get("interval") == "10s", str(db_check))
        app_check = cfg["services"]["app"].get("healthcheck", {})
        expect(f"{label}: app health check runs check --database default every 30s",
               "manage.py check --database default" in " ".join(app_check.get("test", [])) and app_check.get("interval") == "30s", str(app_check))
        expect(f"{label}: pgmux waits for a healthy db",
               cfg["services"]["pgmux"].get("depends_on", {}).get("db", {}).get("condition") == "service_healthy")
        try:
            s = pgmux_settings(pgmux_bin, pgmux)
            expect(f"{label}: pgmux --check-config server_lifetime = {s.get('server_lifetime')}", s.get("server_lifetime") == lifetime, f"want {lifetime}")
            expect(f"{label}: pgmux --check-config server_connect_timeout = {s.get('server_connect_timeout')}", s.get("server_connect_timeout") == timeout, f"want {timeout}")
            expect(f"{label}: pgmux --check-config server_host = {s.get('server_host')}", s.get("server_host") == "db")
            expect(f"{label}: pgmux --check-config admits DB_USER", pgmux["DB_USER"] in s.get("users", {}), str(s.get("users")))
            grace = cfg["services"]["pgmux"].get("stop_grace_period", "10s")
            shutdown = s.get("shutdown_timeout", 30)
            expect(f"{label}: stop_grace_period {grace} > shutdown_timeout {shutdown}",
                   grace.endswith("s") and float(grace[:-1]) > float(shutdown))
        except AssertionError as e:
            expect(f"{label}: pgmux --check-config", False, str(e))
        try:
            d = django_settings(app)
            expect(f"{label}: Django CONN_MAX_AGE = {d['CONN_MAX_AGE']}", d["CONN_MAX_AGE"] == lifetime, f"want {lifetime}")
            expect(f"{label}: Django connect_timeout = {d['connect_timeout']}", d["connect_timeout"] == timeout, f"want {timeout}")
            expect(f"{label}: Django HOST=pgmux, DISABLE_SERVER_SIDE_CURSORS", d["HOST"] == "pgmux" and d["DISABLE_SERVER_SIDE_CURSORS"], str(d))
        except AssertionError as e:
            expect(f"{label}: Django settings", False, str(e))
        if prod:
            expect(f"{label}: restart policies on every service",
                   all(s.get("restart") in ("unless-stopped", "always") for s in cfg["services"].values()))
            expect(f"{label}: resource limits on every service",
                   all(s.get("deploy", {}).get("resources", {}).get("limits") for s in cfg["services"].values()))
            expect(f"{label}: larger pool ({pgmux.get('PGMUX_POOL_SIZE')})", int(pgmux.get("PGMUX_POOL_SIZE", 0)) > 10)
    return failures


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "env":
        prod = "--prod" in argv
        service = [a for a in argv[1:] if a != "--prod"][0]
        for k, v in sorted(service_env(config(prod), service).items()):
            print(f"export {k}={shlex.quote(v)}")
        return 0
    if len(argv) == 2 and argv[0] == "check":
        return 1 if check(argv[1]) else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
