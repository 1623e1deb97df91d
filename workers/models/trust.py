"""Model metadata from outside (a registry version's ``arch.json``, a teacher's file) checked before
anything is rebuilt: a built-in architecture, or a ``module:function`` from a module the operator
named, and plain data everywhere else. What a registry holds is data, never code."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from torch import nn

from tracking.errors import UntrustedModelError
from workers import inputs
from workers.models.catalogue import MODELS, build_model
from workers.registry import parse_plugin_ref


def check_model_metadata(cfg: Any, plugins: Collection[str] = ()) -> str | None:
    """Why ``cfg`` (an ``arch.json``: ``{model, input_shape, num_classes, extra}``) must not be
    rebuilt, or None. Decided before any import: what a registry holds is data, never code.

    The architecture must be a built-in one, or a ``module:function`` whose module the operator
    named (``plugins``: modules, or whole references); every other value must be plain data.

    Example:
        >>> forged = {"model": {"arch": "subprocess:Popen"}, "input_shape": [4], "num_classes": 2}
        >>> check_model_metadata(forged)[:59]
        "arch 'subprocess:Popen' is not a built-in architecture and "
    """
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        return "arch.json must be a mapping with a 'model' section"
    arch = cfg["model"].get("arch", "mlp")
    if not isinstance(arch, str):
        return f"arch must be a name, got {arch!r}"
    allowed = set(plugins)
    ref = parse_plugin_ref(arch)
    if arch not in MODELS and not (ref and (ref[0] in allowed or arch in allowed)):
        return (
            f"arch {arch!r} is not a built-in architecture and its module was not named as a "
            "plug-in (podium serve --plugins MODULE)"
        )
    shape = cfg.get("input_shape")
    if not (isinstance(shape, list) and shape and inputs.shapes(shape) is not None):
        return (
            "input_shape must be a list of positive integers (or one such list per input "
            f"tensor), got {shape!r}"
        )
    classes = cfg.get("num_classes")
    if not (isinstance(classes, int) and not isinstance(classes, bool) and classes >= 1):
        return f"num_classes must be an integer >= 1, got {classes!r}"
    if not isinstance(cfg.get("extra") or {}, dict):
        return f"extra must be a mapping, got {cfg.get('extra')!r}"
    return None


def build_from_metadata(cfg: Any, plugins: Collection[str] = ()) -> nn.Module:
    """Rebuild the architecture an untrusted ``arch.json`` describes, once
    :func:`check_model_metadata` has passed it.

    Raises:
        UntrustedModelError: the metadata names code that was not allowed, or is malformed.
    """
    problem = check_model_metadata(cfg, plugins)
    if problem:
        raise UntrustedModelError(problem)
    return build_model(
        cfg["model"], inputs.as_shape(cfg["input_shape"]), cfg["num_classes"], cfg.get("extra")
    )


def guarded_builder(plugins: Collection[str] = ()) -> Callable[..., nn.Module]:
    """``build_model``'s signature, for metadata from outside (``tracking.serving.server`` calls it
    with ``arch.json``'s values as they are): :func:`build_from_metadata` with ``plugins``."""

    def build(section: Any, input_shape: Any, num_classes: Any, extra: Any = None) -> nn.Module:
        cfg = {"model": section, "input_shape": input_shape, "num_classes": num_classes}
        return build_from_metadata({**cfg, "extra": extra}, plugins)

    return build
