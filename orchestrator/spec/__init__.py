"""The experiment spec: YAML in, a typed and validated :class:`ExperimentSpec` out.

Any searchable value may be a search space, written as a one-key mapping::

    lr: {loguniform: [0.0001, 0.1]}        # also uniform, randint (inclusive bounds)
    dropout: {choice: [0.0, 0.2, 0.5]}     # sampled
    hidden: {grid: [[64], [128, 64]]}      # every value, once per sample
    optimizer:                             # a choice of whole sections makes its keys
      choice:                              # conditional: momentum only where sgd is chosen
        - {name: momentum, lr: 0.05, momentum: {uniform: [0.5, 0.99]}}
        - {name: adam, lr: 0.001}

Validation reports every problem at once, each with its dotted path and bad value, before
anything starts (no Ray, no MLflow). Example:

    >>> spec = parse_spec({"name": "demo", "search": {"num_samples": 2}})
    >>> spec.search.num_samples, spec.model["arch"]
    (2, 'mlp')
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.plugins import import_roots
from tracking import keys
from tracking.selection import check_policy
from workers.models import MODELS
from workers.optimizers import OPTIMIZERS, check_hparams
from workers.optimizers.schedules import check_schedule
from workers.recipes import check_qat_order, check_recipe
from workers.registry import is_plugin_ref
from workers.tasks import TASKS
from workers.trial.adversarial import check_adversarial

SPACE_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "fifo", "hyperband", "median", "pbt")
SEARCHERS = ("bohb", "grid", "motpe", "nsga2", "optuna", "random")
# Searchers with a model of the space, which earlier trials can seed (search.warm_start).
MODEL_BASED = ("bohb", "motpe", "nsga2", "optuna")
# Searchers of the Pareto front of promotion.objectives: they need two or more objectives.
MULTI_OBJECTIVE = ("motpe", "nsga2")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DEFAULT_SPEC = Path(__file__).parent.parent / "defaults" / "digits.yaml"


# --------------------------------------------------------------------------- search spaces


def is_space(value: Any) -> bool:
    """True for a search-space mapping such as ``{choice: [...]}``."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SPACE_KINDS


def space_kind(value: dict) -> str:
    return next(iter(value))


def space_candidates(value: dict) -> list[Any]:
    """The values a space can produce that validation can check: all of a choice or grid, the
    bounds of a range; none for a malformed space (reported by its form check)."""
    candidates = value[space_kind(value)]
    return list(candidates) if isinstance(candidates, list | tuple) else []


def _check_space_form(path: str, value: dict) -> list[Problem]:
    kind, arg = space_kind(value), value[space_kind(value)]
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg:
            return [Problem(path, value, f"{kind} needs a non-empty list, got {arg!r}")]
        return []
    if not (isinstance(arg, list) and len(arg) == 2 and all(_is_number(v) for v in arg)):
        return [Problem(path, value, f"{kind} needs [low, high] numbers, got {arg!r}")]
    low, high = arg
    if not low < high:
        return [Problem(path, value, f"{kind} needs low < high, got [{low}, {high}]")]
    if kind == "loguniform" and low <= 0:
        return [Problem(path, value, f"loguniform needs low > 0, got {low}")]
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        return [Problem(path, value, f"randint needs integer bounds, got [{low}, {high}]")]
    return []


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _candidates(path: str, value: Any, problems: list[Problem]) -> list[Any]:
    """Concrete values to check for ``value``: itself, or a valid space's candidates."""
    if not is_space(value):
        return [value]
    form = _check_space_form(path, value)
    problems += form
    return [] if form else space_candidates(value)


# --------------------------------------------------------------------------- spec sections


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass
class SearchSpec:
    """How trials are chosen and stopped (never a search space itself)."""

    num_samples: int = _doc("trials to sample (with grid: repeats of the grid)", default=8)
    scheduler: str = _doc(f"trial scheduler: {', '.join(SCHEDULERS)}", default="asha")
    searcher: str = _doc(f"how configs are proposed: {', '.join(SEARCHERS)}", default="random")
    metric: str = _doc(
        "the per-epoch metric schedulers and searchers optimise", default="val_accuracy"
    )
    mode: str = _doc("max or min", default="max")
    max_concurrent: int | None = _doc(
        "trials at once (default: as many as resources allow)", default=None
    )
    grace_period: int = _doc("epochs before asha/hyperband/median may stop a trial", default=1)
    warm_start: dict[str, Any] | None = _doc(
        "{experiment: NAME, top: K, rerun: R}: seed a model-based searcher with the K best "
        "finished trials of that experiment's sweeps whose configs fit this space (default K "
        "50), and train the R best of them again first (default 1, 0 for none)",
        default=None,
    )


