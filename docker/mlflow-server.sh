#!/bin/sh
# The team's MLflow server: PostgreSQL store, MinIO artifacts (proxied, so clients need no S3
# credentials), basic authentication on, background job workers off.
# docker-compose.yml runs it in the mlflow service; tests/integration/test_team_stack.py runs the
# same script against a local PostgreSQL (hence the overridable hosts and paths).
set -eu
: "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}" "${MLFLOW_AUTH_ADMIN_USERNAME:?}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?}" "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}"
pg_host="${POSTGRES_HOST:-postgres}"
pg_port="${POSTGRES_PORT:-5432}"
# Passwords may hold URI-reserved characters; quote them for the database URIs. The driver is
# named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the image has psycopg2.
pw=$(python -c 'import os, urllib.parse; print(urllib.parse.quote(os.environ["POSTGRES_PASSWORD"], safe=""))')
db="postgresql+psycopg2://${POSTGRES_USER}:${pw}@${pg_host}:${pg_port}"

# The auth app reads its user-store location from an ini file, not from a flag.
ini=$(mktemp "${TMPDIR:-/tmp}/podium-mlflow-auth.XXXXXX")
cat > "$ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${db}/${MLFLOW_AUTH_DB:-mlflow_auth}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$ini"
# Training jobs run on Ray, never inside the tracking server.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

exec mlflow server \
  --host "${MLFLOW_BIND:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
  --backend-store-uri "${db}/${MLFLOW_DB:-mlflow}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-s3://${MLFLOW_BUCKET:-mlflow}/}" \
  --serve-artifacts \
  --allowed-hosts "mlflow:*,localhost:*,127.0.0.1:*" \
  --app-name basic-auth
