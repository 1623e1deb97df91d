"""Population-based training on Podium's spaces: what may mutate, within which bounds, and a
record of every exploit.

PBT copies a better trial's checkpoint into a worse one and perturbs the copied config. A
checkpoint only loads into a model and optimizer of the same structure, so only values that do
not change the shape of any saved state mutate: numbers outside ``model`` (the optimizer's
hyperparameters, ``training.batch_size``, ``l1_penalty``) and the model's ``dropout``. Choices
over sections (which optimizer, which architecture), lists (``hidden``) and anything structural
stay as the trial was sampled; an exploit then copies the source trial's structure together with
its checkpoint. Numbers are perturbed by PBT's factors and clipped to their space's bounds;
choices of numbers are resampled or shifted to a neighbour.

What an exploit did is recorded by the trial itself, which knows what trained it: a trial that
restores another trial's checkpoint reports the source trial and epoch once (``podium.exploits``
on its run), and under PBT every epoch's report carries the mutable hyperparameters it trained
with (``hparam.optimizer.lr``, ...), so the run shows each value from the epoch it took effect.

Example:
    >>> template = {"model": {"hidden": {"choice": [[64], [128]]}, "dropout": {"uniform": [0, .5]}},
    ...             "optimizer": {"name": "adam", "lr": {"loguniform": [1e-4, 1e-1]}}}
    >>> sorted(mutable_leaves(template))
    ['model.dropout', 'optimizer.lr']
"""

from __future__ import annotations

import re
from typing import Any

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from orchestrator.search.space import is_section_space, iter_leaves
from orchestrator.spec import space_kind
from tracking import keys

RANGES = ("uniform", "loguniform", "randint")
# Keys whose value fixes the shape of a saved state (or the trial's budget and data): never
# mutated. Under "model" only dropout mutates.
_FIXED_PREFIXES = ("task", "model", "recipe", "training.max_epochs", "training.seed")
_MUTABLE_MODEL_KEYS = ("model.dropout",)


def mutable_leaves(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat key → spec space of every leaf PBT may mutate (pure: no Ray)."""
    out = {}
    for key, space in iter_leaves(template, ""):
        if is_section_space(space) or not _is_numeric(space):
            continue
        path = spec_path(key)
        fixed = any(path == p or path.startswith(p + ".") for p in _FIXED_PREFIXES)
        if fixed and path not in _MUTABLE_MODEL_KEYS:
            continue
        out[key] = space
    return out


def tracked_hparams(template: dict[str, Any]) -> list[str]:
    """The spec paths of the mutable leaves: what a PBT trial reports every epoch."""
    return sorted({spec_path(k) for k in mutable_leaves(template)})


def spec_path(flat_key: str) -> str:
    """The spec path a flat key's value lands on once resolved: ``optimizer[1].lr`` →
    ``optimizer.lr`` (the MLflow param name)."""
    return re.sub(r"\[\d+\]", "", flat_key)


def _is_numeric(space: dict[str, Any]) -> bool:
    kind = space_kind(space)
    if kind in RANGES:
        return True
    values = space[kind]
    return kind == "choice" and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )


def clip_to_space(config: dict[str, Any], leaves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``config`` with every perturbed range value put back inside its bounds (randint: an
    integer). PBT multiplies by 0.8 or 1.2 without looking at the space: a dropout of 0.3 in
    [0, 0.3] would become 0.36, and after a few exploits leave [0, 1) altogether."""
    out = dict(config)
    for key, space in leaves.items():
        kind = space_kind(space)
        if kind not in RANGES or not isinstance(out.get(key), (int, float)):
            continue
        low, high = space[kind]
        value = min(max(out[key], low), high)
        out[key] = int(round(value)) if kind == "randint" else value
    return out


class ClipToSpace:
    """PBT's ``custom_explore_fn``: a class so that Tune can pickle it with the scheduler."""

    def __init__(self, leaves: dict[str, dict[str, Any]]) -> None:
        self.leaves = leaves

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        return clip_to_space(config, self.leaves)


def build_pbt(template: dict[str, Any], interval: int) -> Any:
    """PBT over the template's mutable leaves, perturbing every ``interval`` epochs."""
    from ray import tune

    leaves = mutable_leaves(template)
    mutations: dict[str, Any] = {}
    for key, space in leaves.items():
        kind, arg = space_kind(space), space[space_kind(space)]
        if kind == "choice":
            mutations[key] = list(arg)  # a list: resampled or shifted to a neighbour, never scaled
        elif kind == "uniform":
            mutations[key] = tune.uniform(*arg)
        elif kind == "loguniform":
            mutations[key] = tune.loguniform(*arg)
        else:
            mutations[key] = tune.randint(int(arg[0]), int(arg[1]) + 1)
    return BudgetAwarePBT(
        time_attr="training_iteration",
        perturbation_interval=interval,
        hyperparam_mutations=mutations,
        custom_explore_fn=ClipToSpace(leaves),
    )


class BudgetAwarePBT(PopulationBasedTraining):
    """Ray Tune's PBT, except that a trial's last report is never exploited.

    Tune's PBT does not know a trial's budget: a trial in the lower quantile at its final epoch
    was sent back to a better trial's older checkpoint, trained its last epoch again, and was
    exploited again, over a hundred times in a 4-trial sweep here. The final report carries
    ``podium_done``; the trial then ends as it is and stays a source for the others.
    """

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(keys.DONE):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