@dataclass
class ResourcesSpec:
    """What one trial asks Ray for."""

    cpu: float = _doc("CPUs per trial", default=1.0)
    gpu: float | str = _doc(
        "GPUs per trial; fractions share a GPU (0.25: four trials per GPU, each capped at a "
        "quarter of its memory); 'auto': the share that one trial's measured memory needs "
        "(1, 1/2, 1/4 or 1/8, decided before the sweep starts)",
        default=0.0,
    )
    tpu: float = _doc("TPU chips per trial (Ray custom resource 'TPU')", default=0.0)
    memory_mb: int | None = _doc("memory reserved per trial, in MiB", default=None)


@dataclass
class TrackingSpec:
    """Where runs are recorded; the CLI flag and MLFLOW_TRACKING_URI take precedence over uri."""

    uri: str | None = _doc(
        "MLflow tracking URI (sqlite:///..., postgresql+psycopg2://..., http://...)", default=None
    )
    artifact_location: str | None = _doc("artifact root for a new experiment", default=None)


@dataclass
class ClusterSpec:
    """Which Ray cluster runs the trials."""

    address: str | None = _doc(
        "None: a local Ray; 'auto', 'ray://host:port' or 'host:port'", default=None
    )
    storage_path: str | None = _doc(
        "where Tune's state and trial checkpoints go: a folder (on a cluster, one every node "
        "mounts) or object storage, s3://BUCKET/PREFIX or gs://... (default "
        "$PODIUM_STORAGE_PATH, else ./podium-runs/ray_results)",
        default=None,
    )
    max_failures: int = _doc(
        "times a trial is restarted from its checkpoint after a worker dies", default=2
    )


@dataclass
class PromotionSpec:
    """How the best trial is chosen and registered."""

    model_name: str | None = _doc(
        "registered model name (default: the experiment name)", default=None
    )
    alias: str = _doc("registry alias the winner receives", default="champion")
    objectives: list[dict[str, str]] = _doc(
        "[{metric, mode}]: the first decides, the rest break ties (strategy best)",
        default_factory=lambda: [{"metric": keys.TEST_ACCURACY, "mode": "max"}],
    )
    constraints: list[str] = _doc(
        "e.g. 'latency_ms_p50 <= 1.0'; infeasible trials never win", default_factory=list
    )
    strategy: str = _doc("best, or pareto", default="best")
    pick: str = _doc("how pareto picks one point: knee or weighted", default="knee")
    weights: list[float] | None = _doc("per-objective weights for pick: weighted", default=None)
    min_improvement: float = _doc("a challenger must beat the champion by this much", default=0.0)
    selection_split: str = _doc(
        "validation: a sweep chooses its winner with each test_ objective and constraint read "
        "on its val_ twin, and the test split only compares champion and challenger; test: "
        "choose on the test split too (its score of the winner is then optimistic)",
        default="validation",
    )
    enabled: bool = _doc("register and alias the winner at the end of the sweep", default=True)


# Searchable sections are plain dicts (their keys depend on the chosen arch or optimizer); their
# defaults live here and their checks in _check_model / _check_optimizer.
MODEL_DEFAULTS: dict[str, Any] = {
    "arch": "mlp",
    "hidden": [128, 64],
    "batch_norm": False,
    "dropout": 0.0,
}
TRAINING_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10,
    "batch_size": None,
    "seed": 0,
    "l1_penalty": 0.0,
    "lr_schedule": None,
    "adversarial": None,
    "checkpoint_every": 1,
    "grad_clip": None,  # max total L2 norm of the gradients before each update; None: off
    "accumulate": 1,  # batches whose gradients make one update
    "label_smoothing": 0.0,  # classification: cross-entropy against smoothed targets
    "patience": None,  # end a trial after this many epochs without a better search.metric
    # best: the epoch with the best search.metric (a val_ metric) is tested, registered and
    # reported as the trial's; last: the last epoch trained.
    "keep": "best",
    # Used only where Ray gives the trial a GPU (workers/trial/device.py): bf16 autocast of the
    # forward pass, and cuDNN autotuning of convolutions.
    "amp": False,
    "cudnn_benchmark": False,
}


