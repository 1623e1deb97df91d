#!/bin/sh
# Creates MLflow's artifact bucket, Tune's bucket and the user the Ray nodes write Tune's bucket
# with (allowed that bucket only: a Ray node never holds MinIO's root keys); safe to run again.
set -eu
until mc alias set podium http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
  echo "minio-init: waiting for MinIO"; sleep 1
done
mc mb --ignore-existing "podium/$MLFLOW_BUCKET"
mc mb --ignore-existing "podium/$TUNE_BUCKET"
policy=/tmp/podium-tune-policy.json
cat >"$policy" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
     "Resource": ["arn:aws:s3:::$TUNE_BUCKET"]},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                   "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::$TUNE_BUCKET/*"]}
  ]
}
JSON
mc admin policy create podium podium-tune "$policy"
mc admin user add podium "$TUNE_S3_ACCESS_KEY" "$TUNE_S3_SECRET_KEY"
mc admin policy attach podium podium-tune --user "$TUNE_S3_ACCESS_KEY" 2>/dev/null \
  || echo "minio-init: policy podium-tune already attached to $TUNE_S3_ACCESS_KEY"
echo "minio-init: buckets $MLFLOW_BUCKET and $TUNE_BUCKET ready"
