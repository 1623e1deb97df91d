from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from workers.registry import Registry

# How the training loop feeds an optimizer: "minibatch" uses training.batch_size (default 64),
# "full" takes one step per epoch on the whole training set (gd, cg), "single" defaults the batch
# size to 1 (classic sgd) unless the spec sets training.batch_size.
BatchMode = Literal["minibatch", "full", "single"]


@dataclass(frozen=True)
class HParam:
    """One optimizer hyperparameter: its default, type and allowed closed range.

    ``kind`` is ``float``, ``int``, ``bool``, ``str`` or ``tuple`` (a pair of floats, e.g. betas);
    ``choices`` restricts a ``str``.
    """

    default: Any
    doc: str
    kind: type = float
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> str | None:
        """Returns a problem description, or None if ``value`` is acceptable."""
        if self.kind is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.kind is str:
            if self.choices and value not in self.choices:
                return f"{value!r} is not one of: {', '.join(self.choices)}"
            return None
        if self.kind is tuple:
            ok = isinstance(value, (list, tuple)) and len(value) == 2
            if not ok or not all(_is_number(v) for v in value):
                return f"must be a pair of numbers, got {value!r}"
            return next((p for p in (self._range(v) for v in value) if p), None)
        if not _is_number(value) or (self.kind is int and not float(value).is_integer()):
            return f"must be {'an integer' if self.kind is int else 'a number'}, got {value!r}"
        return self._range(value)

    def _range(self, value: float) -> str | None:
        if self.low is not None and value < self.low:
            return f"must be >= {self.low}, got {value!r}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high}, got {value!r}"
        return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class OptimizerEntry:
    """A registered optimizer: a builder plus the hyperparameters it takes.

    ``build(params, lr, **hparams)`` returns a ``torch.optim.Optimizer``; the registry fills in
    defaults first, so ``build`` always receives every hyperparameter. ``needs_closure`` tells the
    training loop to pass a closure to ``step`` (line-search methods such as cg).
    """

    name: str
    doc: str
    build: Callable[..., torch.optim.Optimizer]
    hparams: dict[str, HParam] = field(default_factory=dict)
    lr_default: float = 0.01
    batch_mode: BatchMode = "minibatch"
    needs_closure: bool = False
    min_max: bool = False  # a zero-sum-game method; usable on plain minimisation too


OPTIMIZERS: Registry[OptimizerEntry] = Registry("optimizer.name")

LR = HParam(0.01, "learning rate (step size)", float, low=0.0)
WEIGHT_DECAY = HParam(0.0, "L2 penalty added to the gradient", float, low=0.0)


def check_hparams(name: str, hparams: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Problems in an optimizer section's hyperparameters, as ``(key, value, message)``.

    ``name`` must be registered; ``lr`` is checked with the rest.
    """
    entry = OPTIMIZERS.get(name)
    problems = []
    for key, value in hparams.items():
        if key == "lr":
            msg = LR.check(value)
        elif key in entry.hparams:
            msg = entry.hparams[key].check(value)
        else:
            valid = ", ".join(["lr", *sorted(entry.hparams)])
            msg = f"{name!r} takes no hyperparameter {key!r}; it takes: {valid}"
        if msg:
            problems.append((key, value, msg))
    return problems


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], hparams: dict[str, Any]
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params`` with defaults filled in for absent hyperparameters.

    Example:
        >>> import torch
        >>> opt = build_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], {"lr": 0.1})
        >>> opt.defaults["lr"], opt.defaults["betas"]
        (0.1, (0.9, 0.999))
    """
    entry = OPTIMIZERS.get(name)
    full = {k: h.default for k, h in entry.hparams.items()}
    full.update({k: v for k, v in hparams.items() if k != "lr"})
    full = {k: tuple(v) if entry.hparams[k].kind is tuple else v for k, v in full.items()}
    lr = hparams.get("lr", entry.lr_default)
    return entry.build(params, lr=lr, **full)