@dataclass
class ExperimentSpec:
    """One experiment. ``model``, ``optimizer``, ``training`` and ``recipe`` may hold search spaces;
    the other sections are plain settings."""

    name: str = _doc("experiment name: MLflow experiment and default registered-model name")
    task: Any = _doc(
        "data set: digits, fashion-mnist, breast_cancer, wine, diabetes, rotten-tomatoes, or "
        "module:function (a function of the split seed returning workers.tasks.TaskData)",
        default="digits",
    )
    model: dict[str, Any] = _doc(
        "arch (mlp, cnn, a text model, module:function) and the settings its builder's "
        "signature takes (mlp: hidden, batch_norm, dropout; cnn: also channels)",
        default_factory=lambda: dict(MODEL_DEFAULTS),
    )
    optimizer: Any = _doc(
        "name, lr and the optimizer's own hyperparameters",
        default_factory=lambda: {"name": "adam", "lr": 0.001},
    )
    training: dict[str, Any] = _doc(
        "max_epochs, batch_size, seed, l1_penalty, lr_schedule, adversarial, grad_clip, "
        "accumulate, label_smoothing, patience, keep (best | last: the epoch that ships)",
        default_factory=lambda: dict(TRAINING_DEFAULTS),
    )
    recipe: Any = _doc("compression steps applied after training, in order", default_factory=list)
    search: SearchSpec = _doc("trial proposal and scheduling", default_factory=SearchSpec)
    resources: ResourcesSpec = _doc("per-trial resources", default_factory=ResourcesSpec)
    tracking: TrackingSpec = _doc("MLflow location", default_factory=TrackingSpec)
    cluster: ClusterSpec = _doc("Ray cluster", default_factory=ClusterSpec)
    promotion: PromotionSpec = _doc("model selection and registry", default_factory=PromotionSpec)
    # Where plug-ins are imported from, first wins (the spec file's folder, then the working
    # directory): set by parse_spec; not a setting, so never dumped nor read from a spec file.
    plugin_roots: tuple[str, ...] = field(
        default=(), repr=False, compare=False, metadata={"internal": True}
    )
    # What is allowed but probably not meant, as "path: why" lines (the CLI prints them).
    warnings: tuple[str, ...] = field(
        default=(), repr=False, compare=False, metadata={"internal": True}
    )

    @property
    def model_name(self) -> str:
        return self.promotion.model_name or self.name

    def training_max_epochs(self) -> int:
        """The largest epoch budget any trial can have (max_epochs may itself be a space)."""
        return max(_int_candidates(self.training, "max_epochs"), default=1)

    def training_seed(self) -> int:
        return min(_int_candidates(self.training, "seed"), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in TOP_KEYS}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def spec_hash(self) -> str:
        """A short, stable hash of the whole spec: what the registry's model card records."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def with_tracking_uri(self, uri: str) -> ExperimentSpec:
        new = copy.deepcopy(self)
        new.tracking.uri = uri
        return new


def _int_candidates(section: Any, key: str) -> list[int]:
    """Integer candidates of ``section[key]`` across section branches and leaf spaces."""
    branches = space_candidates(section) if is_space(section) else [section]
    out: list[int] = []
    for b in branches:
        v: Any = b.get(key) if isinstance(b, dict) else None
        for c in space_candidates(v) if is_space(v) else [v]:
            if isinstance(c, (int, float)) and not isinstance(c, bool):
                out.append(int(c))
    return out


SETTING_SECTIONS: dict[str, type] = {
    "search": SearchSpec,
    "resources": ResourcesSpec,
    "tracking": TrackingSpec,
    "cluster": ClusterSpec,
    "promotion": PromotionSpec,
}
TOP_KEYS = {f.name for f in fields(ExperimentSpec) if not f.metadata.get("internal")}


# --------------------------------------------------------------------------- loading


def load_spec(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentSpec:
    """Read a YAML spec (the built-in default when ``path`` is None), apply ``--set`` overrides,
    validate, and return the typed spec.

    Raises:
        SpecError: unreadable YAML, a bad override, or any invalid value (all problems at once).
    """
    path = Path(path) if path else DEFAULT_SPEC
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(
            [Problem("", str(path), f"cannot read spec file {str(path)!r}: {e.strerror}")]
        ) from e
    except yaml.YAMLError as e:
        raise SpecError([Problem("", str(path), f"{path} is not valid YAML: {e}")]) from e
    if not isinstance(raw, dict):
        raise SpecError(
            [Problem("", raw, f"{path} must hold a mapping of sections, got {type(raw).__name__}")]
        )
    apply_overrides(raw, overrides or [])
    from_environment = storage_from_environment(raw)
    try:
        return parse_spec(raw, spec_dir=path.parent)
    except SpecError as e:
        if not from_environment:
            raise
        # Say where a bad value came from: the spec file does not show it.
        raise SpecError(
            [
                Problem(p.path, p.value, f"{p.message} (from ${STORAGE_VARIABLE})")
                if p.path == "cluster.storage_path"
                else p
                for p in e.problems
            ]
        ) from None


# A cluster's nodes carry where Tune's storage is (the team stack's MinIO bucket), so the specs
# run there need not name it; a spec's own value, or a --set, wins.
STORAGE_VARIABLE = "PODIUM_STORAGE_PATH"


def storage_from_environment(raw: dict[str, Any]) -> bool:
    """Fill ``cluster.storage_path`` from ``$PODIUM_STORAGE_PATH`` where the spec leaves it out:
    with ``PODIUM_STORAGE_PATH=s3://tune/runs``, ``{"cluster": {"address": "auto"}}`` becomes
    ``{"cluster": {"address": "auto", "storage_path": "s3://tune/runs"}}``; validation then
    checks the value as if the spec had it. Returns whether it filled it.
    """
    value = os.environ.get(STORAGE_VARIABLE)
    cluster = raw.get("cluster")
    if not value or not (cluster is None or isinstance(cluster, dict)):
        return False  # a malformed section is reported as such by validation
    if (cluster or {}).get("storage_path") is not None:
        return False
    raw["cluster"] = {**(cluster or {}), "storage_path": value}
    return True


# The key that says which branch a choice of sections is: an override of it picks branches.
SELECTORS = {"optimizer": "name", "model": "arch"}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``path=value`` overrides in place.

    Values are YAML: ``4``, ``[64, 32]``, ``{choice: [a, b]}``. Under a choice of whole sections
    (the default spec's ``optimizer: {choice: [{name: nag, ...}, {name: adam, ...}]}``):

    - ``optimizer.lr=0.01`` sets ``lr`` in every branch;
    - ``optimizer.name=adam`` (the section's selector: ``name``, a model's ``arch``) keeps the
      branches whose selector is that value, or, when none is, replaces the choice by the one
      section ``{name: adam}`` (its other keys take their defaults);
    - ``optimizer=...`` replaces the whole section.

    Raises:
        SpecError: a malformed override, or a path through something that is not a mapping.
    """
    problems = []
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep or not dotted or any(not part for part in dotted.split(".")):
            problems.append(
                Problem(
                    "--set", item, f"expected PATH=VALUE (e.g. search.num_samples=4), got {item!r}"
                )
            )
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        problems += _override(raw, dotted.split("."), value, dotted, item)
    if problems:
        raise SpecError(problems)


