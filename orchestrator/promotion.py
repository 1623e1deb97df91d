"""Promotion of a sweep's winner: its model logged to its run from the checkpoint, then
registered under the spec's model name and alias (:mod:`tracking.registry` decides and writes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.errors import RunError
from orchestrator.spec import ExperimentSpec
from tracking import keys
from tracking.pipeline import ANSWER_KEY
from tracking.registry import Promotion, log_trial_model, register_and_alias
from tracking.selection import Decision


@contextlib.contextmanager
def winner_checkpoint(trial_id: str, location: str) -> Iterator[Path]:
    """The winner's checkpoint at ``location`` (a folder or a URI) as a local folder, checked
    whole first: a checkpoint whose upload was cut off is never promoted.

    Raises:
        RunError: it is gone, or not whole.
    """
    from workers import storage
    from workers.trainable import checkpoint_problem

    if not storage.exists(location):
        raise RunError(f"not promoting trial {trial_id}: its checkpoint {location} is gone")
    with storage.local_copy(location) as folder:
        why = checkpoint_problem(folder)
        if why is not None:
            raise RunError(f"not promoting trial {trial_id}: its checkpoint {location} {why}")
        yield folder


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
        keys.TAG_MEASURED: measured_artifact(trial_of(checkpoint)),
    }
    return register_and_alias(
        uri, model_uri, spec.model_name, spec.promotion.alias, winner.run_id, decision, tags, policy
    )


def log_checkpoint_model(run_id: str, checkpoint: str | Path, uri: str) -> str:
    """Log the model in a trial's checkpoint folder to ``run_id``; returns the model's URI.

    Everything comes from the checkpoint (weights, architecture, example inputs, the recipe's
    measured ONNX file): the driver needs neither the task's data nor the user's task module.
    """
    import torch

    from orchestrator.plugins import module_paths
    from workers.recipes._run import FP32_STATE_ARTIFACT
    from workers.registry import is_plugin_ref
    from workers.trainable import (
        ARTIFACTS_DIR,
        load_example,
        load_pipeline_parts,
        load_trial_model,
    )

    model, meta = load_trial_model(checkpoint)
    # batch > 1: the ONNX export keeps it dynamic; a tuple for a model of several inputs.
    loaded = load_example(checkpoint)
    example = tuple(t.numpy() for t in loaded) if isinstance(loaded, tuple) else loaded.numpy()
    onnx = Path(checkpoint, ARTIFACTS_DIR, keys.ONNX_ARTIFACT)
    section, weights = meta["trial"]["model"], model.state_dict()
    fp32 = Path(checkpoint, ARTIFACTS_DIR, FP32_STATE_ARTIFACT)
    if fp32.exists():  # a recipe pruned or distilled it: the weights that were compressed
        blob = torch.load(fp32, weights_only=True, map_location="cpu")
        section, weights = blob["model"], blob["state_dict"]
    arch = {
        "model": section,
        **{k: meta.get(k) for k in ("input_shape", "input_dtype", "num_classes", "kind")},
        "extra": meta.get("extra") or {},
    }
    plugin = [section["arch"]] if is_plugin_ref(section.get("arch")) else []
    # The whole pipeline (raw inputs to an answer); a checkpoint from before it has no answer.
    answer = meta.get(ANSWER_KEY)
    raw_example, front = load_pipeline_parts(checkpoint)
    return log_trial_model(
        run_id,
        model,
        example,
        uri,
        onnx if onnx.exists() else None,
        weights=weights,
        arch=arch,
        feature_names=meta.get("feature_names"),
        code_paths=module_paths(plugin),
        answer=answer,
        front=front,
        raw_example=raw_example,
    )


def trial_of(checkpoint: str | Path) -> dict[str, Any]:
    """The concrete trial spec a checkpoint was trained from."""
    from workers.trainable import trial_facts

    return dict(trial_facts(checkpoint)["trial"])


def measured_artifact(trial: dict[str, Any]) -> str:
    """The model card's line on what was measured and is served."""
    steps = [s.get("step") for s in trial.get("recipe") or [] if isinstance(s, dict)]
    if not steps:
        return "model.onnx: an fp32 ONNX export of the trained weights, run by ONNX Runtime"
    return (
        f"model.onnx: the file the recipe ({' -> '.join(map(str, steps))}) exported and "
        "measured (latency, size and test metrics), run by ONNX Runtime"
    )
