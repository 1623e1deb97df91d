"""A spec's plug-ins (``module:function``), resolved in the driver before anything starts.

A team's task and model live in its own folder, beside its spec. The driver imports them from,
in this order (the first that has the module wins):

1. the spec file's folder (``podium run ../team/spec.yaml`` finds ``../team/mytasks.py``);
2. the working directory;
3. the installed packages.

Each reference is checked here — the module imports, the attribute exists and can be called,
its signature takes what Podium passes (a task: the split seed; a model: ``input_shape,
num_classes`` plus the section's settings) — and every problem is a spec error naming the field
and the reference, before Ray or MLflow start. The task is then loaded once, so the spec's
metrics can be checked against the ones its trials will report.

The trials import the same modules: a local Ray's workers get the folders on ``PYTHONPATH``; on
a cluster (``--address``, ``ray://``) the modules' files travel with the job as Ray's
``runtime_env`` ``py_modules`` (:func:`runtime_env_for`).

Example:
    >>> ref_problem("os:sep", "task")
    "'os:sep' is a str, not a function"
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from orchestrator.spec.spaces import is_space, space_candidates
from workers.registry import is_plugin_ref, parse_plugin_ref

# What Podium passes each kind of plug-in, for the signature check (a bind, nothing called).
_CALLS = {
    "task": ((0,), "def NAME(seed) -> TaskData"),
    "model": (((4,), 2), "def NAME(input_shape, num_classes, **settings) -> nn.Module"),
}


def import_roots(spec_dir: str | os.PathLike | None) -> list[str]:
    """The folders plug-ins are imported from, first wins: the spec's folder, then the working
    directory (both resolved; one entry if they are the same)."""
    roots = [Path(spec_dir).resolve()] if spec_dir is not None else []
    roots.append(Path.cwd().resolve())
    return list(dict.fromkeys(str(r) for r in roots))


def make_importable(roots: Iterable[str]) -> None:
    """Put ``roots`` first on this process's ``sys.path``, in order, and on ``PYTHONPATH`` for
    the processes it starts (a local Ray's workers inherit it)."""
    roots = list(roots)
    for root in reversed(roots):
        if root in sys.path:
            sys.path.remove(root)
        sys.path.insert(0, root)
    known = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*roots, *known]))
    importlib.invalidate_caches()


def resolve(ref: str) -> Any:
    """The object ``module:attr`` names (importing the module).

    Raises:
        PluginError: the module does not import, or has no such attribute.
    """
    parsed = parse_plugin_ref(ref)
    if parsed is None:
        raise PluginError(f"{ref!r} is not a plug-in reference (module:function)")
    module_name, attr = parsed
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any failure of the user's module is reported as such
        where = ", ".join(sys.path[:2])
        raise PluginError(
            f"cannot import module {module_name!r}: {type(e).__name__}: {e} "
            f"(looked first in {where}, then the installed packages)"
        ) from e
    try:
        return getattr(module, attr)
    except AttributeError:
        origin = getattr(module, "__file__", None) or module_name
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:12]
        raise PluginError(
            f"module {module_name!r} ({origin}) has no attribute {attr!r}; "
            f"it has: {', '.join(public) or 'nothing public'}"
        ) from None


class PluginError(Exception):
    """A plug-in reference that cannot be used; the message says why."""


def ref_problem(ref: str, kind: str) -> str | None:
    """Why ``ref`` cannot serve as a ``kind`` plug-in (``task`` or ``model``), or None."""
    try:
        fn = resolve(ref)
    except PluginError as e:
        return str(e)
    if not callable(fn):
        return f"{ref!r} is a {type(fn).__name__}, not a function"
    return signature_problem(fn, ref, kind)


def signature_problem(fn: Callable[..., Any], ref: str, kind: str) -> str | None:
    """Why ``fn`` cannot be called the way Podium calls a ``kind`` plug-in, or None."""
    args, expected = _CALLS[kind]
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: it is tried at run time
    try:
        # A model's own settings come from the spec (checked against the section separately).
        (sig.bind_partial if kind == "model" else sig.bind)(*args)
    except TypeError as e:
        name = getattr(fn, "__name__", ref)
        return (
            f"{ref!r} cannot be called as {expected.replace('NAME', name)}: "
            f"its signature is {name}{sig} ({e})"
        )
    return None


def plugin_refs(spec: Any) -> Iterator[tuple[str, str, str]]:
    """``(spec path, reference, kind)`` for every plug-in the spec names, in any branch of a
    search space: the task, the model's arch, a distilled student's arch."""
    for ref in _strings(spec.task):
        if is_plugin_ref(ref):
            yield "task", ref, "task"
    for path, section in sections("model", spec.model):
        for ref in _strings(section.get("arch")):
            if is_plugin_ref(ref):
                yield f"{path}.arch", ref, "model"
    steps = spec.recipe if isinstance(spec.recipe, list) else []
    for i, step in enumerate(steps):
        if isinstance(step, dict) and step.get("step") == "distill":
            for ref in _strings(step.get("arch")):
                if is_plugin_ref(ref):
                    yield f"recipe[{i}].arch", ref, "model"


def sections(path: str, value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """A section, or each branch of a choice of sections, with its spec path."""
    if is_space(value):
        for i, branch in enumerate(space_candidates(value)):
            yield from sections(f"{path}[{i}]", branch)
    elif isinstance(value, dict):
        yield path, value


def _strings(value: Any) -> list[str]:
    """A value, or a space's candidates, that are strings."""
    values = space_candidates(value) if is_space(value) else [value]
    return [v for v in values if isinstance(v, str)]


def module_paths(refs: Iterable[str]) -> list[str]:
    """The files or package folders of the modules ``refs`` name that are not installed
    packages: what a cluster's workers need shipped (``runtime_env`` ``py_modules``)."""
    out = []
    for ref in refs:
        top = (parse_plugin_ref(ref) or (ref, ""))[0].split(".")[0]
        module = sys.modules.get(top) or importlib.import_module(top)
        origin = getattr(module, "__file__", None)
        if origin is None:
            continue
        path = Path(origin)
        path = path.parent if path.name == "__init__.py" else path
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            continue  # installed on the workers as on the driver (the project's own image)
        out.append(str(path))
    return list(dict.fromkeys(out))


def runtime_env_for(spec: Any) -> dict[str, Any] | None:
    """The ``runtime_env`` that ships the spec's plug-in modules to a cluster's workers; None
    when it names none (or only installed packages)."""
    modules = module_paths(ref for _, ref, _ in plugin_refs(spec))
    return {"py_modules": modules} if modules else None
