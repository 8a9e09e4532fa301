"""Settings of a minimal Django project that reaches PostgreSQL through pgmux.

The database settings follow BookTrader's contract, read from the
environment:

- DJANGO_ENV: "production" picks the production defaults, anything else
  (or unset) development.
- DB_NAME, DB_USER, DB_PASSWORD, DB_HOST, DB_PORT: where to connect (pgmux).
- DB_CONN_MAX_AGE: connection lifetime in seconds (300 development,
  600 production).
- DB_CONNECT_TIMEOUT: connect timeout in seconds (10 development,
  30 production).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

DJANGO_ENV = os.environ.get("DJANGO_ENV", "development")
PRODUCTION = DJANGO_ENV == "production"


def _seconds(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"{name}: expected a whole number of seconds, got {value!r}") from None


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set (see tests/python/README.md)")
    return value


SECRET_KEY = "pgmux-e2e-tests-only-not-a-secret"
DEBUG = not PRODUCTION
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "library",
]
MIDDLEWARE: list = []
ROOT_URLCONF = "e2e_site.urls"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _required("DB_NAME"),
        "USER": _required("DB_USER"),
        "PASSWORD": os.environ.get("DB_PASSWORD", ""),
        "HOST": os.environ.get("DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DB_PORT", "6432"),
        "CONN_MAX_AGE": _seconds("DB_CONN_MAX_AGE", 600 if PRODUCTION else 300),
        "CONN_HEALTH_CHECKS": True,
        # pgmux pools transactions: a named server-side cursor (DECLARE
        # outside a transaction, WITH HOLD) would outlive the transaction that
        # made it and the server it lives on.
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "OPTIONS": {
            "connect_timeout": _seconds("DB_CONNECT_TIMEOUT", 30 if PRODUCTION else 10),
            # psycopg 3 prepares a query under a name after 5 runs by
            # default; behind a transaction pooler the usual advice is not to.
            "prepare_threshold": None,
            "application_name": "pgmux-e2e-django",
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False