def _override(
    node: dict[str, Any], parts: list[str], value: Any, dotted: str, item: str
) -> list[Problem]:
    """Set ``parts`` under ``node`` to ``value``, into every branch of a choice of sections."""
    head, rest = parts[0], parts[1:]
    if not rest:
        node[head] = value
        return []
    child: Any = node.get(head)
    if is_space(child) and space_kind(child) in ("choice", "grid") and _all_dicts(child):
        return _override_branches(node, head, rest, value, dotted, item)
    if not isinstance(child, dict):
        if head in node and child is not None:
            return [
                Problem(
                    dotted,
                    item,
                    f"cannot set inside {head!r}: it is {child!r}, not a mapping; set the "
                    f"whole of it instead (--set {dotted.removesuffix('.' + '.'.join(rest))}=...)",
                )
            ]
        node[head] = child = {}
    return _override(child, rest, value, dotted, item)


def _all_dicts(space: dict[str, Any]) -> bool:
    branches = space_candidates(space)
    return bool(branches) and all(isinstance(b, dict) for b in branches)


def _override_branches(
    node: dict[str, Any], head: str, rest: list[str], value: Any, dotted: str, item: str
) -> list[Problem]:
    kind = space_kind(node[head])
    branches = space_candidates(node[head])
    if len(rest) == 1 and rest[0] == SELECTORS.get(head):
        # Picking a branch: keep those with this selector, else one section of it alone.
        kept = [b for b in branches if b.get(rest[0]) == value]
        node[head] = {kind: kept} if len(kept) > 1 else (kept[0] if kept else {rest[0]: value})
        return []
    problems: list[Problem] = []
    for branch in branches:
        problems += _override(branch, rest, value, dotted, item)
    return problems


def parse_spec(raw: dict[str, Any], spec_dir: str | Path | None = None) -> ExperimentSpec:
    """Validate a spec mapping (already YAML-loaded) and return the typed spec.

    Plug-ins (``module:function``) are imported from ``spec_dir`` (the spec file's folder), then
    the working directory (:mod:`orchestrator.spec.plugins`); the task is loaded once, so its
    metrics can be checked and the defaults that depend on its kind filled in.

    Raises:
        SpecError: with every problem found.
    """
    problems: list[Problem] = []
    for key in sorted(set(raw) - TOP_KEYS):
        problems.append(
            Problem(key, raw[key], f"unknown section {key!r}; valid: {', '.join(sorted(TOP_KEYS))}")
        )
    sections = {
        name: _parse_settings(name, cls, raw.get(name), problems)
        for name, cls in SETTING_SECTIONS.items()
    }
    spec = ExperimentSpec(
        name=raw.get("name"),  # type: ignore[arg-type]
        task=raw.get("task", "digits"),
        model=_with_defaults(raw.get("model"), MODEL_DEFAULTS, {"arch": "mlp"}),
        optimizer=raw.get("optimizer", {"name": "adam", "lr": 0.001}),
        training=_with_defaults(raw.get("training"), TRAINING_DEFAULTS),
        recipe=raw.get("recipe") or [],
        **sections,
    )
    problems += validate(spec)
    if not any(pr.path == "task" for pr in problems):
        # The checks that import plug-ins and load the task (its metrics, its model's settings);
        # a model section with problems of its own is not checked against its builder.
        from orchestrator.spec.task import check_with_task

        spec.plugin_roots = tuple(import_roots(spec_dir))
        model_ok = not any(pr.path.startswith("model") for pr in problems)
        problems += check_with_task(spec, raw, check_model=model_ok)
    if problems:
        raise SpecError(problems)
    spec.warnings = tuple(_warnings(spec))
    return spec


