"""The one promotion path, for ``podium run`` at the end of a sweep and ``podium promote`` after
it: choose the winner (pure, :mod:`tracking.selection`), log its model from its checkpoint unless
that run is registered already, register it and move the alias only if it beats the champion
(:mod:`tracking.registry.promote` decides and writes), publish the sweep's reports on its parent
run."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import RunError
from orchestrator.execution.ledger import open_ledger
from orchestrator.registry.leaderboard import TrialRow, publish_sweep_reports
from orchestrator.spec.plugins import module_paths
from tracking import keys
from tracking.pipeline import ANSWER_KEY
from tracking.registry.model import log_trial_model
from tracking.registry.promote import Promotion, register_and_alias, version_of_run
from tracking.selection import Candidate, Decision, Policy, select_best, within_sweep
from tracking.store import Store
from workers import storage
from workers.recipes._run import FP32_STATE_ARTIFACT
from workers.registry import is_plugin_ref

# Where a trial's newest checkpoint is (a folder or URI); raises RunError when it has none.
CheckpointOf = Callable[[str], str]


@dataclass(frozen=True)
class Target:
    """How a sweep's winner is promoted: from the spec (``podium run``) or from the sweep's spec
    snapshot (``podium promote``)."""

    model_name: str
    alias: str
    selection_split: str  # "val": the winner is chosen on validation; "test": on test
    curves_metric: str  # the learning curves' metric (the sweep's search metric)
    tags: dict[str, str] = field(default_factory=dict)  # model-card tags (experiment, spec hash)
    enabled: bool = True


@dataclass(frozen=True)
class Concluded:
    chooser: Policy
    decision: Decision
    promotion: Promotion | None


def choose(
    candidates: list[Candidate], policy: Policy, selection_split: str
) -> tuple[Policy, Decision]:
    """The policy that picks the winner and its decision: on validation
    (:func:`tracking.selection.within_sweep`) unless ``selection_split`` is ``test``."""
    chooser = policy if selection_split == "test" else within_sweep(policy, candidates)
    return chooser, select_best(candidates, chooser)


def conclude(
    store: Store,
    parent_id: str,
    candidates: list[Candidate],
    policy: Policy,
    target: Target,
    checkpoint_of: CheckpointOf,
    rows: list[TrialRow] | None = None,
    mark: Callable[[str], None] = lambda phase: None,
) -> Concluded:
    """Choose, promote (when ``target.enabled`` and there is a winner), publish the reports.

    ``rows`` (the sweep's own table, errors included) is the plain leaderboard logged if the
    plots cannot be drawn; ``mark`` is told when the promotion ends (the run's phase timings).
    """
    chooser, decision = choose(candidates, policy, target.selection_split)
    promotion = None
    if target.enabled and decision.winner is not None:
        promotion = promote_winner(store.uri, decision, policy, target, checkpoint_of)
    mark("promote")
    champion = _champion_trial(store, candidates, decision, promotion)
    table = rows if rows is not None else [_row(c) for c in candidates]
    publish_sweep_reports(
        store, parent_id, table, candidates, chooser, champion, target.curves_metric
    )
    return Concluded(chooser, decision, promotion)


def promote_winner(
    uri: str, decision: Decision, policy: Policy, target: Target, checkpoint_of: CheckpointOf
) -> Promotion:
    """Register ``decision.winner`` (its model logged from its checkpoint first, unless its run
    is registered already: a re-run of ``podium promote`` finds its version) and give it the
    alias if it beats the champion."""
    winner = decision.winner
    assert winner is not None
    if winner.run_id is None:
        raise RunError(f"trial {winner.trial_id} has no MLflow run to promote")
    tags = {**target.tags, keys.TAG_TRIAL_ID: winner.trial_id}
    model_uri = ""
    if version_of_run(uri, target.model_name, winner.run_id) is None:
        with winner_checkpoint(winner.trial_id, checkpoint_of(winner.trial_id)) as folder:
            model_uri = log_checkpoint_model(winner.run_id, folder, uri)
            tags[keys.TAG_MEASURED] = measured_artifact(trial_of(folder))
    return register_and_alias(
        uri, model_uri, target.model_name, target.alias, winner.run_id, decision, tags, policy
    )


def _champion_trial(
    store: Store, candidates: list[Candidate], decision: Decision, promotion: Promotion | None
) -> str | None:
    """The sweep's trial that holds the alias now (the winner only if it beat the champion; the
    champion may be another sweep's, then none of these)."""
    if promotion is None:
        return None
    if promotion.promoted and decision.winner is not None:
        return decision.winner.trial_id
    if not promotion.champion_version:
        return None
    mv = store.client.get_model_version(promotion.model_name, promotion.champion_version)
    return next((c.trial_id for c in candidates if c.run_id == mv.run_id), None)


def _row(c: Candidate) -> TrialRow:
    return TrialRow(c.trial_id, c.run_id, c.status, c.metrics, c.config)


def checkpoint_in_sweep(parent_tags: dict[str, str], trial_id: str) -> str:
    """Where trial ``trial_id``'s newest checkpoint is, read back after the sweep: in the
    sweep's ledgers (every Tune folder it ran in, ``--more`` included), else the newest in its
    Tune folder.

    Raises:
        RunError: neither has one (the model was never logged and the storage is gone).
    """
    tags = parent_tags
    paths = [*json.loads(tags.get(keys.TAG_EARLIER_RAY_PATHS, "[]")), tags.get(keys.TAG_RAY_PATH)]
    for path in (p for p in paths if p):
        entry = open_ledger(path).entries().get(trial_id)
        if entry is not None and entry.checkpoint:
            return entry.checkpoint
    for path in (p for p in reversed(paths) if p):
        folders = [n for n in storage.names(path) if trial_id in n]
        for folder in (storage.join(path, f) for f in reversed(folders)):
            found = [n for n in storage.names(folder) if n.startswith("checkpoint_")]
            if found:
                return storage.join(folder, found[-1])
    raise RunError(
        f"trial {trial_id}'s model was not logged and its checkpoint is not in the sweep's "
        f"storage ({tags.get(keys.TAG_RAY_PATH)!r}) any more; re-run the sweep"
    )


@contextlib.contextmanager
def winner_checkpoint(trial_id: str, location: str) -> Iterator[Path]:
    """The winner's checkpoint at ``location`` (a folder or a URI) as a local folder, checked
    whole first: a checkpoint whose upload was cut off is never promoted.

    Raises:
        RunError: it is gone, or not whole.
    """
    from workers.trial.checkpoint import checkpoint_problem

    if not storage.exists(location):
        raise RunError(f"not promoting trial {trial_id}: its checkpoint {location} is gone")
    with storage.local_copy(location) as folder:
        why = checkpoint_problem(folder)
        if why is not None:
            raise RunError(f"not promoting trial {trial_id}: its checkpoint {location} {why}")
        yield folder


def log_checkpoint_model(run_id: str, checkpoint: str | Path, uri: str) -> str:
    """Log the model in a trial's checkpoint folder to ``run_id``; returns the model's URI.

    Everything comes from the checkpoint (weights, architecture, example inputs, the recipe's
    measured ONNX file): the driver needs neither the task's data nor the user's task module.
    """
    import torch

    from workers.trial.checkpoint import (
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
    from workers.trial.checkpoint import trial_facts

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
