"""Compression recipes (spec ``recipe``): an ordered list of steps, each ``{step: NAME, ...}``.

Contract used by the trial:
    check_recipe(steps: list) -> list[tuple[str, object, str]]   # (path under recipe, value, msg)
    run_recipe(steps, model, data, ctx) -> RecipeResult | None     # None for an empty recipe
The foundation registers no step; the compression issue adds prune, distill, quantize, export.
"""

from __future__ import annotations

from typing import Any

from workers.registry import Registry

STEPS: Registry[Any] = Registry("recipe.step")


def check_recipe(steps: list[Any] | None) -> list[tuple[str, Any, str]]:
    problems: list[tuple[str, Any, str]] = []
    for i, step in enumerate(steps or []):
        name = step.get("step") if isinstance(step, dict) else None
        if name not in STEPS:
            problems.append((f"[{i}].step", name, f"{name!r} is not one of: {', '.join(STEPS.names())}"))
    return problems


def run_recipe(steps, model, data, ctx):  # noqa: ANN001, ANN201
    if steps:
        raise NotImplementedError("no recipe steps are registered")
    return None
