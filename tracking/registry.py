"""Carries a selection decision out in the MLflow Model Registry.

The decision itself is made by :mod:`tracking.selection` (pure); this adapter logs the winner's
model to its run, registers a version under the spec's model name, points the alias (``champion``
by default) at it and tags the version with where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracking import keys
from tracking.selection import Decision


@dataclass(frozen=True)
class Promotion:
    model_name: str
    version: str
    alias: str
    run_id: str
    model_uri: str  # models:/<name>@<alias>


def log_torch_model(run_id: str, model: Any, input_example: Any, uri: str) -> str:
    """Log a PyTorch model to ``run_id`` as artifact ``model``; returns the logged model's URI.

    ``input_example`` must have batch > 1: MLflow 3 traces the model with ``torch.export`` and a
    batch of 1 would freeze the batch dimension.
    """
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(model, name=keys.MODEL_ARTIFACT, input_example=input_example)
    return info.model_uri


def register_and_alias(
    uri: str, model_uri: str, model_name: str, alias: str, run_id: str,
    decision: Decision, tags: dict[str, str] | None = None,
) -> Promotion:
    """Register ``model_uri`` as a new version of ``model_name`` and point ``alias`` at it.

    The version's description states the decision's reasons; its tags link back to the run.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_registry_uri(uri)
    try:
        client.get_registered_model(model_name)
    except Exception:  # noqa: BLE001 - RESOURCE_DOES_NOT_EXIST: create it (a race is tolerated below)
        try:
            client.create_registered_model(model_name, description="Registered by Podium.")
        except Exception:  # noqa: BLE001 - another process created it first
            pass
    all_tags = {keys.TAG_SOURCE_RUN: run_id, **(tags or {})}
    version = client.create_model_version(
        model_name, model_uri, run_id=run_id, tags=all_tags,
        description="\n".join(decision.reasons),
    )
    client.set_registered_model_alias(model_name, alias, version.version)
    return Promotion(model_name, str(version.version), alias, run_id, f"models:/{model_name}@{alias}")
