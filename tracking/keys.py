"""Metric, param and tag names: defined once, used by workers, tracking and the CLI.

Per-epoch metrics are logged with ``step = epoch`` (1-based); final metrics once, at the end.
Params use the dotted spec path of the value (``optimizer.lr``, ``model.dropout``).
"""

from __future__ import annotations

# Per-epoch metrics, reported to Tune and logged to MLflow with step=epoch.
EPOCH = "epoch"
# training.keep: best: the epoch whose weights a trial tested, registered and reported its val_
# metrics from (its last report's val_ values are that epoch's).
KEPT_EPOCH = "kept_epoch"
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
ROBUST_ACCURACY = "robust_accuracy"  # per epoch, on val, under the configured attack
TEST_ROBUST_ACCURACY = "test_robust_accuracy"
FINAL_METRICS = (TEST_ACCURACY, PARAM_COUNT, MODEL_SIZE_BYTES, TRAIN_TIME_S)

# A result key (not a metric) that marks the trial's last report: the final metrics are in it.
DONE = "podium_done"
# A result key holding why the trial failed (loss became NaN/inf): it ends, marked failed.
FAILED = "podium_failed"
# Result keys (strings) of a trial that ended on an error of its own code: "code" (an error
# every retry would repeat; not retried), and the traceback, logged as TAG_TRACEBACK.
ERROR_KIND = "podium_error_kind"
TRACEBACK = "podium_traceback"
# A result key on the report of a trial that hit a full disk (or a read-only, forbidden folder)
# (ERROR_KIND "storage"): tracking.faults.StorageFault.as_text(). The driver ends the sweep.
STORAGE_FAULT = "podium_storage_fault"
# A result key (not a metric) on a trial's first report after it restored its own checkpoint:
# the per-epoch metrics of every epoch that checkpoint covers. A driver killed between a
# checkpoint and MLflow receiving that epoch's metrics lost them; the driver logs the steps its
# runs lack from here (steps already logged are never logged twice).
REPLAY = "podium_replay"
# A result key (a string) on a trial's first report after it restored *another* trial's
# checkpoint (a PBT exploit): "<source trial id>@<epoch>", appended to the run's TAG_EXPLOITS.
EXPLOITED_FROM = "podium_exploited_from"
# Per-epoch metric prefix for the hyperparameters a PBT trial trained that epoch with
# (``hparam.optimizer.lr``): an exploit changes them, and the run's params keep the first ones.
HPARAM_PREFIX = "hparam."
# Result keys that carry where the trial ran; logged as tags, not metrics.
NODE = "podium_node"
DEVICE = "podium_device"
# Why that device: names the fallback when an assigned GPU/TPU could not be used.
DEVICE_REASON = "podium_device_reason"

# Tags.
TAG_PREFIX = "podium."
TAG_TRIAL_ID = "podium.trial_id"
TAG_NODE = "podium.node"
TAG_DEVICE = "podium.device"
TAG_DEVICE_REASON = "podium.device_reason"
TAG_EXPERIMENT = "podium.experiment"
TAG_ROLE = "podium.role"  # "sweep" on the parent run, "trial" on children
TAG_SPEC_HASH = "podium.spec_hash"
TAG_STATUS = "podium.status"  # trial outcome: completed, stopped, failed
TAG_ERROR = "podium.error"
# On runs a storage fault ended (tracking.faults): the fault. --resume takes the run up again,
# removing it with the failed status and error it came with.
TAG_FAULT = "podium.fault"
TAG_TRACEBACK = "podium.traceback"  # where a trial's own code raised (the last 5,000 characters)
TAG_SOURCE_RUN = "podium.source_run_id"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_EXPLOITS = "podium.exploits"  # JSON list of PBT exploits: [{"source": trial, "epoch": n}]
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces); with it, in
# the model-training view (runs, metrics, models).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
TAG_RAY_PATH = "podium.ray_experiment_path"  # where Tune keeps the sweep's state, for --resume
# JSON list: the Tune folders of a sweep's runs before its newest --more (their ledgers count too)
TAG_EARLIER_RAY_PATHS = "podium.earlier_ray_paths"
TAG_WARM_START = "podium.warm_start"  # JSON: which earlier trials seeded the searcher

# Artifacts.
SPEC_ARTIFACT = "spec.yaml"
MODEL_ARTIFACT = "model"  # the registered MLflow model: the measured ONNX file (onnx flavor)
TORCH_MODEL_ARTIFACT = (
    "model_torch"  # its PyTorch copy (pytorch flavor), where it is the same model
)
TAG_MEASURED = "podium.measured_artifact"  # the card: which file was measured, and how
LEADERBOARD_ARTIFACT = "leaderboard.csv"

ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"

