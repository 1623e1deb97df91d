"""Registry teachers: a ``distill`` step whose teacher is a registered model (``models:/...``).

The driver checks that each one resolves and downloads it once, before Ray starts, to where the
trials' checkpoints go; a teacher whose metadata names code the spec does not name is refused
(a spec error), since loading it would run that code in every trial. Workers never talk to MLflow.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from orchestrator.errors import Problem, SpecError
from orchestrator.spec import ExperimentSpec
from orchestrator.spec.plugins import plugin_refs
from tracking import keys
from workers import storage
from workers.models import check_model_metadata
from workers.recipes import registry_teachers


def check_registry_teachers(spec: ExperimentSpec, uri: str) -> None:
    """Registry teachers (``distill`` from ``models:/...``) must resolve before anything starts.

    Raises:
        SpecError: each teacher URI that does not resolve in the tracking store.
    """
    from tracking.teachers import check_teacher

    problems = [
        Problem("recipe.teacher", t, msg)
        for t in registry_teachers(spec.recipe)
        if (msg := check_teacher(t, uri))
    ]
    if problems:
        raise SpecError(problems)


def fetch_registry_teachers(
    spec: ExperimentSpec, uri: str, workdir: str | os.PathLike
) -> dict[str, str]:
    """Download registry teachers once, in the driver: workers never talk to MLflow.

    They go where the trials' checkpoints go: beside them in a folder (every node of a cluster
    mounts ``cluster.storage_path``), or uploaded to object storage, from which each trial
    process downloads them once.
    """

    uris = registry_teachers(spec.recipe)
    if not uris:
        return {}
    shared = spec.cluster.storage_path
    if not (shared and storage.is_uri(shared)):
        base = Path(shared or Path(workdir, "podium-runs")).resolve()
        return _trusted_teachers(spec, uris, uri, base / "teachers")
    with tempfile.TemporaryDirectory(prefix="podium-teachers-") as tmp:
        fetched = _trusted_teachers(spec, uris, uri, Path(tmp))
        out = {}
        for teacher, folder in fetched.items():
            out[teacher] = storage.join(storage.normalise(shared), "teachers", Path(folder).name)
            storage.upload(folder, out[teacher])
        return out


def _trusted_teachers(spec: ExperimentSpec, uris: list[str], uri: str, dst: Path) -> dict[str, str]:
    """Registry teachers downloaded into ``dst``, refused (a spec error) where their metadata
    names code this spec does not."""
    from tracking.teachers import fetch_teachers

    fetched = fetch_teachers(uris, uri, dst)
    problems = [
        Problem("recipe.teacher", teacher, why)
        for teacher, folder in fetched.items()
        if (why := untrusted_teacher(Path(folder), own_plugins(spec)))
    ]
    if problems:
        raise SpecError(problems)
    return fetched


def own_plugins(spec: ExperimentSpec) -> tuple[str, ...]:
    """The ``module:function`` references the spec itself names: the only code a registry
    teacher's metadata may name."""

    return tuple(dict.fromkeys(ref for _, ref, _ in plugin_refs(spec)))


def untrusted_teacher(folder: Path, plugins: tuple[str, ...]) -> str | None:
    """Why a downloaded teacher must not be used, or None. Its ONNX file needs no code; without
    one, its ``arch.json`` may name only a built-in architecture or one of ``plugins``."""

    if any(folder.rglob("*.onnx")):
        return None
    arch = next(folder.rglob(keys.ARCH_ARTIFACT), None)
    if arch is None:
        return None  # no rebuildable metadata: the trial reports what the folder lacks
    try:
        cfg = json.loads(arch.read_text())
    except (OSError, ValueError) as e:
        return f"its {keys.ARCH_ARTIFACT} is not JSON: {e}"
    why = check_model_metadata(cfg, plugins)
    return f"refusing its {keys.ARCH_ARTIFACT}: {why}" if why else None
