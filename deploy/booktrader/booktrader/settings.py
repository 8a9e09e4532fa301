"""BookTrader settings.

The database settings read exactly BookTrader's environment contract, the
same variables pgmux reads (so one set of variables serves both):

- DJANGO_ENV: "production" selects the production defaults; anything else,
  or unset, development.
- DB_CONN_MAX_AGE: connection lifetime in seconds (300 development,
  600 production).
- DB_CONNECT_TIMEOUT: connect timeout in seconds (10 development,
  30 production).
- DB_NAME, DB_USER, DB_PASSWORD, DB_HOST, DB_PORT: where to connect. With
  pgmux in front, DB_HOST names pgmux (the compose service, or 127.0.0.1 for
  a Kubernetes sidecar) and nothing else changes.

The rest is ordinary Django: DJANGO_SECRET_KEY (required in production),
DJANGO_ALLOWED_HOSTS (comma-separated).
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


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise RuntimeError("DJANGO_SECRET_KEY must be set when DJANGO_ENV=production")
    SECRET_KEY = "booktrader-development-only-not-a-secret"
DEBUG = not PRODUCTION
ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,app").split(",") if h.strip()
]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "trading",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "booktrader.urls"
WSGI_APPLICATION = "booktrader.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("DB_NAME", "booktrader"),
        "USER": os.environ.get("DB_USER", "booktrader"),
        "PASSWORD": os.environ.get("DB_PASSWORD", ""),
        "HOST": os.environ.get("DB_HOST", "localhost"),
        "PORT": os.environ.get("DB_PORT", "5432"),
        "CONN_MAX_AGE": _seconds("DB_CONN_MAX_AGE", 600 if PRODUCTION else 300),
        # A persistent connection is checked before reuse, so a pgmux restart
        # costs a request nothing.
        "CONN_HEALTH_CHECKS": True,
        # pgmux pools transactions: a named server-side cursor (what
        # .iterator() uses by default) would outlive the transaction that
        # made it and the server it lives on.
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "OPTIONS": {
            "connect_timeout": _seconds("DB_CONNECT_TIMEOUT", 30 if PRODUCTION else 10),
            "application_name": "booktrader",
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
