#!/bin/bash
# Runs once, when the postgres container initializes an empty data volume
# (/docker-entrypoint-initdb.d): floq's own login role and database. The role is
# not a superuser; CREATEROLE lets `floq-api migrate` create floq's NOLOGIN roles
# (floq_app and the duty roles) and grant them to itself.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v floq_password="$FLOQ_DB_PASSWORD" <<'SQL'
CREATE ROLE floq LOGIN CREATEROLE PASSWORD :'floq_password';
CREATE DATABASE floq OWNER floq;
SQL
