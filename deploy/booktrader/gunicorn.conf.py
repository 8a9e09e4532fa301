"""gunicorn settings for BookTrader, the same in compose and in
deploy/local-stack.sh. Threads share nothing but the process: each thread
keeps its own Django connection (CONN_MAX_AGE), which pgmux multiplexes."""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
backlog = 2048
timeout = 60
graceful_timeout = 20
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "warning")
