"""A trial's checkpoint carries its per-epoch metrics: a restart replays what MLflow missed."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray import tune

from tracking import keys
from workers.tasks import load_task
from workers.trial.checkpoint import (
    MANIFEST_KEY,
    STATE_FILE,
    checkpoint_history,
    checkpoint_problem,
    load_example,
    load_trial_model,
    restore_checkpoint,
    save_checkpoint,
    trial_facts,
)
from workers.trial.trainable import _with_replay, setup_trial

TRIAL = {
    "task": {"name": "digits"},
    "model": {"arch": "mlp", "hidden": [16]},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "training": {"seed": 0, "batch_size": 32, "max_epochs": 5},
}


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", 0)


def checkpointed(data, folder: Path, owner: str, epochs: int) -> tune.Checkpoint:
    state = setup_trial(TRIAL, data)
    for epoch in range(1, epochs + 1):
        state.epoch = epoch
        state.history.append({keys.EPOCH: epoch, keys.VAL_ACCURACY: epoch / 10})
    save_checkpoint(state, TRIAL, data, folder, owner)
    return tune.Checkpoint.from_directory(folder)


def test_restoring_its_own_checkpoint_replays_the_epochs_once(digits, tmp_path):
    ckpt = checkpointed(digits, tmp_path, "trial_a", epochs=3)
    state = setup_trial(TRIAL, digits)
    restore_checkpoint(state, ckpt, "trial_a")
    assert state.epoch == 3
    first = _with_replay(state, {keys.EPOCH: 4})
    assert [e[keys.EPOCH] for e in first[keys.REPLAY]] == [1, 2, 3]
    assert keys.REPLAY not in _with_replay(state, {keys.EPOCH: 5})  # only the first report
    # Later checkpoints keep the whole history, so a second restart replays it all again.
    assert [e[keys.EPOCH] for e in state.history] == [1, 2, 3]
    assert checkpoint_history(ckpt.path) == state.history


def test_another_trials_checkpoint_is_not_replayed(digits, tmp_path):
    # PBT restores a donor's checkpoint into a trial: the donor's epochs are not its history.
    ckpt = checkpointed(digits, tmp_path, "donor", epochs=2)
    state = setup_trial(TRIAL, digits)
    restore_checkpoint(state, ckpt, "recipient")
    assert state.epoch == 2  # the weights and the epoch count do carry over
    assert state.history == [] and keys.REPLAY not in _with_replay(state, {keys.EPOCH: 3})


def test_a_checkpoint_without_history_reads_as_empty(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"")
    assert checkpoint_history(tmp_path) == []
    assert checkpoint_history(None) == []


def test_a_checkpoint_is_one_file_holding_the_trials_facts(digits, tmp_path):
    """Object storage writes one object per file: one, state.pt, with the example inputs and
    the manifest (the trial's spec and history). A copy of it cut short does not load."""
    ckpt = checkpointed(digits, tmp_path, "trial_a", epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
    assert checkpoint_problem(ckpt.path) is None
    assert trial_facts(ckpt.path)["trial"] == TRIAL
    assert [e[keys.EPOCH] for e in checkpoint_history(ckpt.path)] == [1, 2]
    model, meta = load_trial_model(ckpt.path)
    example = load_example(ckpt.path)
    assert example.shape[1:] == digits.example_input().shape[1:]
    assert model(example).shape == (example.shape[0], digits.num_classes)
    whole = (tmp_path / STATE_FILE).read_bytes()
    (tmp_path / STATE_FILE).write_bytes(whole[: len(whole) - 100])
    assert (checkpoint_problem(ckpt.path) or "").startswith("is not whole")
    assert checkpoint_history(ckpt.path) == []


def test_a_checkpoint_of_an_earlier_layout_is_refused_by_name(digits, tmp_path):
    """Layouts from before the manifest moved into state.pt are no longer read (they hold no raw
    example nor front to compose a champion from): promoting one says why, a resume starts over."""
    import torch

    ckpt = checkpointed(digits, tmp_path, "trial_a", epochs=2)
    blob = torch.load(tmp_path / STATE_FILE, weights_only=True)
    del blob[MANIFEST_KEY]
    torch.save(blob, tmp_path / STATE_FILE)
    assert "written by a Podium from before the manifest" in (checkpoint_problem(ckpt.path) or "")
    assert checkpoint_history(ckpt.path) == []
