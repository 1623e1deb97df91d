"""The spec's checks that need its plug-ins and its task: run by ``parse_spec`` once the spec is
valid on its own face.

- every ``module:function`` imports, exists, is callable and has the signature Podium calls
  (:mod:`orchestrator.spec.plugins`);
- the task loads and follows the protocol (``workers.tasks``); its kind sets the defaults of
  ``search.metric``/``mode`` and ``promotion.objectives`` when the spec leaves them out;
- each model section's keys are the settings its builder's signature takes (a plug-in's own
  hyperparameters included), and the builder's defaults are filled in;
- every metric the spec names (``search.metric``, objectives, constraints) is one the trials will
  report, and the message lists those they do.

Example:
    >>> from orchestrator.spec import SpecError, parse_spec
    >>> try:
    ...     parse_spec({"name": "d", "task": "digits", "search": {"metric": "val_rmse"}})
    ... except SpecError as e:
    ...     print(e.problems[0].message[:69])
    task 'digits' (classification) does not report 'val_rmse' every epoch
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import Problem
from orchestrator.spec.plugins import make_importable, plugin_refs, ref_problem, resolve, sections
from orchestrator.spec.spaces import is_space, space_candidates
from tracking import keys
from tracking.constraints import parse_constraint
from workers.models import MODELS
from workers.registry import declared_settings, is_plugin_ref
from workers.tasks import TASKS, check_task_data

# What a trial reports besides its task's metrics: at the end always, and with a recipe.
MODEL_FACTS = (keys.PARAM_COUNT, keys.NONZERO_PARAMS, keys.MODEL_SIZE_BYTES, keys.TRAIN_TIME_S)
RECIPE_FACTS = (
    keys.LATENCY_MS_P50,
    keys.LATENCY_MS_P95,
    keys.THROUGHPUT_SPS,
    keys.MEASURE_THREADS,
    *keys.COMPRESSION_METRICS,
)


@dataclass(frozen=True)
class TaskInfo:
    """What the driver keeps of a task it loaded: no data."""

    name: str
    kind: str
    modes: Mapping[str, str]  # every val_/test_ metric it reports, with its mode
    primary: str
    extra_keys: frozenset[str]
    in_memory: bool
    inputs: int = 1  # how many tensors its models take


def check_with_task(spec: Any, raw: dict[str, Any], check_model: bool = True) -> list[Problem]:
    """Problems only the spec's plug-ins and task can show; fills the defaults that depend on
    them into ``spec`` (``raw`` tells which settings the spec gave). ``check_model``: also check
    the model sections against their builders (not when they have problems of their own)."""
    make_importable(spec.plugin_roots)
    problems = [
        Problem(path, ref, msg)
        for path, ref, kind in plugin_refs(spec)
        if (msg := ref_problem(ref, kind))
    ]
    if problems:
        return problems
    infos, problems = _load_tasks(spec)
    if problems:
        return problems
    problems += _check_modelsections(spec, infos)
    kinds = {i.kind for i in infos}
    if len(kinds) > 1:
        return [
            *problems,
            Problem(
                "task", spec.task, f"a choice of tasks must share one kind, got {sorted(kinds)}"
            ),
        ]
    _fill_kind_defaults(spec, raw, infos[0])
    problems += _check_metrics(spec, infos)
    problems += _check_kind_fits(spec, infos)
    return problems


# --------------------------------------------------------------------------- the task


def _load_tasks(spec: Any) -> tuple[list[TaskInfo], list[Problem]]:
    names = space_candidates(spec.task) if is_space(spec.task) else [spec.task]
    infos, problems = [], []
    for name in names:
        try:
            infos.append(describe_task(name, spec.training_seed()))
        except TaskLoadError as e:
            problems.append(Problem("task", name, str(e)))
    return infos, problems


class TaskLoadError(Exception):
    """The task could not be loaded in the driver, or does not follow the protocol."""


@functools.lru_cache(maxsize=32)
def describe_task(name: str, seed: int) -> TaskInfo:
    """Load task ``name`` once and keep what the spec's checks need (the data is let go).

    Raises:
        TaskLoadError: the builder raised, or returned something that breaks the protocol.
    """
    builder = resolve(name) if is_plugin_ref(name) else TASKS.get(name)
    try:
        data = builder(seed)
    except Exception as e:  # noqa: BLE001 - any failure of the task's code is the user's to see
        raise TaskLoadError(
            f"loading task {name!r} in the driver failed: {type(e).__name__}: {e}"
        ) from e
    broken = check_task_data(data)
    if broken:
        raise TaskLoadError(f"task {name!r} " + "; ".join(broken))
    return TaskInfo(
        name,
        data.kind,
        data.metric_modes_all(),
        data.primary_metric(),
        frozenset(data.extra),
        data.in_memory,
        data.input_count,
    )


def _fill_kind_defaults(spec: Any, raw: dict[str, Any], info: TaskInfo) -> None:
    """Defaults that follow the task's kind: ``search.metric`` (``val_`` + the kind's primary
    metric), ``search.mode`` (that metric's mode) and ``promotion.objectives`` (``test_`` +
    primary)."""
    given_search = raw.get("search") or {}
    given_promotion = raw.get("promotion") or {}
    if "metric" not in given_search:
        spec.search.metric = f"val_{info.primary}"
    if "mode" not in given_search and spec.search.metric in _epoch_metrics(spec, info):
        spec.search.mode = _epoch_metrics(spec, info)[spec.search.metric]
    if "objectives" not in given_promotion:
        metric = f"test_{info.primary}"
        spec.promotion.objectives = [{"metric": metric, "mode": info.modes[metric]}]


# --------------------------------------------------------------------------- metrics


def _epoch_metrics(spec: Any, info: TaskInfo) -> dict[str, str]:
    """Metric → mode for what a trial reports every epoch (what schedulers can act on)."""
    out = {keys.TRAIN_LOSS: "min", **{k: m for k, m in info.modes.items() if k.startswith("val_")}}
    if _adversarial(spec):
        out[keys.ROBUST_ACCURACY] = "max"
    return out


def _final_metrics(spec: Any, info: TaskInfo) -> set[str]:
    out = set(_epoch_metrics(spec, info)) | set(info.modes) | set(MODEL_FACTS)
    if spec.recipe:
        out |= set(RECIPE_FACTS)
    if _adversarial(spec):
        out.add(keys.TEST_ROBUST_ACCURACY)
    return out


def _adversarial(spec: Any) -> bool:
    section = spec.training if isinstance(spec.training, dict) else {}
    return section.get("adversarial") is not None and not is_space(section)


def _check_metrics(spec: Any, infos: list[TaskInfo]) -> list[Problem]:
    p = []
    for info in infos:
        per_epoch = _epoch_metrics(spec, info)
        if isinstance(spec.search.metric, str) and spec.search.metric not in per_epoch:
            p.append(
                Problem(
                    "search.metric",
                    spec.search.metric,
                    f"task {info.name!r} ({info.kind}) does not report {spec.search.metric!r} "
                    f"every epoch; it reports: {', '.join(sorted(per_epoch))}",
                )
            )
        final = _final_metrics(spec, info)
        named = [
            (f"promotion.objectives[{i}].metric", o.get("metric"))
            for i, o in enumerate(spec.promotion.objectives)
            if isinstance(o, dict)
        ]
        for i, text in enumerate(spec.promotion.constraints):
            try:
                named.append((f"promotion.constraints[{i}]", parse_constraint(text).metric))
            except ValueError:
                continue  # its grammar is reported by the promotion checks
        for path, metric in named:
            if metric in final or str(metric).startswith(keys.RECIPE_PREFIX) and spec.recipe:
                continue
            hint = " (measured only with a recipe)" if metric in RECIPE_FACTS else ""
            p.append(
                Problem(
                    path,
                    metric,
                    f"task {info.name!r} ({info.kind}) trials do not report {metric!r}{hint}; "
                    f"they report: {', '.join(sorted(final))}",
                )
            )
    return p


def _check_kind_fits(spec: Any, infos: list[TaskInfo]) -> list[Problem]:
    p = []
    for info in infos:
        if _adversarial(spec) and info.kind != "classification":
            p.append(
                Problem(
                    "training.adversarial",
                    spec.training["adversarial"],
                    f"adversarial training attacks a classifier; task {info.name!r} is {info.kind}",
                )
            )
        smoothing = spec.training.get("label_smoothing") if isinstance(spec.training, dict) else 0
        if smoothing and info.kind != "classification":
            p.append(
                Problem(
                    "training.label_smoothing",
                    smoothing,
                    f"smooths a classifier's targets; task {info.name!r} is {info.kind}",
                )
            )
        p += _one_input_only(spec, info)
    return p


def _one_input_only(spec: Any, info: TaskInfo) -> list[Problem]:
    """What takes one input tensor, against a task of several: built-in architectures,
    compression recipes, adversarial training."""
    if info.inputs == 1:
        return []
    why = f"task {info.name!r} gives {info.inputs} input tensors"
    p = []
    for path, section in sections("model", spec.model):
        arch = section.get("arch", "mlp")
        for a in space_candidates(arch) if is_space(arch) else [arch]:
            if not is_plugin_ref(a):
                p.append(
                    Problem(
                        f"{path}.arch",
                        a,
                        f"built-in architecture {a!r} takes one input tensor; {why}: use a "
                        "model plug-in (module:function) whose forward takes them all",
                    )
                )
    if spec.recipe:
        p.append(Problem("recipe", spec.recipe, f"recipes take one input tensor; {why}"))
    if _adversarial(spec):
        p.append(
            Problem(
                "training.adversarial",
                spec.training["adversarial"],
                f"adversarial training perturbs one input tensor; {why}",
            )
        )
    return p


# --------------------------------------------------------------------------- model sections


def _check_modelsections(spec: Any, infos: list[TaskInfo]) -> list[Problem]:
    """Each model section's keys against its builders' signatures; fills builder defaults."""
    p: list[Problem] = []
    extra = frozenset.intersection(*(i.extra_keys for i in infos))
    for path, section in sections("model", spec.model):
        arch = section.get("arch", "mlp")
        archs = space_candidates(arch) if is_space(arch) else [arch]
        settings = [(a, *declared_settings(_builder(a))) for a in archs]
        for key in sorted(set(section) - {"arch", keys.MODEL_OUTPUT}):
            if not any(key in declared or takes_any for _, declared, takes_any in settings):
                valid = sorted({"arch", *(k for _, d, _ in settings for k in d)})
                names = "/".join(str(a) for a in archs)
                p.append(
                    Problem(
                        f"{path}.{key}",
                        section[key],
                        f"unknown key {key!r} for arch {names}; valid: {', '.join(valid)}",
                    )
                )
        for a, declared, _ in settings:
            for name, default in declared.items():
                if name in section or name in extra:
                    continue
                if default is inspect.Parameter.empty:
                    p.append(
                        Problem(
                            f"{path}.{name}",
                            None,
                            f"arch {a!r} needs {name!r} (it has no default) and the task does "
                            f"not provide it; set model.{name}",
                        )
                    )
                elif len(archs) == 1 and _plain(default):
                    section[name] = _listed(default)  # validate prints every default
    return p


def _builder(arch: str) -> Any:
    return resolve(arch) if is_plugin_ref(arch) else MODELS.get(arch)


def _plain(v: Any) -> bool:
    """A default that reads back from YAML as itself: a scalar or a list/tuple of them."""
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


def _listed(v: Any) -> Any:
    return [_listed(x) for x in v] if isinstance(v, (list, tuple)) else v
