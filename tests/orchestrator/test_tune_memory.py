"""Ray Tune lets go of every terminated trial; the ledger has what the end of the sweep needs.

The sweep tests run a real Tune on a local Ray with a tiny function trainable (no MLflow): what
is checked is what Tune itself still holds, in memory and in its saved experiment state.
"""

from __future__ import annotations

import gc
import json
import tempfile
import weakref
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from orchestrator.execution._ray.memory import (
    ForgetFinishedTrials,
    SilentTrialProgress,
    forget_statistics,
)
from orchestrator.execution.ledger import LEDGER_FILE, TrialLedger

TRIALS = 12


def _trial_with_history(epochs: int) -> Trial:
    trial = Trial("podium_trial", stub=True)
    for epoch in range(1, epochs + 1):
        trial.update_last_result(
            {"val_accuracy": epoch / epochs, "train_loss": 1 / epoch, "epoch": epoch}
        )
    return trial


def test_forgetting_statistics_keeps_the_last_result_and_shrinks_the_saved_state():
    trial = _trial_with_history(10)
    before = len(trial.run_metadata.get_json_state())
    assert "val_accuracy" in trial.metric_analysis
    forget_statistics(trial)
    assert trial.metric_analysis == {} and trial.metric_n_steps == {}
    assert trial.last_result["val_accuracy"] == 1.0  # what selection and the leaderboard read
    after = len(trial.run_metadata.get_json_state())  # the cached JSON was rebuilt
    assert after < before / 2


def test_without_a_ledger_ended_trials_only_lose_their_statistics():
    done, failed = _trial_with_history(3), _trial_with_history(3)
    callback = ForgetFinishedTrials()
    callback.on_trial_complete(iteration=1, trials=[done, failed], trial=done)
    callback.on_trial_error(iteration=1, trials=[done, failed], trial=failed)
    assert done.metric_analysis == {} and failed.metric_analysis == {}
    assert callback.forgotten == 0


# A fresh interpreter: in a long test process, earlier tests' heaps decide where a thread's
# allocations land.
_TRIM_SCRIPT = """
import ctypes, threading
from orchestrator.execution._ray.memory import return_freed_heap

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmRSS:"))

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
kept = []

def churn():  # 512 x 64 KiB in this thread's arena, each followed by a block that stays
    blocks = []
    for _ in range(512):
        blocks.append(libc.malloc(64 * 1024))
        kept.append(libc.malloc(64))
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    for b in blocks:
        libc.free(b)

before = rss_mib()
worker = threading.Thread(target=churn)
worker.start()
worker.join()
freed = rss_mib()
trimmed = return_freed_heap()
print(before, freed, rss_mib(), trimmed)
"""