def _warnings(spec: ExperimentSpec) -> list[str]:
    out = []
    tested = [o["metric"] for o in spec.promotion.objectives if o["metric"].startswith("test_")]
    if spec.promotion.selection_split == "test" and tested:
        out.append(
            f"promotion.selection_split: 'test' chooses the sweep's winner by {tested[0]}: the "
            "test split takes part in the choice, so the winner's test score is optimistic; "
            "the default, validation, chooses by the val_ twin and keeps test for comparing "
            "champion and challenger"
        )
    return out


def _with_defaults(
    value: Any, defaults: dict[str, Any], given: dict[str, Any] | None = None
) -> Any:
    """Fill section defaults; a section-level space gets them filled into each branch.

    ``defaults`` is the whole section when none is given; ``given`` (default: ``defaults``) is
    what fills a section the spec gives.
    """
    given = defaults if given is None else given
    if value is None:
        return dict(defaults)
    if is_space(value) and isinstance(space_candidates(value), list):
        kind = space_kind(value)
        return {
            kind: [
                _with_defaults(v, defaults, given) if isinstance(v, dict) else v
                for v in value[kind]
            ]
        }
    return {**given, **value} if isinstance(value, dict) else value


def _parse_settings(name: str, cls: type, value: Any, problems: list[Problem]) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, dict):
        problems.append(Problem(name, value, f"must be a mapping of settings, got {value!r}"))
        return cls()
    known = {f.name for f in fields(cls)}
    for key in sorted(set(value) - known):
        problems.append(
            Problem(
                f"{name}.{key}",
                value[key],
                f"unknown setting {key!r}; valid: {', '.join(sorted(known))}",
            )
        )
    for key in sorted(set(value) & known):
        if is_space(value[key]):
            problems.append(
                Problem(f"{name}.{key}", value[key], "a search space is not allowed here")
            )
    return cls(**{k: v for k, v in value.items() if k in known and not is_space(v)})


# --------------------------------------------------------------------------- validation


def validate(spec: ExperimentSpec) -> list[Problem]:
    """Every problem in ``spec``, each with its dotted path; empty when valid."""
    p: list[Problem] = []
    if not isinstance(spec.name, str) or not NAME_RE.match(spec.name):
        p.append(
            Problem(
                "name",
                spec.name,
                f"required: letters, digits, '_', '.', '-' (at most 100), got {spec.name!r}",
            )
        )
    p += _check_task(spec.task)
    p += _check_section("model", spec.model, _check_model)
    p += _check_section("optimizer", spec.optimizer, _check_optimizer)
    p += _check_section("training", spec.training, _check_training)
    p += _check_patience(spec)
    p += _check_section("recipe", spec.recipe, _check_recipe, container=list)
    p += _check_search(spec.search, spec)
    p += _check_resources(spec.resources)
    p += _check_strings("tracking", asdict(spec.tracking))
    p += _check_strings(
        "cluster", {k: v for k, v in asdict(spec.cluster).items() if k != "max_failures"}
    )
    p += _leaf("cluster.storage_path", spec.cluster.storage_path, _storage_location)
    p += _leaf(
        "cluster.max_failures",
        spec.cluster.max_failures,
        lambda v: (
            None
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0
            else f"must be an integer >= 0, got {v!r}"
        ),
    )
    p += _check_promotion(spec.promotion)
    return p


def _check_section(
    path: str, value: Any, check: Callable[[str, Any], list[Problem]], container: type = dict
) -> list[Problem]:
    """A section is a mapping (list for recipe) or a choice/grid over several of them."""
    if is_space(value):
        if space_kind(value) not in ("choice", "grid"):
            return [
                Problem(path, value, "a whole section can only be a choice or grid of sections")
            ]
        problems = _check_space_form(path, value)
        for i, branch in enumerate(space_candidates(value) if not problems else []):
            problems += _check_section(f"{path}[{i}]", branch, check, container)
        return problems
    if not isinstance(value, container):
        return [
            Problem(
                path,
                value,
                f"must be a {'list' if container is list else 'mapping'}, got {value!r}",
            )
        ]
    return check(path, value)


def _leaf(path: str, value: Any, check: Callable[[Any], str | None]) -> list[Problem]:
    problems: list[Problem] = []
    for candidate in _candidates(path, value, problems):
        msg = check(candidate)
        if msg:
            problems.append(Problem(path, candidate, msg))
    return problems


def _check_task(task: Any) -> list[Problem]:
    def check(v: Any) -> str | None:
        if is_plugin_ref(v) or v in TASKS:
            return None
        return f"{v!r} is not one of: {', '.join(TASKS.names())} (or module:function)"

    return _leaf("task", task, check)


def _int_list(v: Any) -> str | None:
    if not isinstance(v, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v
    ):
        return f"must be a list of positive integers, got {v!r}"
    return None


