"""Every private name of Ray (2.58) that Podium relies on, checked against the installed Ray.

A Ray upgrade that renames or drops one fails here, naming the symbol and what Podium does with
it, instead of somewhere in a sweep (issue 29: the first step of putting Ray's internals behind one
gate). Module-level names are imported; a class's private attributes must be a class attribute or
be assigned as ``self.<name>`` somewhere in the class or its bases (read from the installed
source: most are set in ``__init__``, which would need a running Tune to instantiate).
"""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

# (module, name, what Podium does with it)
MODULE_NAMES = [
    ("ray.tune.schedulers.hyperband", "_Bracket", "hyperband.py subclasses it"),
    ("ray._private.worker", "_global_node", "ray_session.py finds the autoscaler monitor"),
    ("ray._private.ray_constants", "PROCESS_TYPE_MONITOR", "ray_session.py: the same"),
    ("ray.train._internal.checkpoint_manager", "_delete_fs_path", "tune_state.py defers it"),
    ("ray.util.debug", "_logged", "tune_memory.py trims Tune's log_once keys"),
]
CONTROLLER = "ray.tune.execution.tune_controller.TuneController"
# (class, attribute, what Podium does with it)
ATTRIBUTES = [
    *[
        (CONTROLLER, a, "tune_memory.py lets go of finished trials")
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
        (CONTROLLER, a, "tune_state.py snapshots Tune's saved state")
        for a in ("_storage", "_session_str", "_checkpoint_manager")
    ],
    *[
        (CONTROLLER, a, "tests/integration/test_searchers.py forces HyperBand's race")
        for a in ("_on_saving_result", "_on_training_result")
    ],
    *[
        ("ray.tune.execution.experiment_state._ExperimentCheckpointManager", a, "tune_state.py")
        for a in ("_storage", "_sync_every_n_trial_checkpoints")
    ],
    *[
        ("ray.train._internal.syncer._BackgroundSyncer", a, "tune_state.py's copy command")
        for a in (
            "_should_continue_existing_sync",
            "_sync_up_command",
            "_launch_sync_process",
            "_current_cmd",
        )
    ],
    *[
        ("ray.air.execution._internal.actor_manager.RayActorManager", a, "tune_memory.py")
        for a in (
            "_pending_actors_to_enqueued_actor_tasks",
            "_pending_actors_to_attrs",
            "_live_actors_to_ray_actors_resources",
        )
    ],
    *[
        ("ray.tune.schedulers.HyperBandScheduler", a, "hyperband.py's _create_bracket")
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
    ("ray.tune.Tuner", "_local_tuner", "callbacks.py installs callbacks on a restored tuner"),
    ("ray.tune.impl.tuner_internal.TunerInternal", "_run_config", "callbacks.py: the same"),
]


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _has(cls: type, attribute: str) -> bool:
    if hasattr(cls, attribute):
        return True
    assigned = re.compile(rf"self\.{re.escape(attribute)}\s*(:[^=]+)?=[^=]")  # annotated too
    return any(
        assigned.search(inspect.getsource(base))
        for base in cls.__mro__
        if base.__module__.startswith("ray.")
    )


@pytest.mark.parametrize(("module", "name", "use"), MODULE_NAMES)
def test_each_private_module_name_podium_uses_is_in_the_installed_ray(module, name, use):
    assert hasattr(importlib.import_module(module), name), (
        f"the installed Ray has no {module}.{name} ({use}): revisit that use"
    )


@pytest.mark.parametrize(("cls", "attribute", "use"), ATTRIBUTES)
def test_each_private_attribute_podium_uses_is_in_the_installed_ray(cls, attribute, use):
    assert _has(_class(cls), attribute), (
        f"the installed Ray's {cls} has no {attribute} ({use}): revisit that use"
    )


def test_the_check_fails_for_a_name_ray_does_not_have():
    assert not _has(_class(CONTROLLER), "_no_such_attribute_podium_uses")
