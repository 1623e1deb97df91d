"""Adversarial training, the zero-sum-game recipe: spec ``training.adversarial``.

The model minimises the loss while a bounded adversary maximises it: each training batch is
replaced by its worst case within an L-infinity ball of radius ``epsilon`` (Madry et al. 2018),
found by FGSM (one signed-gradient step, Goodfellow et al. 2015) or PGD (``steps`` projected
signed-gradient steps from a random start). ``robust_accuracy`` is the accuracy under PGD at
``eval_epsilon`` (default ``epsilon``), reported beside clean accuracy so a search can trade them.

Contract used by the training loop:
    check_adversarial(section: dict | None) -> list[tuple[str, object, str]]
    make_adversary(section) -> Callable[[model, x, y], x_adv] | None   # None: plain training
    robust_accuracy(model, x, y, section) -> float | None            # None when not configured

Spec keys (``ADVERSARIAL_KEYS`` holds defaults and ranges)::

    adversarial:
      attack: pgd          # fgsm | pgd
      epsilon: 0.1         # radius of the L-inf ball, in input units
      steps: 7             # PGD steps when training (fgsm: 1)
      step_size: null      # PGD step; null: 2.5 * epsilon / steps
      eval_epsilon: null   # radius robust_accuracy attacks with; null: epsilon
      eval_steps: 20       # PGD steps of the robust_accuracy attack
      clip: [0.0, 1.0]     # valid input range (images in [0, 1]); null for unbounded features

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> x, y = torch.rand(8, 4), torch.randint(0, 2, (8,))
    >>> adv = make_adversary({"attack": "pgd", "epsilon": 0.1})
    >>> x_adv = adv(model, x, y)
    >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.optimizers._base import HParam

ATTACKS = ("fgsm", "pgd")
ADVERSARIAL_KEYS: dict[str, HParam] = {
    "attack": HParam(
        "pgd", "how the adversary searches the ball: fgsm or pgd", str, choices=ATTACKS
    ),
    "epsilon": HParam(0.1, "radius of the L-inf ball around each input", float, 0.0, 1.0),
    "steps": HParam(7, "PGD steps per training batch (fgsm takes one)", int, 1, 100),
    "step_size": HParam(None, "PGD step size (default 2.5 * epsilon / steps)", float, 0.0, 1.0),
    "eval_epsilon": HParam(
        None, "radius robust_accuracy attacks with (default epsilon)", float, 0.0, 1.0
    ),
    "eval_steps": HParam(20, "PGD steps of the robust_accuracy attack", int, 1, 1000),
    "clip": HParam((0.0, 1.0), "valid input range, or null for unbounded inputs", tuple),
}
Adversary = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def check_adversarial(section: dict[str, Any] | None) -> list[tuple[str, Any, str]]:
    """Problems in a ``training.adversarial`` section, as ``(key, bad value, message)``.

    Example:
        >>> check_adversarial({"attack": "cw", "epsilon": 0.1})[0][2]
        "'cw' is not one of: fgsm, pgd"
    """
    if not section:
        return []
    problems = []
    for key, value in section.items():
        if key not in ADVERSARIAL_KEYS:
            valid = ", ".join(sorted(ADVERSARIAL_KEYS))
            problems.append((key, value, f"unknown key {key!r}; valid: {valid}"))
            continue
        if value is None and (ADVERSARIAL_KEYS[key].default is None or key == "clip"):
            continue
        msg = ADVERSARIAL_KEYS[key].check(value)
        if key == "epsilon" and not msg and value <= 0:
            msg = f"must be > 0, got {value!r}"
        if key == "clip" and not msg and not value[0] < value[1]:
            msg = f"needs low < high, got {value!r}"
        if msg:
            problems.append((key, value, msg))
    s = resolved(section) if not problems else {}
    if s.get("attack") == "fgsm" and section.get("steps", 1) != 1:
        problems.append(
            ("steps", section["steps"], "fgsm takes one step; use attack: pgd for more")
        )
    return problems


def resolved(section: dict[str, Any]) -> dict[str, Any]:
    """The section with defaults filled in (step size, eval epsilon and fgsm's one step derived)."""
    s = {k: h.default for k, h in ADVERSARIAL_KEYS.items()}
    s.update(section)
    if s["attack"] == "fgsm":
        s["steps"] = 1
    if s["step_size"] is None:
        # FGSM steps the whole radius; PGD uses 2.5 eps / steps so it can reach the border and move
        # along it (Madry et al.'s choice).
        s["step_size"] = s["epsilon"] if s["attack"] == "fgsm" else 2.5 * s["epsilon"] / s["steps"]
    if s["eval_epsilon"] is None:
        s["eval_epsilon"] = s["epsilon"]
    return s


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    steps: int,
    step_size: float,
    clip: tuple[float, float] | None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy within ``||x' - x||_inf <= epsilon``.

    FGSM is ``steps=1, step_size=epsilon, random_start=False``. The model is put in eval mode
    while attacking (so batch-norm statistics and dropout do not see the attack's forward passes)
    and put back as it was; no gradient is left on its parameters.

    Returns:
        The adversarial inputs, detached, same shape and dtype as ``x``.
    """
    was_training = model.training
    model.eval()
    x = x.detach()
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        x_adv = _project(x_adv + (2 * noise - 1) * epsilon, x, epsilon, clip)
    try:
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(model(x_adv), y)
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = _project(x_adv.detach() + step_size * grad.sign(), x, epsilon, clip)
    finally:
        model.train(was_training)
    return x_adv.detach()


def _project(
    x_adv: torch.Tensor, x: torch.Tensor, epsilon: float, clip: tuple[float, float] | None
) -> torch.Tensor:
    x_adv = torch.max(torch.min(x_adv, x + epsilon), x - epsilon)
    return x_adv.clamp(*clip) if clip is not None else x_adv


def make_adversary(section: dict[str, Any] | None) -> Adversary | None:
    """The training-time adversary ``adv(model, x, y) -> x_adv``, or None for plain training."""
    if not section:
        return None
    s = resolved(section)
    clip = tuple(s["clip"]) if s["clip"] is not None else None
    fgsm = s["attack"] == "fgsm"

    def adversary(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd(
            model,
            x,
            y,
            s["epsilon"],
            s["steps"],
            s["step_size"],
            clip,  # type: ignore[arg-type]
            random_start=not fgsm,
        )

    return adversary


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    section: dict[str, Any] | None,
    batch_size: int = 1024,
) -> float | None:
    """Accuracy under a PGD attack at ``eval_epsilon`` with ``eval_steps`` steps; None if off.

    The random start is seeded (0), so the number is reproducible for a given model.
    """
    if not section:
        return None
    s = resolved(section)
    eps, steps = s["eval_epsilon"], s["eval_steps"]
    clip = tuple(s["clip"]) if s["clip"] is not None else None
    gen = torch.Generator().manual_seed(0)
    correct = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        x_adv = pgd(model, xb, yb, eps, steps, 2.5 * eps / steps, clip, generator=gen)  # type: ignore[arg-type]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == yb).sum())
        model.train(was_training)
    return correct / len(x)
