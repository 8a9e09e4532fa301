#!/usr/bin/env bash
# Run once by the postgres image on an empty data directory
# (/docker-entrypoint-initdb.d): BookTrader's own role and database, from
# the same DB_NAME / DB_USER / DB_PASSWORD the app and pgmux read.
# CREATEDB lets `manage.py test` create and drop test_<name>.
set -euo pipefail
: "${DB_NAME:?}" "${DB_USER:?}" "${DB_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres \
  -v name="$DB_NAME" -v user="$DB_USER" -v password="$DB_PASSWORD" <<'SQL'
CREATE ROLE :"user" LOGIN CREATEDB PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"user";
SQL
