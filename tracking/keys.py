"""Metric, param and tag names: defined once, used by workers, tracking and the CLI.

Per-epoch metrics are logged with ``step = epoch`` (1-based); final metrics once, at the end.
Params use the dotted spec path of the value (``optimizer.lr``, ``model.dropout``).
"""

from __future__ import annotations

# Per-epoch metrics, reported to Tune and logged to MLflow with step=epoch.
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
EPOCH_METRICS = (TRAIN_LOSS, VAL_LOSS, VAL_ACCURACY)

# Final metrics, reported once when the trial finishes its budget.
TEST_ACCURACY = "test_accuracy"
PARAM_COUNT = "param_count"
NONZERO_PARAMS = "nonzero_params"
MODEL_SIZE_BYTES = "model_size_bytes"
TRAIN_TIME_S = "train_time_s"
LATENCY_MS_P50 = "latency_ms_p50"
LATENCY_MS_P95 = "latency_ms_p95"
THROUGHPUT_SPS = "throughput_sps"
ROBUST_ACCURACY = "robust_accuracy"
FINAL_METRICS = (TEST_ACCURACY, PARAM_COUNT, MODEL_SIZE_BYTES, TRAIN_TIME_S)

# A result key (not a metric) that marks the trial's last report: the final metrics are in it.
DONE = "podium_done"
# Result keys that carry where the trial ran; logged as tags, not metrics.
NODE = "podium_node"
DEVICE = "podium_device"

# Tags.
TAG_PREFIX = "podium."
TAG_TRIAL_ID = "podium.trial_id"
TAG_NODE = "podium.node"
TAG_DEVICE = "podium.device"
TAG_EXPERIMENT = "podium.experiment"
TAG_ROLE = "podium.role"  # "sweep" on the parent run, "trial" on children
TAG_SPEC_HASH = "podium.spec_hash"
TAG_STATUS = "podium.status"  # trial outcome: completed, stopped, failed
TAG_ERROR = "podium.error"
TAG_SOURCE_RUN = "podium.source_run_id"
TAG_PARENT_RUN = "mlflow.parentRunId"

# Artifacts.
SPEC_ARTIFACT = "spec.yaml"
MODEL_ARTIFACT = "model"
LEADERBOARD_ARTIFACT = "leaderboard.csv"

ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"