# Compression recipes (workers/recipes). With a recipe, a trial's final test_accuracy,
# param_count, nonzero_params, model_size_bytes, latency_ms_* and throughput_sps describe the
# exported, compressed artifact (model.onnx run by ONNX Runtime on CPU); the uncompressed model's
# figures are under the recipe.baseline_* prefixes. Ratios are "times better" (> 1 is a gain):
SIZE_RATIO = "size_ratio"  # fp32 ONNX export bytes / final artifact bytes
SPEEDUP = "speedup"  # batch-1 p50 latency: eager fp32 torch / final artifact
SPEEDUP_VS_ONNX = "speedup_vs_onnx_fp32"  # batch-1 p50 latency: fp32 ONNX (same runtime) / final
THROUGHPUT_RATIO = "throughput_ratio"  # batch-64 samples/s: final artifact / eager fp32 torch
ACCURACY_DROP_PTS = "accuracy_drop_pts"  # (eager fp32 test_accuracy - final) * 100, points
TEST_ACCURACY_BEFORE = "test_accuracy_before"  # per step: accuracy of what the step started from
# The task's primary test metric lost to compression, in that metric's units (worse is positive:
# accuracy 0.97 -> 0.96 is 0.01, rmse 50.0 -> 51.5 is 1.5); a constraint can bound it.
METRIC_DROP = "metric_drop"


def test_metric(primary: str) -> str:
    """The test metric a recipe measures its artifacts on: ``test_<the task's primary metric>``."""
    return f"test_{primary}"


def before(metric: str) -> str:
    """Per step: ``metric`` of what the step started from (``test_accuracy_before``)."""
    return f"{metric}_before"


MEASURE_THREADS = "measure_threads"  # intra-op threads every latency/throughput figure used
COMPRESSION_METRICS = (
    SIZE_RATIO,
    SPEEDUP,
    SPEEDUP_VS_ONNX,
    THROUGHPUT_RATIO,
    ACCURACY_DROP_PTS,
    METRIC_DROP,
)
RECIPE_PREFIX = "recipe."
RECIPE_BASELINE_EAGER = "baseline_eager"  # recipe.baseline_eager.latency_ms_p50, ...
RECIPE_BASELINE_ONNX = "baseline_onnx"  # recipe.baseline_onnx.model_size_bytes, ...


def recipe_metric(label: str, metric: str) -> str:
    """Per-step metric name: ``recipe.<index>_<step>.<metric>``, e.g. ``recipe.1_quantize.
    test_accuracy`` for ``recipe[1]`` (0-based, like the spec path), or a baseline label."""
    return f"{RECIPE_PREFIX}{label}.{metric}"


CPU_MODEL = "podium_cpu_model"  # result key (a string): the CPU latency was measured on
TAG_CPU_MODEL = "podium.cpu_model"  # ... logged as this tag
ONNX_ARTIFACT = "model.onnx"  # the final compressed model: what is measured, logged, registered
ONNX_INPUT = "input"  # an exported model's input; several are input_0, input_1, ...
ONNX_OUTPUT = "logits"
MODEL_OUTPUT = "output"  # model.output: which output of a team's model holds the logits


def input_names(count: int) -> list[str]:
    """An exported model's input names: ``input`` for one tensor, ``input_0``... for several
    (the names a request to the served model uses)."""
    return [ONNX_INPUT] if count == 1 else [f"{ONNX_INPUT}_{i}" for i in range(count)]


TORCHSCRIPT_ARTIFACT = "model.torchscript.pt"
RECIPE_ARTIFACT = "recipe.json"  # the final model's arch section and how it was compressed

# Model selection, registry and serving (tracking/selection.py, registry.py, serve.py).
STATE_DICT_ARTIFACT = "state_dict.pt"  # weights only: torch.load(weights_only=True) can read it
ARCH_ARTIFACT = (
    "arch.json"  # {"model": <spec model section>, "input_shape": [...], "num_classes": n}
)
PARETO_PLOT_ARTIFACT = "pareto_front.png"  # on the parent run
PARALLEL_PLOT_ARTIFACT = "parallel_coordinates.png"
CURVES_PLOT_ARTIFACT = "learning_curves.png"
# The model card on each registered version (tags; the description repeats them for people).
TAG_SPLIT = "podium.split"  # the test split its metrics come from: "<task>:seed=<n>"
TAG_DATASET = "podium.dataset"
TAG_OPTIMIZER = "podium.optimizer"
TAG_RECIPE = "podium.recipe"  # the trial's recipe steps as JSON
TAG_RUN_LINK = "podium.run_link"
TAG_POLICY = "podium.policy"  # the promotion policy as JSON
TAG_DECISION = "podium.decision"  # why this version was (not) promoted
TAG_METRIC_PREFIX = "podium.metric."  # + final metric name: the card's metrics
# Optimizer benchmark (benchmarks/optimizers.py): when a run first reaches the target accuracy.
EPOCHS_TO_TARGET = "epochs_to_target"
TIME_TO_TARGET_S = "time_to_target_s"
