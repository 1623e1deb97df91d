"""A trial's checkpoint: one file, ``state.pt``, written every epoch and read back to resume, to
promote and to serve.

It is weights-only (tensors and plain containers, loadable with ``weights_only=True``): the model,
the optimizer, the schedule, the RNG, a few of the task's inputs (``example``), the raw example
and the front's ONNX bytes, and as JSON (``podium``) the manifest: the size of every other file in
the checkpoint (a finished trial's artifacts, see :func:`checkpoint_problem`), the trial's facts
(``trial``: :func:`trial_meta`), its per-epoch history and, in its last checkpoint, its final
report. Object storage writes one object per checkpoint (which appears whole or not at all); in a
folder, a copy cut short does not open (a zip file's directory comes last)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracking import keys
from tracking.pipeline import ANSWER_KEY
from workers import inputs
from workers.models import build_model
from workers.tasks import TaskData

STATE_FILE = "state.pt"
MANIFEST_KEY = "podium"
FRONT_KEY = "front_onnx"  # state.pt's copy of the task's preprocessing as ONNX
ARTIFACTS_DIR = "artifacts"  # files a recipe produced (e.g. model.onnx), logged by the driver
# Checkpoints of the layouts before this one (the manifest as manifest.json, the facts in files
# of their own) are no longer read: they hold neither the raw example nor the front that a
# champion is now composed from, so they could not be promoted as a whole pipeline anyway.


@dataclass
class TrialState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    generator: torch.Generator
    epoch: int = 0
    train_time_s: float = 0.0
    final: dict[str, Any] | None = None  # the finished trial's last report, from its checkpoint
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics so far
    replay: list[dict[str, float]] | None = None  # restored history, sent with the next report
    exploited_from: str | None = None  # "<trial>@<epoch>" of a foreign checkpoint, reported once
    # training.keep: best: the epoch with the best search.metric so far and a CPU copy of its
    # weights (None while the model's own weights are that epoch's).
    best_epoch: int = 0
    best_scores: dict[str, float] = field(default_factory=dict)  # that epoch's report
    best_weights: dict[str, torch.Tensor] | None = None


def save_checkpoint(
    state: TrialState,
    trial: dict[str, Any],
    data: TaskData,
    folder: Path,
    trial_id: str,
    final: dict[str, Any] | None = None,
) -> None:
    blob = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.epoch,
        "train_time_s": state.train_time_s,
        "generator": state.generator.get_state(),
    }
    if state.schedule is not None and hasattr(state.schedule, "state_dict"):
        blob["schedule"] = state.schedule.state_dict()
    blob["best_epoch"] = state.best_epoch  # training.keep: best; its weights where not "model"
    blob["best_scores"] = {k: float(v) for k, v in state.best_scores.items() if is_real(v)}
    if state.best_epoch and state.best_epoch != state.epoch and state.best_weights is not None:
        blob["best_model"] = state.best_weights
    # A few inputs of the task's own dtype and shape: the driver exports and logs the winner
    # from its checkpoint without loading the task (or importing the user's task module).
    blob["example"] = inputs.detached(data.example_input())
    # The registered graph's front (raw inputs to model inputs) and raw inputs for its signature.
    # In state.pt, as bytes in a uint8 tensor: a checkpoint is one file (one object to upload).
    blob["raw_example"] = data.pipeline.raw_example
    if data.pipeline.front_onnx is not None:
        blob[FRONT_KEY] = torch.frombuffer(bytearray(data.pipeline.front_onnx), dtype=torch.uint8)
    facts: dict[str, Any] = {
        "trial": trial_meta(trial, data),
        # The per-epoch metrics up to here and the trial that reported them (see keys.REPLAY).
        "history": {"trial_id": trial_id, "epochs": state.history},
    }
    if final is not None:  # the last report, kept with the last checkpoint (see run_trial)
        facts["final"] = without_replay(final)
    blob[MANIFEST_KEY] = json.dumps({"files": _files(folder), **facts})
    torch.save(blob, folder / STATE_FILE)


def _files(folder: Path) -> dict[str, int]:
    """Every file already in the checkpoint's ``folder``, with its size: Tune uploads a
    checkpoint file by file, and a copy cut off (a killed worker, a lost connection) lacks files
    or has short ones; :func:`checkpoint_problem` finds that against this list."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STATE_FILE
    }


def _manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's manifest as ``{"files": ..., "trial": ..., "history": ..., "final": ...}``
    (``files``: the others than state.pt), read from state.pt; {} if it holds none.

    Raises:
        ValueError: state.pt is not whole (a copy cut short) or is not Podium's.
        FileNotFoundError: there is no state.pt.
    """
    path = Path(folder, STATE_FILE)
    try:
        # Memory-mapped: the JSON's bytes are read, not the model's and optimizer's.
        blob = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch's reader: a short file is not a whole zip file
        raise ValueError(f"{path.name} does not load: {e}") from e
    return _manifest_inside(blob) or {}  # {}: an earlier Podium's, or not Podium's


def _manifest_inside(blob: Any) -> dict[str, Any] | None:
    """The manifest in a loaded state.pt; None if it holds none."""
    text = blob.get(MANIFEST_KEY) if isinstance(blob, dict) else None
    return dict(json.loads(text)) if isinstance(text, str) else None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why the checkpoint in ``folder`` is not whole (a cut-off upload), or None."""
    if not Path(folder, STATE_FILE).exists():
        return f"lacks {STATE_FILE} (its upload was cut off)"
    try:
        listed = _manifest(folder).get("files")
    except (OSError, ValueError) as e:
        return f"is not whole (its upload was cut off): {str(e).splitlines()[0][:200]}"
    if not isinstance(listed, dict):
        return (
            f"has no manifest in {STATE_FILE} (cut off, or written by a Podium from before the "
            "manifest moved into it: those are no longer read)"
        )
    for name, size in sorted(listed.items()):
        path = Path(folder, name)
        if not path.is_file():
            return f"lacks {name} (its upload was cut off)"
        if path.stat().st_size != size:
            return f"has {name} cut short: {path.stat().st_size} of {size} bytes"
    return None


