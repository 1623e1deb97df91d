"""Promotion of a sweep's winner: its model logged to its run from the checkpoint, then
registered under the spec's model name and alias (:mod:`tracking.registry` decides and writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.spec import ExperimentSpec
from tracking import keys
from tracking.registry import Promotion, log_torch_model, register_and_alias
from tracking.selection import Decision


def promote_trial(
    spec: ExperimentSpec, uri: str, decision: Decision, checkpoint: str, policy: Any = None
) -> Promotion:
    """Log the winner's model to its run and register it under the spec's model name and alias.

    ``checkpoint`` is the folder of the winner's newest checkpoint.
    """
    winner = decision.winner
    assert winner is not None and winner.run_id is not None
    model_uri = log_checkpoint_model(winner.run_id, checkpoint, uri)
    tags = {
        keys.TAG_SPEC_HASH: spec.spec_hash(),
        keys.TAG_EXPERIMENT: spec.name,
        keys.TAG_TRIAL_ID: winner.trial_id,
    }
    return register_and_alias(
        uri, model_uri, spec.model_name, spec.promotion.alias, winner.run_id, decision, tags, policy
    )


def log_checkpoint_model(run_id: str, checkpoint: str | Path, uri: str) -> str:
    """Log the model in a trial's checkpoint folder to ``run_id``; returns the model's URI.

    Everything comes from the checkpoint (weights, architecture, example inputs): the driver
    needs neither the task's data nor the user's task module.
    """
    from workers.trainable import ARTIFACTS_DIR, load_example, load_trial_model

    model, _ = load_trial_model(checkpoint)
    example = load_example(checkpoint).numpy()  # batch > 1: the ONNX export keeps it dynamic
    # A recipe's compressed, measured ONNX file is what serving uses; without one the registry
    # exports the fp32 model itself.
    onnx = Path(checkpoint, ARTIFACTS_DIR, keys.ONNX_ARTIFACT)
    return log_torch_model(run_id, model, example, uri, onnx if onnx.exists() else None)