def _output_name(plugins_only: bool) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not plugins_only:
            return "names the logits among a plug-in model's outputs; built-in archs return logits"
        if not (isinstance(v, str) and v.isidentifier()):
            return f"must be the name of an output (an attribute or key, e.g. logits), got {v!r}"
        return None

    return check


def _check_model(path: str, m: dict[str, Any]) -> list[Problem]:
    # Which keys an arch takes is its builder's signature: checked once plug-ins are imported
    # (orchestrator/spec/task.py). Here: the values of the built-in architectures' settings,
    # only where a built-in can be the arch: a plug-in's ``hidden`` is its own (an int, say).
    p = _leaf(
        f"{path}.arch",
        m.get("arch"),
        lambda v: (
            None
            if (v in MODELS or is_plugin_ref(v))
            else f"{v!r} is not one of: {', '.join(MODELS.names())} (or module:function)"
        ),
    )
    archs = _candidates(f"{path}.arch", m.get("arch", "mlp"), [])
    # A malformed arch space has no candidates (already reported): keep the built-in rules.
    plugins_only = bool(archs) and all(isinstance(a, str) and is_plugin_ref(a) for a in archs)
    if keys.MODEL_OUTPUT in m:
        p += _leaf(f"{path}.{keys.MODEL_OUTPUT}", m[keys.MODEL_OUTPUT], _output_name(plugins_only))
    if plugins_only:
        return p
    for key in ("hidden", "channels"):
        if key in m:
            p += _leaf(f"{path}.{key}", m[key], _int_list)
    if "batch_norm" in m:
        p += _leaf(
            f"{path}.batch_norm",
            m["batch_norm"],
            lambda v: None if isinstance(v, bool) else f"must be true or false, got {v!r}",
        )
    if "dropout" in m:
        p += _leaf(
            f"{path}.dropout",
            m["dropout"],
            lambda v: None if _is_number(v) and 0 <= v < 1 else f"must be in [0, 1), got {v!r}",
        )
    return p


