"""Compression recipes (spec ``recipe``): an ordered list of steps, each ``{step: NAME, ...}``.

Steps: ``prune`` (l1_unstructured, global_magnitude, structured), ``distill`` (a student trained on
a teacher's softened outputs), ``fold`` (a bag text model's head Linear multiplied into its
embedding table: exact, no training), ``quantize`` (int8 with ONNX Runtime: dynamic, static, or
``qat``: static after quantization-aware fine-tuning), ``export`` (ONNX always; TorchScript on
request).
After each step the model is exported and measured, so a user sees where each gain came from.

Contract used by the spec and the trial:
    check_recipe(steps: list) -> list[tuple[str, object, str]]   # (path under recipe, value, msg)
    run_recipe(steps, model, data, ctx) -> RecipeResult | None     # None for an empty recipe

Example spec::

    recipe:
      - {step: prune, method: structured, sparsity: {choice: [0.5, 0.75]}, finetune_epochs: 2}
      - {step: quantize, mode: qat, qat_epochs: 2, calibration_batches: 8}
"""

from __future__ import annotations

from workers.recipes import _distill, _export, _fold, _prune, _quantize  # noqa: F401 (steps)
from workers.recipes._base import STEPS, RecipeContext, RecipeState, StepEntry
from workers.recipes._distill import is_registry_teacher
from workers.recipes._quantize import check_qat_order
from workers.recipes._run import RecipeResult, check_recipe, coerce_context, run_recipe

__all__ = [
    "STEPS",
    "RecipeContext",
    "RecipeResult",
    "RecipeState",
    "StepEntry",
    "check_recipe",
    "check_qat_order",
    "coerce_context",
    "is_registry_teacher",
    "registry_teachers",
    "run_recipe",
]


def registry_teachers(recipe: object) -> list[str]:
    """Every ``models:/`` teacher URI a recipe can use, search spaces included (each candidate of
    a ``choice``/``grid``): what the driver must check and fetch before trials start.

    Example:
        >>> registry_teachers({"choice": [[{"step": "distill", "teacher": "models:/m@champion"}],
        ...                               [{"step": "quantize"}]]})
        ['models:/m@champion']
    """
    found: list[str] = []

    def walk(node: object, key: str | None = None) -> None:
        if key == "teacher" and is_registry_teacher(node):
            found.append(node)  # type: ignore[arg-type]
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k if k == "teacher" else (key if k in ("choice", "grid") else k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)

    walk(recipe)
    return list(dict.fromkeys(found))
