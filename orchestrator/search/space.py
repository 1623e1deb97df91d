"""Spec → Ray Tune search space, and a sampled config → the concrete trial spec.

Ray sees a *flat* space: one key per search-space leaf, named by its dotted spec path
(``optimizer.lr``). A choice or grid over whole sections (a conditional space) becomes a branch
index under the section's path (``optimizer``), and the leaves inside branch ``i`` are keyed
``optimizer[i].lr``. :func:`resolve` rebuilds the concrete spec from the template and a sampled
config, keeping only the chosen branch, so inactive keys never reach the trial.

Example:
    >>> template = {"optimizer": {"name": "adam", "lr": {"uniform": [0.1, 0.2]}}}
    >>> sorted(flat_space(template))
    ['optimizer.lr']
    >>> resolve(template, {"optimizer.lr": 0.15})
    {'optimizer': {'name': 'adam', 'lr': 0.15}}
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from orchestrator.spec import ExperimentSpec, is_space, space_candidates, space_kind

SEARCHABLE = ("task", "model", "optimizer", "training", "recipe")


def template_of(spec: ExperimentSpec) -> dict[str, Any]:
    """The searchable part of a spec: what every trial resolves against."""
    return {k: copy.deepcopy(getattr(spec, k)) for k in SEARCHABLE}


def is_section_space(value: Any) -> bool:
    """A choice/grid whose options hold mappings or lists (a conditional sub-space)."""
    return (
        is_space(value)
        and space_kind(value) in ("choice", "grid")
        and any(isinstance(c, (dict, list)) and _has_structure(c) for c in space_candidates(value))
    )


def _has_structure(v: Any) -> bool:
    # A list of plain numbers (e.g. hidden: [128, 64]) is a value, not a sub-space.
    if isinstance(v, dict):
        return True
    return isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v)


def iter_leaves(node: Any, path: str) -> Iterator[tuple[str, dict]]:
    """(flat key, space) for every search-space leaf under ``node``; branches of a section space
    are visited under ``path[i]``."""
    if is_space(node):
        yield path, node
        if is_section_space(node):
            for i, branch in enumerate(space_candidates(node)):
                yield from iter_leaves(branch, f"{path}[{i}]")
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from iter_leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from iter_leaves(v, f"{path}.{i}")


GRID_KEY = "grid"  # the one Ray grid axis: a list of {flat key: value} assignments
# In a trial's config: it trains a warm start's known config again, to its last epoch.
RERUN_KEY = "podium_rerun"


def grid_variants(node: Any, path: str, grid_choices: bool = False) -> list[dict[str, Any]]:
    """Every assignment of the grid spaces under ``node``, respecting branches: a grid inside
    branch ``i`` of a section grid only combines with that branch (no duplicate trials from
    inactive branches)."""
    if is_space(node):
        kind, arg = space_kind(node), node[space_kind(node)]
        is_grid = kind == "grid" or (kind == "choice" and grid_choices)
        if is_section_space(node):
            per_branch = [
                [{path: i, **v} for v in grid_variants(b, f"{path}[{i}]", grid_choices)]
                for i, b in enumerate(arg)
            ]
            if is_grid:
                return [v for branch in per_branch for v in branch]
            # A sampled branch: its grids cannot depend on the draw, so they combine independently.
            return _product(
                [
                    [{k: v for k, v in var.items() if k != path} for var in branch]
                    for branch in per_branch
                ]
            )
        return [{path: v} for v in arg] if is_grid else [{}]
    if isinstance(node, dict):
        return _product(
            [grid_variants(v, f"{path}.{k}" if path else k, grid_choices) for k, v in node.items()]
        )
    if isinstance(node, list):
        return _product([grid_variants(v, f"{path}.{i}", grid_choices) for i, v in enumerate(node)])
    return [{}]


def _product(options: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    for choices in options:
        out = [{**a, **b} for a in out for b in choices]
    return out


def flat_space(template: dict[str, Any], grid_choices: bool = False) -> dict[str, Any]:
    """The Ray Tune param space for a template (``grid_choices``: every choice becomes a grid).

    Grid spaces become one ``grid`` axis of whole assignments (see :func:`grid_variants`);
    the other spaces become Ray domains under their flat keys.
    """
    from ray import tune

    variants = grid_variants(template, "", grid_choices)
    gridded = set(variants[0])
    out: dict[str, Any] = {GRID_KEY: tune.grid_search(variants)} if gridded else {}
    for key, space in iter_leaves(template, ""):
        kind, arg = space_kind(space), space[space_kind(space)]
        if key in gridded or kind == "grid" or (kind == "choice" and grid_choices):
            continue
        values = list(range(len(arg))) if is_section_space(space) else arg
        if kind == "choice":
            out[key] = tune.choice(values)
        elif kind == "uniform":
            out[key] = tune.uniform(*arg)
        elif kind == "loguniform":
            out[key] = tune.loguniform(*arg)
        else:  # randint: inclusive bounds in the spec, exclusive upper bound in Ray
            out[key] = tune.randint(int(arg[0]), int(arg[1]) + 1)
    return out


class OptunaSpace:
    """An Optuna define-by-run space that samples only the active branch of each section
    choice, so Optuna's model never sees parameters that did not apply.

    A class, not a closure: Tune pickles the searcher (and with it this function) into its
    experiment state at every save, and a local function cannot be pickled.
    """

    def __init__(self, template: dict[str, Any]) -> None:
        self.template = template

    def __call__(self, trial: Any) -> None:
        self._sample(trial, self.template, "")

    def distributions(self, params: dict[str, Any]) -> dict[str, Any]:
        """The Optuna distribution of each parameter a trial with ``params`` samples (the
        active branches' only), for adding a trial the searcher did not run.

        Raises:
            KeyError: ``params`` lacks a parameter its branches sample.
        """
        replay = _Replay(params)
        self._sample(replay, self.template, "")
        return replay.distributions

    def _sample(self, trial: Any, node: Any, path: str) -> None:
        if is_space(node):
            kind, arg = space_kind(node), node[space_kind(node)]
            if is_section_space(node):
                i = trial.suggest_categorical(path, list(range(len(arg))))
                self._sample(trial, arg[i], f"{path}[{i}]")
            elif kind == "choice":
                # Optuna's categorical takes scalars only; lists (e.g. hidden sizes) go by index.
                scalar = all(isinstance(a, (str, int, float, bool)) or a is None for a in arg)
                if scalar:
                    trial.suggest_categorical(path, arg)
                else:
                    trial.suggest_categorical(path + "#", list(range(len(arg))))
            elif kind in ("uniform", "loguniform"):
                trial.suggest_float(path, arg[0], arg[1], log=kind == "loguniform")
            elif kind == "randint":
                trial.suggest_int(path, int(arg[0]), int(arg[1]))
        elif isinstance(node, dict):
            for k, v in node.items():
                self._sample(trial, v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                self._sample(trial, v, f"{path}.{i}")


class _Replay:
    """An Optuna trial stand-in that answers each suggestion from fixed params and records the
    distribution asked for."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.distributions: dict[str, Any] = {}

    def _answer(self, name: str, distribution: Any) -> Any:
        self.distributions[name] = distribution
        return self.params[name]

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        from optuna.distributions import CategoricalDistribution

        return self._answer(name, CategoricalDistribution(choices))

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> Any:
        from optuna.distributions import FloatDistribution

        return self._answer(name, FloatDistribution(low, high, log=log))

    def suggest_int(self, name: str, low: int, high: int) -> Any:
        from optuna.distributions import IntDistribution

        return self._answer(name, IntDistribution(low, high))


def resolve(template: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The concrete trial spec: every space in ``template`` replaced by its sampled value.

    Raises:
        KeyError: ``config`` lacks a value for an active space (a bug, not a user error).
    """

    grid = config.get(GRID_KEY) or {}

    def value_of(path: str) -> Any:
        return config[path] if path in config else grid[path]

    def walk(node: Any, path: str) -> Any:
        if is_space(node):
            arg = node[space_kind(node)]
            if is_section_space(node):
                i = value_of(path)
                return walk(arg[i], f"{path}[{i}]")
            if path + "#" in config:  # Optuna index for a choice of lists
                return copy.deepcopy(arg[config[path + "#"]])
            value = value_of(path)
            return int(value) if space_kind(node) == "randint" else value
        if isinstance(node, dict):
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        return node

    return walk(template, "")


def flatten_params(concrete: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted-path params of a concrete trial spec, for MLflow (``optimizer.lr`` → 0.01)."""
    out: dict[str, Any] = {}
    for k, v in concrete.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten_params(v, key))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, item in enumerate(v):
                out.update(flatten_params(item, f"{key}.{i}"))
        else:
            out[key] = v
    return out


def point_of(template: dict[str, Any], params: dict[str, str]) -> dict[str, Any] | None:
    """The Optuna params (as :class:`OptunaSpace` names them) of an earlier trial whose MLflow
    params (:func:`flatten_params` of its concrete spec, values as strings) are ``params``; None
    when it is not a point of ``template``'s space: a value outside a space, or a fixed setting
    that differs (its metric then measured something else).

    Example:
        >>> t = {"optimizer": {"name": "adam", "lr": {"uniform": [0.1, 0.2]}}}
        >>> point_of(t, {"optimizer.name": "adam", "optimizer.lr": "0.15"})
        {'optimizer.lr': 0.15}
        >>> point_of(t, {"optimizer.name": "sgd", "optimizer.lr": "0.15"}) is None
        True
    """
    return _match(template, "", "", params)


def _match(node: Any, path: str, key: str, params: dict[str, str]) -> dict[str, Any] | None:
    """``path``: the concrete spec's dotted path (a param name); ``key``: the space's flat key
    (branch indices included)."""
    if is_space(node):
        return _match_space(node, path, key, params)
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            sub = _match(v, _dot(path, k), _dot(key, k), params)
            if sub is None:
                return None
            out.update(sub)
        return out
    if isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        out = {}
        for i, v in enumerate(node):
            sub = _match(v, f"{path}.{i}", f"{key}.{i}", params)
            if sub is None:
                return None
            out.update(sub)
        return out
    return {} if params.get(path) == str(node) else None


def _match_space(node: dict, path: str, key: str, params: dict[str, str]) -> dict[str, Any] | None:
    kind, arg = space_kind(node), node[space_kind(node)]
    if is_section_space(node):
        for i, branch in enumerate(arg):
            sub = _match(branch, path, f"{key}[{i}]", params)
            if sub is not None:
                return {key: i, **sub}
        return None
    raw = params.get(path)
    if raw is None:
        return None
    if kind in ("choice", "grid"):
        scalar = all(isinstance(a, (str, int, float, bool)) or a is None for a in arg)
        for i, candidate in enumerate(arg):
            if str(candidate) == raw:
                return {key: candidate} if scalar else {key + "#": i}
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    lo, hi = float(arg[0]), float(arg[1])
    if not lo <= value <= hi:
        return None
    return {key: int(value)} if kind == "randint" else {key: value}


def _dot(prefix: str, k: str) -> str:
    return f"{prefix}.{k}" if prefix else str(k)
