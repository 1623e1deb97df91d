"""Every use of Ray's private names, behind one gate.

Podium changes five behaviours of Ray 2.58 that no public API reaches, each in a module here:

- :mod:`.memory`: Tune lets go of a finished trial once the sweep's ledger has it (the driver's
  memory stays flat over thousands of trials);
- :mod:`.state`: Tune's saved state is one object, written whole, with its deletions deferred
  (``--resume`` after a kill, on a folder or object storage);
- :mod:`.hyperband`: HyperBand finishes when a last result overtakes a pause;
- :mod:`.node`: the autoscaler monitor, which ignores SIGTERM, is killed before ``ray.shutdown``;
- :mod:`.tuner`: a restored tuner gets Podium's callbacks.

``PRIVATE_NAMES`` and ``PRIVATE_ATTRIBUTES`` list every private name they (and the tests that
force Tune's races) rely on; ``tests/orchestrator/test_ray_internals.py`` checks each against the
installed Ray and names the symbol and its use when one is gone, so a Ray upgrade shows at once
what to revisit. Nothing outside this package names a private Ray symbol.
"""

from __future__ import annotations

# (module, name, what Podium does with it)
PRIVATE_NAMES = [
    ("ray.tune.schedulers.hyperband", "_Bracket", "_ray/hyperband.py subclasses it"),
    ("ray._private.worker", "_global_node", "_ray/node.py finds the autoscaler monitor"),
    ("ray._private.ray_constants", "PROCESS_TYPE_MONITOR", "_ray/node.py: the same"),
    ("ray.train._internal.checkpoint_manager", "_delete_fs_path", "_ray/state.py defers it"),
    ("ray.util.debug", "_logged", "_ray/memory.py trims Tune's log_once keys"),
]
CONTROLLER = "ray.tune.execution.tune_controller.TuneController"
# (class, attribute, what Podium does with it)
PRIVATE_ATTRIBUTES = [
    *[
        (CONTROLLER, a, "_ray/memory.py lets go of finished trials")
        for a in (
            "_trials",
            "_live_trials",
            "_stopped_trials",
            "_trials_to_cache",
            "_trial_metadata",
            "_cached_trial_decisions",
            "_queued_trial_decisions",
            "_actor_manager",
        )
    ],
    *[
        (CONTROLLER, a, "_ray/state.py snapshots Tune's saved state")
        for a in ("_storage", "_session_str", "_checkpoint_manager")
    ],
    *[
        (CONTROLLER, a, "tests/integration/test_searchers.py forces HyperBand's race")
        for a in ("_on_saving_result", "_on_training_result")
    ],
    *[
        ("ray.tune.execution.experiment_state._ExperimentCheckpointManager", a, "_ray/state.py")
        for a in ("_storage", "_sync_every_n_trial_checkpoints")
    ],
    *[
        ("ray.train._internal.syncer._BackgroundSyncer", a, "_ray/state.py's copy command")
        for a in (
            "_should_continue_existing_sync",
            "_sync_up_command",
            "_launch_sync_process",
            "_current_cmd",
        )
    ],
    *[
        ("ray.air.execution._internal.actor_manager.RayActorManager", a, "_ray/memory.py")
        for a in (
            "_pending_actors_to_enqueued_actor_tasks",
            "_pending_actors_to_attrs",
            "_live_actors_to_ray_actors_resources",
        )
    ],
    *[
        ("ray.tune.schedulers.HyperBandScheduler", a, "_ray/hyperband.py's _create_bracket")
        for a in (
            "_create_bracket",
            "_time_attr",
            "_get_n0",
            "_get_r0",
            "_max_t_attr",
            "_eta",
            "_stop_last_trials",
        )
    ],
    ("ray.tune.Tuner", "_local_tuner", "_ray/tuner.py sets a restored tuner's callbacks"),
    ("ray.tune.impl.tuner_internal.TunerInternal", "_run_config", "_ray/tuner.py: the same"),
]