def _check_optimizer(path: str, o: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    names = _candidates(f"{path}.name", o.get("name"), problems)
    for name in names:
        if name not in OPTIMIZERS:
            problems.append(
                Problem(
                    f"{path}.name", name, f"{name!r} is not one of: {', '.join(OPTIMIZERS.names())}"
                )
            )
    for key, value in o.items():
        if key == "name":
            continue
        for candidate in _candidates(f"{path}.{key}", value, problems):
            for name in (n for n in names if n in OPTIMIZERS):
                for _, bad, msg in check_hparams(name, {key: candidate}):
                    problems.append(
                        Problem(
                            f"{path}.{key}",
                            bad,
                            msg
                            + (
                                "; make it conditional with a choice of optimizer sections"
                                if len(names) > 1
                                else ""
                            ),
                        )
                    )
    return _dedupe(problems)


def _check_patience(spec: ExperimentSpec) -> list[Problem]:
    """Patience is judged on search.metric every epoch: a metric reported per epoch."""
    t = spec.training if isinstance(spec.training, dict) else {}
    value: Any = t.get("patience")
    used = any(v is not None for v in (space_candidates(value) if is_space(value) else [value]))
    metric = spec.search.metric
    if used and isinstance(metric, str) and not metric.startswith("val_"):
        why = f"judges search.metric each epoch; {metric!r} is not a per-epoch val_ metric"
        return [Problem("training.patience", value, why)]
    return []


def _check_training(path: str, t: dict[str, Any]) -> list[Problem]:
    p = [
        Problem(
            f"{path}.{k}", t[k], f"unknown key {k!r}; valid: {', '.join(sorted(TRAINING_DEFAULTS))}"
        )
        for k in sorted(set(t) - set(TRAINING_DEFAULTS))
    ]
    p += _leaf(f"{path}.max_epochs", t["max_epochs"], _positive_int)
    p += _leaf(
        f"{path}.batch_size", t["batch_size"], lambda v: None if v is None else _positive_int(v)
    )
    p += _leaf(
        f"{path}.seed",
        t["seed"],
        lambda v: (
            None
            if isinstance(v, int) and not isinstance(v, bool)
            else f"must be an integer, got {v!r}"
        ),
    )
    p += _leaf(f"{path}.checkpoint_every", t["checkpoint_every"], _positive_int)
    p += _leaf(f"{path}.accumulate", t["accumulate"], _positive_int)
    p += _leaf(f"{path}.patience", t["patience"], lambda v: None if v is None else _positive_int(v))
    p += _leaf(
        f"{path}.keep",
        t["keep"],
        lambda v: None if v in ("best", "last") else f"must be 'best' or 'last', got {v!r}",
    )
    p += _leaf(
        f"{path}.grad_clip",
        t["grad_clip"],
        lambda v: None if v is None or (_is_number(v) and v > 0) else f"must be > 0, got {v!r}",
    )
    p += _leaf(
        f"{path}.label_smoothing",
        t["label_smoothing"],
        lambda v: None if _is_number(v) and 0 <= v < 1 else f"must be in [0, 1), got {v!r}",
    )
    for flag in ("amp", "cudnn_benchmark"):
        p += _leaf(
            f"{path}.{flag}",
            t[flag],
            lambda v: None if isinstance(v, bool) else f"must be true or false, got {v!r}",
        )
    p += _leaf(
        f"{path}.l1_penalty",
        t["l1_penalty"],
        lambda v: None if _is_number(v) and v >= 0 else f"must be a number >= 0, got {v!r}",
    )
    for key, check in (("lr_schedule", check_schedule), ("adversarial", check_adversarial)):
        section = t.get(key)
        if section is not None and not isinstance(section, dict):
            p.append(Problem(f"{path}.{key}", section, f"must be a mapping, got {section!r}"))
        elif section is not None:
            p += [
                Problem(_join(f"{path}.{key}", k), v, msg)
                for k, v, msg in _check_nested(section, check)
            ]
    return p


def _check_nested(section: dict, check: Callable) -> list[tuple[str, Any, str]]:
    """Run a plug-in check on each concrete variant of a section's leaf spaces (bounds included)."""
    out: list[tuple[str, Any, str]] = []
    malformed = False
    for key, value in section.items():
        if is_space(value):
            form = _check_space_form(key, value)
            out += [(key, pr.value, pr.message) for pr in form]
            malformed = malformed or bool(form)
            for candidate in [] if form else space_candidates(value):
                out += check({**section, key: candidate})
    if not malformed:  # a malformed space has no candidates to try
        out += check(
            {k: (space_candidates(v)[0] if is_space(v) else v) for k, v in section.items()}
        )
    return _dedupe_tuples(out)


def _check_recipe(path: str, steps: list[Any]) -> list[Problem]:
    out: list[Problem] = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            out.append(
                Problem(f"{path}[{i}]", step, "each recipe step must be a mapping with 'step'")
            )
            continue
        for sub, value, msg in _check_nested(step, lambda s: check_recipe([s])):
            out.append(
                Problem(_join(f"{path}[{i}]", sub.removeprefix("[0]").lstrip(".")), value, msg)
            )
    order = check_qat_order([_qat_if_possible(s) for s in steps])
    out += [Problem(f"{path}{sub}", value, msg) for sub, value, msg in order]
    return _dedupe(out)


def _qat_if_possible(step: Any) -> Any:
    """A step as the order check must see it: quantize mode ``qat`` if any sample can be."""
    mode = step.get("mode") if isinstance(step, dict) else None
    if not isinstance(mode, dict) or not is_space(mode):
        return step
    can_be_qat = not _check_space_form("mode", mode) and "qat" in space_candidates(mode)
    return {**step, "mode": "qat" if can_be_qat else None}


def _check_search(s: SearchSpec, spec: ExperimentSpec) -> list[Problem]:
    p = _leaf("search.num_samples", s.num_samples, _positive_int)
    p += _leaf("search.scheduler", s.scheduler, _one_of(SCHEDULERS))
    p += _leaf("search.searcher", s.searcher, _one_of(SEARCHERS))
    p += _leaf(
        "search.metric",
        s.metric,
        lambda v: None if isinstance(v, str) and v else f"must be a metric name, got {v!r}",
    )
    p += _leaf("search.mode", s.mode, _one_of(("max", "min")))
    p += _leaf("search.grace_period", s.grace_period, _positive_int)
    if s.max_concurrent is not None:
        p += _leaf("search.max_concurrent", s.max_concurrent, _positive_int)
    kinds = set(_space_kinds(spec))
    if s.searcher in MODEL_BASED and "grid" in kinds:
        p.append(
            Problem(
                "search.searcher",
                s.searcher,
                f"{s.searcher} cannot run grid spaces; use choice, or set search.searcher: random",
            )
        )
    if s.searcher == "grid" and kinds & {"uniform", "loguniform", "randint"}:
        p.append(
            Problem(
                "search.searcher",
                s.searcher,
                "grid can only enumerate choice and grid "
                "spaces; this spec has ranges (uniform/loguniform/randint)",
            )
        )
    p += _check_warm_start(s)
    if s.searcher in MULTI_OBJECTIVE and len(spec.promotion.objectives or []) < 2:
        p.append(
            Problem(
                "search.searcher",
                s.searcher,
                "searches the Pareto front of promotion.objectives and needs two or more "
                "of them; with one objective use searcher: optuna",
            )
        )
    if s.scheduler == "pbt" and s.searcher != "random":
        p.append(
            Problem(
                "search.scheduler", s.scheduler, "pbt mutates trials itself; use searcher: random"
            )
        )
    return p


WARM_START_KEYS = ("experiment", "top", "rerun")


def _check_warm_start(s: SearchSpec) -> list[Problem]:
    w = s.warm_start
    if w is None:
        return []
    if not isinstance(w, dict):
        return [
            Problem(
                "search.warm_start", w, "must be a mapping {experiment: NAME, top: K, rerun: R}"
            )
        ]
    p = [
        Problem(f"search.warm_start.{k}", w[k], f"unknown key; valid: {', '.join(WARM_START_KEYS)}")
        for k in sorted(set(w) - set(WARM_START_KEYS))
    ]
    name = w.get("experiment")
    if not isinstance(name, str) or not NAME_RE.match(name):
        p.append(Problem("search.warm_start.experiment", name, "must be an experiment's name"))
    if "top" in w:
        p += _leaf("search.warm_start.top", w["top"], _positive_int)
    if "rerun" in w:
        p += _leaf("search.warm_start.rerun", w["rerun"], _non_negative_int)
    if s.searcher not in MODEL_BASED:
        p.append(
            Problem(
                "search.warm_start",
                w,
                f"searcher {s.searcher!r} does not learn from earlier trials; use one of: "
                + ", ".join(MODEL_BASED),
            )
        )
    return p


def _space_kinds(spec: ExperimentSpec) -> Iterator[str]:
    def walk(v: Any) -> Iterator[str]:
        if is_space(v):
            yield space_kind(v)
            for c in space_candidates(v):
                yield from walk(c)
        elif isinstance(v, dict):
            for x in v.values():
                yield from walk(x)
        elif isinstance(v, list):
            for x in v:
                yield from walk(x)

    for section in (spec.task, spec.model, spec.optimizer, spec.training, spec.recipe):
        yield from walk(section)


AUTO_GPU = "auto"  # resources.gpu: the runner measures a trial and picks its share of a GPU


def _check_resources(r: ResourcesSpec) -> list[Problem]:
    nonneg = lambda v: None if _is_number(v) and v >= 0 else f"must be a number >= 0, got {v!r}"  # noqa: E731
    p = _leaf("resources.cpu", r.cpu, nonneg) + _leaf("resources.gpu", r.gpu, _gpu_amount)
    p += _leaf("resources.tpu", r.tpu, nonneg)
    amounts = (r.cpu, r.gpu, r.tpu)  # gpu: auto is always some GPU
    if all(_is_number(v) for v in amounts) and sum(amounts) == 0:  # type: ignore[arg-type]
        p.append(Problem("resources.cpu", r.cpu, "a trial needs at least some cpu, gpu or tpu"))
    if r.memory_mb is not None:
        p += _leaf("resources.memory_mb", r.memory_mb, _positive_int)
    return p


def _gpu_amount(v: Any) -> str | None:
    if v == AUTO_GPU or (_is_number(v) and v >= 0):
        return None
    return f"must be a number >= 0 or {AUTO_GPU!r}, got {v!r}"


def _check_promotion(pr: PromotionSpec) -> list[Problem]:
    p = []
    if pr.model_name is not None and (
        not isinstance(pr.model_name, str) or not NAME_RE.match(pr.model_name)
    ):
        p.append(
            Problem(
                "promotion.model_name",
                pr.model_name,
                f"{pr.model_name!r}: a registered model's name starts with a letter or digit, "
                "then letters, digits, '_', '.', '-' (at most 100)",
            )
        )
    if (
        not isinstance(pr.alias, str)
        or not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", pr.alias)
        or re.match(r"^v\d+$", pr.alias)
        or pr.alias == "latest"
    ):
        p.append(
            Problem(
                "promotion.alias",
                pr.alias,
                "an alias is a name like 'champion' (not 'latest' nor v<number>)",
            )
        )
    p += [Problem(_join("promotion", k), v, m) for k, v, m in check_policy(asdict(pr))]
    p += _leaf("promotion.selection_split", pr.selection_split, _one_of(("validation", "test")))
    return p


def _check_strings(section: str, values: dict[str, Any]) -> list[Problem]:
    return [
        Problem(f"{section}.{k}", v, f"must be a string, got {v!r}")
        for k, v in values.items()
        if v is not None and not isinstance(v, str)
    ]


def _storage_location(v: Any) -> str | None:
    # A folder, or an object-store URI Podium reads and writes through pyarrow's file systems
    # (workers.storage); checked without I/O.
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        return f"must be a folder or an object-store URI (s3://BUCKET/PREFIX), got {v!r}"
    from workers.storage import location_problem

    return location_problem(v)


def _positive_int(v: Any) -> str | None:
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return None
    return f"must be a positive integer, got {v!r}"


def _non_negative_int(v: Any) -> str | None:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return None
    return f"must be a whole number 0 or more, got {v!r}"


def _one_of(valid: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in valid else f"{v!r} is not one of: {', '.join(valid)}"


def _join(prefix: str, key: str) -> str:
    if not key:
        return prefix
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for pr in problems:
        k = (pr.path, repr(pr.value), pr.message)
        if k not in seen:
            seen.add(k)
            out.append(pr)
    return out


def _dedupe_tuples(items: list[tuple[str, Any, str]]) -> list[tuple[str, Any, str]]:
    return [(p.path, p.value, p.message) for p in _dedupe([Problem(*t) for t in items])]
