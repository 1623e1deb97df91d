"""Compression recipes (spec ``recipe``): an ordered list of steps, each ``{step: NAME, ...}``.

Steps: ``prune`` (l1_unstructured, global_magnitude, structured), ``distill`` (a student trained on
a teacher's softened outputs), ``quantize`` (int8 with ONNX Runtime: dynamic or static), ``export``
(ONNX always; TorchScript on request). After each step the model is exported and measured, so a
user sees where each gain came from.

Contract used by the spec and the trial:
    check_recipe(steps: list) -> list[tuple[str, object, str]]   # (path under recipe, value, msg)
    run_recipe(steps, model, data, ctx) -> RecipeResult | None     # None for an empty recipe

Example spec::

    recipe:
      - {step: prune, method: structured, sparsity: {choice: [0.5, 0.75]}, finetune_epochs: 2}
      - {step: quantize, mode: static, calibration_batches: 8}
"""

from __future__ import annotations

from workers.recipes import _distill, _export, _prune, _quantize  # noqa: F401  (register steps)
from workers.recipes._base import STEPS, RecipeContext, RecipeState, StepEntry
from workers.recipes._distill import is_registry_teacher
from workers.recipes._run import RecipeResult, check_recipe, coerce_context, run_recipe

__all__ = [
    "STEPS",
    "RecipeContext",
    "RecipeResult",
    "RecipeState",
    "StepEntry",
    "check_recipe",
    "coerce_context",
    "is_registry_teacher",
    "registry_teachers",
    "run_recipe",
]


def registry_teachers(steps: list | None) -> list[str]:
    """The ``models:/`` teacher URIs a concrete (or candidate) recipe names: what the driver must
    resolve before trials start."""
    return [
        s["teacher"]
        for s in steps or []
        if isinstance(s, dict) and is_registry_teacher(s.get("teacher"))
    ]
