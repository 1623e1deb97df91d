"""A tiny real sweep whose recipe is a search space: local Ray, SQLite MLflow, digits. Each trial
compresses its model (structured pruning then quantization-aware int8, or static int8); MLflow
shows per-step and final compression metrics; the champion's registered ONNX file is the
compressed artifact that was measured."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import api
from orchestrator.spec import parse_spec
from tracking import keys
from tracking.store import version_source

pytestmark = pytest.mark.slow

PRUNE_QAT = [
    {"step": "prune", "method": "structured", "sparsity": 0.5, "finetune_epochs": 1},
    {"step": "quantize", "mode": "qat", "qat_epochs": 1, "calibration_batches": 2},
]
INT8_STATIC = [
    {"step": "quantize", "mode": "static", "calibration_batches": 2},
    {"step": "export", "format": "onnx"},
]
SPEC = {
    "name": "it-compress",
    "task": "digits",
    "model": {"arch": "mlp", "hidden": [64, 32]},
    "optimizer": {"name": "adam", "lr": 0.005},
    "training": {"max_epochs": 2, "batch_size": 64, "seed": 0},
    "recipe": {"grid": [PRUNE_QAT, INT8_STATIC]},
    "search": {"num_samples": 1, "scheduler": "fifo", "searcher": "grid"},
    "promotion": {"model_name": "it-compressed"},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compress")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = api.run(parse_spec(SPEC), tracking_uri=uri, verbosity=0, workdir=folder)
    return result, MlflowClient(uri, registry_uri=uri), folder


def test_every_trial_logs_where_each_gain_came_from(sweep):
    result, client, _ = sweep
    assert len(result.rows) == 2 and all(r.status == "completed" for r in result.rows), result.rows
    seen = set()
    for row in result.rows:
        m = client.get_run(row.run_id).data.metrics
        steps = (
            ("0_prune", "1_quantize")
            if "recipe.0_prune.test_accuracy" in m
            else ("0_quantize", "1_export")
        )
        seen.add(steps)
        for label in steps:
            for metric in (keys.TEST_ACCURACY, keys.MODEL_SIZE_BYTES, keys.LATENCY_MS_P50):
                assert keys.recipe_metric(label, metric) in m, (label, metric)
        baseline_p50 = keys.recipe_metric("baseline_eager", keys.LATENCY_MS_P50)
        for metric in (
            keys.SIZE_RATIO,
            keys.SPEEDUP,
            keys.LATENCY_MS_P95,
            keys.THROUGHPUT_SPS,
            keys.NONZERO_PARAMS,
            baseline_p50,
        ):
            assert metric in m, metric
        # The final model_size_bytes is the compressed ONNX file, smaller than the fp32 export.
        fp32_bytes = m[keys.recipe_metric("baseline_onnx", keys.MODEL_SIZE_BYTES)]
        assert m[keys.MODEL_SIZE_BYTES] < fp32_bytes
        assert m[keys.TEST_ACCURACY] > 0.8
    assert seen == {("0_prune", "1_quantize"), ("0_quantize", "1_export")}
    pruned = next(r for r in result.rows if "recipe.0_prune.test_accuracy" in r.metrics)
    assert (
        pruned.metrics[keys.PARAM_COUNT]
        < 0.5 * pruned.metrics[keys.recipe_metric("baseline_eager", keys.PARAM_COUNT)]
    )


def test_trial_checkpoints_hold_the_compressed_artifact(sweep):
    _, _, folder = sweep
    # The trials' checkpoints (not the registered copy in MLflow's artifact store).
    files = sorted(Path(folder).rglob(f"checkpoint_*/artifacts/{keys.ONNX_ARTIFACT}"))
    assert len(files) >= 2
    assert all((f.parent / keys.RECIPE_ARTIFACT).exists() for f in files)


def test_the_registered_champion_carries_the_measured_onnx(sweep, tmp_path):
    import mlflow

    result, client, _ = sweep
    version = client.get_model_version_by_alias("it-compressed", "champion")
    uri = client._tracking_client.tracking_uri
    local = Path(
        mlflow.artifacts.download_artifacts(
            # Resolved in this store's registry (download_artifacts alone uses the global one).
            artifact_uri=version_source(f"models:/it-compressed/{version.version}", uri),
            dst_path=str(tmp_path),
            tracking_uri=uri,
        )
    )
    onnx_file = next(local.rglob(keys.ONNX_ARTIFACT))
    assert onnx_file.stat().st_size == result.decision.winner.metrics[keys.MODEL_SIZE_BYTES]
