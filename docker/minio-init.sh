#!/bin/sh
# Creates MLflow's artifact bucket once MinIO is up; safe to run again (--ignore-existing).
set -eu
until mc alias set podium http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
  echo "minio-init: waiting for MinIO"; sleep 1
done
mc mb --ignore-existing "podium/$MLFLOW_BUCKET"
echo "minio-init: bucket $MLFLOW_BUCKET ready"
