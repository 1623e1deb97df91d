"""A model-based searcher's history, as real sweeps: warm-started from another experiment's
trials, extended by ``--more``, and carried across a SIGKILLed driver's ``--resume``.

What the searcher knew is read from the state Tune saved of it (``searcher-state-*.pkl`` in the
sweep's Tune folder): the Optuna study itself, with every trial it was told of.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from orchestrator.errors import RunError, SpecError
from orchestrator.execution._ray.state import SNAPSHOT
from orchestrator.execution.runner import run_experiment
from orchestrator.search.space import RERUN_KEY
from orchestrator.spec import parse_spec
from tests.integration.test_faults import checkpoints, podium, raw_spec, trial_runs, wait_for
from tracking import keys

pytestmark = pytest.mark.slow
SPACE = {
    "model__hidden": {"choice": [[16], [32]]},
    "optimizer__lr": {"loguniform": [0.001, 0.02]},
    "training__max_epochs": 2,
    "training__batch_size": 32,
}


def _spec(name: str, storage: Path, search: dict, **over: object):
    raw = raw_spec(name, storage, **{**SPACE, **over})
    raw["search"] = {"scheduler": "fifo", "searcher": "optuna", **search}
    return parse_spec(raw)


def _study(tune_folder: str | Path):
    """The Optuna study of the searcher state Tune saved last in ``tune_folder``."""
    # Named by the session's start: a resumed driver's file sorts last (Tune reads it so too).
    newest = max(Path(tune_folder).glob("searcher-state-*.pkl"), key=lambda p: p.name)
    return pickle.loads(newest.read_bytes())["_ot_study"]  # Optuna searcher: its __dict__


def _saved_whole(storage: Path) -> bool:
    """Tune's saved state in ``storage`` is complete: the searcher's study knows a finished
    trial, and the experiment state parses."""
    try:
        folder = next(storage.glob("optuna-resume-*"))
        states = sorted(folder.glob("experiment_state-*.json"))
        json.loads(states[-1].read_text())
        return any(t.state == TrialState.COMPLETE for t in _study(folder).trials)
    except (StopIteration, IndexError, ValueError, EOFError, OSError, pickle.UnpicklingError):
        return False


def _tune_folder(uri: str, parent: str) -> str:
    return MlflowClient(uri).get_run(parent).data.tags[keys.TAG_RAY_PATH]


def test_warm_start_seeds_the_searcher_with_the_fitting_trials_of_another_experiment(
    ray_cluster, tmp_path
):
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "storage"
    address = ray_cluster.address
    source = run_experiment(
        _spec("ws-source", storage, {"num_samples": 4}), tracking_uri=uri, address=address
    )
    assert len(source.rows) == 4 and source.failed == 0
    best_three = sorted(source.rows, key=lambda r: r.metrics["val_accuracy"])[-3:]

    warm = {"num_samples": 2, "warm_start": {"experiment": "ws-source", "top": 3}}
    target = run_experiment(_spec("ws-target", storage, warm), tracking_uri=uri, address=address)
    seeding = target.extra["seeding"]
    assert (seeding.seeded, seeding.skipped) == (3, 0)
    tag = MlflowClient(uri).get_run(target.parent_run_id).data.tags[keys.TAG_WARM_START]
    facts = {"source": "experiment 'ws-source'", "seeded": 3, "skipped": 0, "rerun": 1}
    assert json.loads(tag) == facts
    study = _study(_tune_folder(uri, target.parent_run_id))
    seeded = [t for t in study.trials if "podium_seeded_from" in t.system_attrs]
    # The three best of the source, by their observed metric, as points told to the model.
    assert {t.system_attrs["podium_seeded_from"] for t in seeded} == {r.run_id for r in best_three}
    assert sorted(t.value for t in seeded) == sorted(r.metrics["val_accuracy"] for r in best_three)
    assert len(study.trials) == 5 and len(target.rows) == 2  # seeded points are not trials
    # The best of them (rerun: 1 by default) is this sweep's first trial, trained again: its
    # model is this sweep's to promote. The sampler does not draw the others' configs again.
    best = max(seeded, key=lambda t: t.value)
    ran = [t for t in study.trials if t not in seeded]
    assert ran[0].params == best.params and ran[0].user_attrs == {RERUN_KEY: True}
    assert not any(t.params in [s.params for s in seeded] for t in ran[1:])
    # Another batch size: the source's trials measured something else, and are skipped.
    other = _spec("ws-other", storage, warm, training__batch_size=16)
    moved = run_experiment(other, tracking_uri=uri, address=address).extra["seeding"]
    assert (moved.seeded, moved.skipped) == (0, 4)


def test_warm_start_from_an_unknown_experiment_is_a_spec_error(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    warm = {"num_samples": 2, "warm_start": {"experiment": "never-ran"}}
    with pytest.raises(
        SpecError, match=r"search\.warm_start\.experiment: no experiment 'never-ran'"
    ):
        run_experiment(_spec("ws-unknown", tmp_path, warm), tracking_uri=uri)


def test_more_extends_a_finished_sweep_under_the_same_parent(ray_cluster, tmp_path):
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "storage"
    spec = _spec("extend", storage, {"num_samples": 3, "scheduler": "asha"})
    spec.promotion.enabled = True
    first = run_experiment(spec, tracking_uri=uri, address=ray_cluster.address)
    assert len(first.rows) == 3

    more = run_experiment(spec, tracking_uri=uri, address=ray_cluster.address, more=2)
    assert more.parent_run_id == first.parent_run_id
    assert more.extra["seeding"].seeded == 3
    assert len(more.rows) == 5 and {r.trial_id for r in first.rows} < {
        r.trial_id for r in more.rows
    }
    # The winner is chosen among all five, and the parent run is finished again.
    best = max(r.metrics.get("val_accuracy", 0) for r in more.rows if r.status == "completed")
    assert more.decision.winner.metrics["val_accuracy"] == best
    client = MlflowClient(uri)
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED"
    runs = trial_runs(uri, "extend")
    assert len(runs) == 5
    assert {r.data.tags[keys.TAG_PARENT_RUN] for r in runs.values()} == {first.parent_run_id}
    sweeps = client.search_runs(
        [parent.info.experiment_id], f"tags.`{keys.TAG_ROLE}` = '{keys.ROLE_SWEEP}'"
    )
    assert len(sweeps) == 1
    # The added trials were proposed by a searcher that knew the first three.
    study = _study(_tune_folder(uri, first.parent_run_id))
    assert len(study.trials) == 5
    assert sum("podium_seeded_from" in t.system_attrs for t in study.trials) == 3
    new = [t.params for t in study.trials if "podium_seeded_from" not in t.system_attrs]
    old = [t.params for t in study.trials if "podium_seeded_from" in t.system_attrs]
    assert not any(p in old for p in new)

    again = run_experiment(spec, tracking_uri=uri, address=ray_cluster.address, more=1)
    assert len(again.rows) == 6 and again.extra["seeding"].seeded == 5


def test_more_needs_a_finished_sampled_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RunError, match="nothing to extend"):
        run_experiment(_spec("never", tmp_path, {"num_samples": 2}), tracking_uri=uri, more=2)
    grid = parse_spec(raw_spec("grid-more", tmp_path))
    with pytest.raises(SpecError, match="a grid has run them"):
        run_experiment(grid, tracking_uri=uri, more=2)


def test_a_resumed_optuna_sweep_goes_on_with_its_study(ray_cluster, tmp_path):
    storage, uri = tmp_path / "storage", f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = raw_spec("optuna-resume", storage, **{**SPACE, "training__max_epochs": 5})
    raw["training"]["batch_size"] = 8  # epochs long enough to interrupt
    raw["search"] = {
        "num_samples": 4,
        "scheduler": "fifo",
        "searcher": "optuna",
        "max_concurrent": 2,
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    args = (str(spec_file), "--tracking-uri", uri, "--address", ray_cluster.address)

    first = podium("run", *args, env={}, cwd=tmp_path)
    wait_for(
        lambda: (
            sum(i == 4 for i in checkpoints(storage).values()) >= 1
            and len(checkpoints(storage)) >= 3
            and _saved_whole(storage)
        ),
        240,
        "a finished trial, a third one started, and Tune's state saved whole",
        period=0.005,
    )
    # Tune copies its state to the storage folder after a trial's checkpoints; a kill during
    # that copy leaves it empty (resume then refuses, see the next test). The kill follows a
    # whole save at once.
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    tune_folder = next(storage.glob("optuna-resume-*"))
    before = _study(tune_folder)
    told = {t.number for t in before.trials if t.state == TrialState.COMPLETE}
    assert told, "the killed driver's saved study knows a finished trial"

    second = podium("run", *args, "--resume", env={}, cwd=tmp_path)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out.decode()[-3000:]
    after = _study(tune_folder)
    # The same study went on: what it knew before the kill, plus the rest of the sweep, and
    # no fresh sampler (which would hold only the trials suggested after the resume).
    assert len(after.trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in after.trials)
    params_after = {t.number: t.params for t in after.trials}
    assert all(params_after[t.number] == t.params for t in before.trials)
    assert len(trial_runs(uri, "optuna-resume")) == 4


def test_a_cut_off_tune_state_is_put_back_from_its_snapshot_or_refused(tmp_path):
    # What a driver killed while Tune copied its state leaves: the state file, empty.
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "storage"
    spec = _spec("cut-off", storage, {"num_samples": 2})
    first = run_experiment(spec, tracking_uri=uri)
    folder = next(storage.glob("cut-off-*"))
    states = {p: p.read_bytes() for p in folder.glob("experiment_state-*.json")}
    assert states
    for state in states:
        state.write_bytes(b"")
    # Without the snapshot (a sweep of an older Podium), --resume refuses rather than restart.
    (folder / SNAPSHOT).rename(folder / "aside")
    with pytest.raises(RunError, match="Tune's saved state .* is empty"):
        run_experiment(spec, tracking_uri=uri, resume=True)
    (folder / "aside").rename(folder / SNAPSHOT)
    resumed = run_experiment(spec, tracking_uri=uri, resume=True)
    assert all(state.read_bytes() == whole for state, whole in states.items())
    assert resumed.parent_run_id == first.parent_run_id
    assert sorted(r.trial_id for r in resumed.rows) == sorted(r.trial_id for r in first.rows)
    assert len(list(folder.glob("podium_trial_*"))) == 2  # nothing ran again