def trial_meta(trial: dict[str, Any], data: TaskData) -> dict[str, Any]:
    """What rebuilding and serving the trial's model needs of its task, as JSON: its input shape
    and dtype, output width, problem kind, feature names and the task's saved facts (``extra``,
    e.g. a vocabulary)."""
    return {
        "trial": trial,
        "input_shape": inputs.json_shape(data.input_shape),
        "input_dtype": inputs.dtype_name(data.example_input()),
        "num_classes": data.num_classes,
        "kind": data.kind,
        "feature_names": list(data.feature_names) if data.feature_names else None,
        "extra": dict(data.extra),
        ANSWER_KEY: data.pipeline.answer,
    }


def trial_facts(folder: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's :func:`trial_meta`: the trial's spec and what its model needs of its
    task."""
    return dict(_manifest(folder)["trial"])


def load_example(folder: str | os.PathLike) -> inputs.Inputs:
    """The example inputs a trial's checkpoint holds (weights-only load): a tensor, or a tuple
    of them for a model of several inputs."""
    # Memory-mapped: only the example's bytes are read, not the model's and optimizer's.
    blob = torch.load(Path(folder, STATE_FILE), weights_only=True, map_location="cpu", mmap=True)
    return inputs.detached(blob["example"])


def load_pipeline_parts(folder: str | os.PathLike) -> tuple[Any, bytes | None]:
    """Raw example inputs (as a user has them) and the front's ONNX bytes from a checkpoint;
    ``(None, None)`` for one saved before the registered model was the whole pipeline."""
    blob = torch.load(Path(folder, STATE_FILE), weights_only=True, map_location="cpu", mmap=True)
    front = blob.get(FRONT_KEY)
    return blob.get("raw_example"), None if front is None else front.numpy().tobytes()


def restore_checkpoint(state: TrialState, checkpoint: Any, trial_id: str) -> None:
    """Continue from the last checkpoint after a worker failure or a driver restart."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        blob = torch.load(os.path.join(folder, STATE_FILE), weights_only=True, map_location="cpu")
        manifest = _manifest_inside(blob) or {}
        state.final = manifest.get("final")
        owned = manifest.get("history", {})
    if owned.get("trial_id") == trial_id:
        # Its own checkpoint. A PBT exploit restores another trial's: that trial's epochs are
        # not this run's history, so this trial's history starts again from here.
        state.history = list(owned["epochs"])
        state.replay = list(owned["epochs"])
        # training.keep: best goes on from the best epoch so far (checkpoints before it: none).
        state.best_epoch = int(blob.get("best_epoch", 0))
        state.best_scores = dict(blob.get("best_scores") or {})
        state.best_weights = blob.get("best_model")
    elif owned.get("trial_id"):
        # Another trial's best epoch is not this trial's: its best is judged from here on.
        state.exploited_from = f"{owned['trial_id']}@{int(blob['epoch'])}"
    state.model.load_state_dict(blob["model"])
    configured = [dict(g) for g in state.optimizer.param_groups]
    state.optimizer.load_state_dict(blob["optimizer"])
    if state.schedule is None:
        # The config wins over the checkpoint's hyperparameters: PBT restores a checkpoint into a
        # mutated config, and a plain resume has the same config anyway.
        for group, conf in zip(state.optimizer.param_groups, configured, strict=True):
            group.update({k: v for k, v in conf.items() if k != "params"})
    if "schedule" in blob and state.schedule is not None:
        state.schedule.load_state_dict(blob["schedule"])
    state.generator.set_state(blob["generator"])
    state.epoch = int(blob["epoch"])
    state.train_time_s = float(blob["train_time_s"])


def checkpoint_history(folder: str | os.PathLike | None) -> list[dict[str, float]]:
    """The per-epoch metrics the checkpoint in ``folder`` covers, in epoch order ([] if it has
    none)."""
    if folder is None:
        return []
    try:
        manifest = _manifest(folder)
    except (OSError, ValueError):
        return []
    return list(manifest.get("history", {}).get("epochs", []))


def load_trial_model(folder: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trial's trained model from its checkpoint folder (weights-only load).

    Returns:
        The model in eval mode and the checkpoint's metadata (``trial``, ``input_shape``,
        ``num_classes``).
    """
    folder = Path(folder)
    meta = trial_facts(folder)
    model = build_model(
        meta["trial"]["model"],
        inputs.as_shape(meta["input_shape"]),
        meta["num_classes"],
        meta.get("extra"),
    )
    # map_location: a GPU trial's checkpoint must load in a driver without a GPU.
    blob = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    model.load_state_dict(blob["model"])
    return model.eval(), meta


def is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def without_replay(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != keys.REPLAY}
