#!/bin/sh
# Runs once, on the first start of an empty PostgreSQL volume (docker-entrypoint-initdb.d).
# MLflow's tracking store uses $POSTGRES_DB (mlflow); its basic-auth user store gets its own
# database so the two schemas and their migrations never meet.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE mlflow_auth OWNER "$POSTGRES_USER";
SQL