def test_freed_c_heap_goes_back_to_the_os():
    """Memory a thread freed between blocks still in use stays resident until trimmed."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _TRIM_SCRIPT],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    before, freed, after, trimmed = out.stdout.split()
    assert trimmed == "True"
    assert float(freed) - float(before) > 24  # of the 32 MiB freed, still resident
    assert float(freed) - float(after) > 24  # given back


# ------------------------------------------------------------------------------ a real Tune sweep


def _train(config: dict[str, Any]) -> None:
    for epoch in range(1, 4):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(
                {"epoch": epoch, "score": config["x"] * epoch, "done_marker": epoch == 3},
                checkpoint=tune.Checkpoint.from_directory(d),
            )


class _Watch(tune.Callback):
    """Records how many terminated trials Tune's trial list holds at each step's end, and how
    many completed trials are still alive anywhere in the driver when the experiment ends."""

    def __init__(self) -> None:
        self.terminated_held: list[int] = []
        self.ended: list[weakref.ref] = []
        self.alive_at_end: int | None = None

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.append(weakref.ref(trial))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.terminated_held.append(sum(t.status == Trial.TERMINATED for t in trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        gc.collect()
        self.alive_at_end = sum(ref() is not None for ref in self.ended)


def _sweep(path: Path, callbacks: list) -> tuple[Any, _Watch]:
    watch = _Watch()
    tuner = tune.Tuner(
        _train,
        param_space={"x": tune.grid_search([float(i) for i in range(TRIALS)])},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name="exp",
            storage_path=str(path),
            callbacks=[*callbacks, watch],
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    return tuner.fit(), watch


def _saved_statuses(experiment: Path) -> list[str]:
    state = max(experiment.glob("experiment_state-*.json"))  # the newest session's
    trials = json.loads(state.read_text())["trial_data"]
    return [json.loads(trial_json)["status"] for trial_json, _ in trials]


def _trial_dirs(experiment: Path) -> int:
    return sum(1 for d in experiment.iterdir() if d.is_dir() and d.name.startswith("_train_"))


def test_tune_lets_go_of_terminated_trials_and_the_ledger_has_them(local_ray, tmp_path):
    ledger = TrialLedger(tmp_path / "exp" / LEDGER_FILE)
    forget = ForgetFinishedTrials(ledger)
    grid, watch = _sweep(tmp_path, [forget, SilentTrialProgress()])

    # Each goes at the end of the step it ended in; the last one stays (Tune cannot resume
    # from a state that lists no trial).
    assert forget.forgotten == TRIALS - 1
    assert max(watch.terminated_held) == 1
    assert len(grid) == 1 and _saved_statuses(tmp_path / "exp") == ["TERMINATED"]
    assert watch.alive_at_end == 1  # nothing else in the driver keeps the others
    entries = ledger.entries()
    assert len(entries) == TRIALS - 1 and grid[0].metrics["trial_id"] not in entries
    configs = [e.config["x"] for e in entries.values()] + [grid[0].config["x"]]
    assert sorted(configs) == [float(i) for i in range(TRIALS)]
    for entry in entries.values():
        assert entry.last["epoch"] == 3 and entry.last["score"] == 3 * entry.config["x"]
        assert entry.status == "stopped"  # no Podium "done" marker in this trainable
        assert entry.error is None and "config" not in entry.last
        # The newest checkpoint is the last epoch's, and it is still there.
        assert json.loads(Path(entry.checkpoint, "state.json").read_text()) == {"epoch": 3}
    assert ledger.counts == {"stopped": TRIALS - 1}


def test_with_keep_tune_holds_every_trial_until_the_end_and_the_ledger_has_them(
    local_ray, tmp_path
):
    """The same sweep as plain Tune runs it: what the test above proves gone, Tune holds."""
    ledger = TrialLedger(tmp_path / "exp" / LEDGER_FILE)
    grid, watch = _sweep(tmp_path, [ForgetFinishedTrials(ledger, keep=True)])
    assert len(ledger.entries()) == TRIALS
    assert max(watch.terminated_held) == TRIALS
    assert len(grid) == TRIALS and _saved_statuses(tmp_path / "exp") == ["TERMINATED"] * TRIALS
    assert watch.alive_at_end == TRIALS


def test_tunes_own_progress_printer_would_keep_forgotten_trials(local_ray, tmp_path):
    """Without SilentTrialProgress, Tune adds its printer, which holds every trial it saw."""
    forget = ForgetFinishedTrials(TrialLedger(tmp_path / "exp" / LEDGER_FILE))
    _, watch = _sweep(tmp_path, [forget])
    assert forget.forgotten == TRIALS - 1 and max(watch.terminated_held) == 1
    assert watch.alive_at_end == TRIALS


def _resume(experiment: Path, forget: ForgetFinishedTrials) -> Any:
    tuner = tune.Tuner.restore(str(experiment), trainable=_train)
    tuner._local_tuner._run_config.callbacks = [forget, SilentTrialProgress()]
    return tuner.fit()


def test_a_resumed_controller_hands_its_ended_trials_to_the_ledger(local_ray, tmp_path):
    """Trials Tune restores as ended go to the ledger at set-up, once each."""
    _sweep(tmp_path, [ForgetFinishedTrials(None)])  # an earlier driver kept them all
    ledger = TrialLedger(tmp_path / "exp" / LEDGER_FILE)
    forget = ForgetFinishedTrials(ledger)
    assert len(_resume(tmp_path / "exp", forget)) == 1
    assert forget.forgotten == TRIALS - 1 and len(ledger.entries()) == TRIALS - 1
    assert _saved_statuses(tmp_path / "exp") == ["TERMINATED"]
    assert _trial_dirs(tmp_path / "exp") == TRIALS  # nothing ran again


def test_a_sweep_whose_trials_all_ended_resumes_as_done(local_ray, tmp_path):
    """A driver killed after the last trial ended (while it selects or promotes): --resume
    must find the sweep done, not start it over."""
    _sweep(tmp_path, [ForgetFinishedTrials(TrialLedger(tmp_path / "exp" / LEDGER_FILE))])
    forget = ForgetFinishedTrials(TrialLedger(tmp_path / "exp" / LEDGER_FILE))
    grid = _resume(tmp_path / "exp", forget)
    assert len(grid) == 1 and grid[0].metrics["epoch"] == 3
    assert _trial_dirs(tmp_path / "exp") == TRIALS  # no trial started over
    assert forget.forgotten == 0
