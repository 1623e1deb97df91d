"""Optimizers for zero-sum games (min-max problems), usable on plain minimisation too.

A game ``min_x max_y f(x, y)`` has two players; simultaneous gradient descent-ascent (GDA) spirals
away from the equilibrium of even the simplest one, the bilinear ``f = x.y``. Two standard fixes:

* ``extragradient`` (Korpelevich 1976): look ahead with a gradient step, then step from the
  *original* point with the gradient taken at the look-ahead point. Two gradients per step, so it
  needs a closure.
* ``optimistic`` (optimistic gradient descent-ascent, OGDA; Popov 1980, Daskalakis et al. 2018):
  ``x <- x - lr * (g_t + optimism * (g_t - g_{t-1}))`` — the previous gradient stands in for the
  look-ahead, one gradient per step.
* ``optimistic_adam`` (Daskalakis et al. 2018, "Training GANs with Optimism"): the same correction
  applied to Adam's normalised step: ``x <- x - lr * (2 u_t - u_{t-1})``, ``u = m_hat / (sqrt(v_hat)
  + eps)``. Its default ``betas`` are (0.0, 0.99), not Adam's (0.9, 0.999): with heavy momentum
  the correction lags and it spirals out of even the bilinear game (measured in
  ``tests/workers/test_games.py``); with beta1 = 0 it converges there.

**Marking the maximising player**: put its parameters in a param group with ``"maximize": True``
(the same flag ``torch.optim.SGD`` and ``Adam`` use), or build with :func:`game_optimizer`. A
model trained by the usual loop has one group and simply minimises.

Example (the bilinear game; the equilibrium is (0, 0)):
    >>> import torch
    >>> x = torch.nn.Parameter(torch.tensor([1.0]))
    >>> y = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = game_optimizer("extragradient", [x], [y], lr=0.5)
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = (x * y).sum()
    ...     loss.backward()
    ...     return loss
    >>> for _ in range(100):
    ...     _ = opt.step(closure)
    >>> float(torch.cat([x, y]).detach().norm()) < 1e-3
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from workers.optimizers._base import (
    OPTIMIZERS,
    WEIGHT_DECAY,
    HParam,
    OptimizerEntry,
    build_optimizer,
)


def _direction(p: torch.Tensor, group: dict) -> torch.Tensor:
    """The gradient this parameter *descends*: negated for the maximising player."""
    g = p.grad
    assert g is not None  # callers skip parameters without a gradient
    if group["weight_decay"]:
        g = g.add(p, alpha=group["weight_decay"])
    return -g if group["maximize"] else g


class ExtraGradient(torch.optim.Optimizer):
    """Extragradient: ``x_half = x - lr g(x)``, then ``x <- x - lr g(x_half)``; needs a closure.

    Args:
        params: parameters or param groups (``"maximize": True`` marks the maximising player).
        lr: step size of both the look-ahead and the update.
        weight_decay: L2 penalty added to the gradient.
        maximize: default for groups that do not say.
    """

    def __init__(
        self,
        params,
        lr: float = 0.01,
        weight_decay: float = 0.0,  # noqa: ANN001
        maximize: bool = False,
    ) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, maximize=maximize))

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor:  # type: ignore[override]
        """One extragradient step; returns the loss at the starting point.

        Raises:
            ValueError: no closure (the second gradient must be taken at the look-ahead point).
        """
        if closure is None:
            raise ValueError(
                "extragradient needs a closure: optimizer.step(closure) "
                "(it evaluates the gradient twice per step)"
            )
        with torch.enable_grad():
            loss = closure()
        origin = {}
        for group in self.param_groups:  # all players look ahead simultaneously
            for p in group["params"]:
                if p.grad is not None:
                    origin[p] = p.detach().clone()
                    p.sub_(_direction(p, group), alpha=group["lr"])
        with torch.enable_grad():
            closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p in origin and p.grad is not None:
                    p.copy_(origin[p].sub_(_direction(p, group), alpha=group["lr"]))
                elif p in origin:
                    p.copy_(origin[p])
        return loss


class OptimisticGD(torch.optim.Optimizer):
    """Optimistic gradient descent(-ascent): ``x <- x - lr (g_t + optimism (g_t - g_{t-1}))``.

    The first step has no previous gradient and is a plain gradient step.

    Args:
        params: parameters or param groups (``"maximize": True`` marks the maximising player).
        lr: step size.
        optimism: weight of the correction ``g_t - g_{t-1}`` (1.0 is the standard OGDA).
        weight_decay: L2 penalty added to the gradient.
        maximize: default for groups that do not say.
    """

    def __init__(
        self,
        params,
        lr: float = 0.01,
        optimism: float = 1.0,  # noqa: ANN001
        weight_decay: float = 0.0,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params, dict(lr=lr, optimism=optimism, weight_decay=weight_decay, maximize=maximize)
        )

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _direction(p, group)
                state = self.state[p]
                prev = state.get("prev_grad", g)
                p.sub_(g + group["optimism"] * (g - prev), alpha=group["lr"])
                state["prev_grad"] = g.clone()
        return loss


class OptimisticAdam(torch.optim.Optimizer):
    """Optimistic Adam: Adam's normalised step ``u_t`` applied as ``x <- x - lr (2 u_t - u_{t-1})``.

    Args:
        params: parameters or param groups (``"maximize": True`` marks the maximising player).
        lr: step size.
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient.
        maximize: default for groups that do not say.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.0, 0.99),  # noqa: ANN001
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize),
        )

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _direction(p, group)
                state = self.state[p]
                if not state:
                    state.update(
                        t=0,
                        m=torch.zeros_like(p),
                        v=torch.zeros_like(p),
                        prev_u=torch.zeros_like(p),
                    )
                state["t"] += 1
                t = state["t"]
                state["m"].mul_(b1).add_(g, alpha=1 - b1)
                state["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = state["m"] / (1 - b1**t)
                v_hat = state["v"] / (1 - b2**t)
                u = m_hat / (v_hat.sqrt() + group["eps"])
                # First step: no previous u, so a plain Adam step (2u - u).
                prev = state["prev_u"] if t > 1 else u
                p.sub_(2 * u - prev, alpha=group["lr"])
                state["prev_u"] = u
        return loss


def game_optimizer(
    name: str,
    min_params: Iterable[torch.nn.Parameter],
    max_params: Iterable[torch.nn.Parameter],
    **hparams: Any,
) -> torch.optim.Optimizer:
    """Build a registered optimizer over a two-player zero-sum game.

    The first player minimises the closure's loss, the second maximises it; both move
    simultaneously from the gradients of one closure evaluation.

    Args:
        name: a registered optimizer whose class honours ``maximize`` per param group (the three
            game optimizers here; ``sgd``/``gd``/``minibatch`` for plain GDA).
        min_params, max_params: the two players' parameters.
        **hparams: ``lr`` and the optimizer's hyperparameters.

    Returns:
        The optimizer, with the maximising player's group marked ``maximize=True``.
    """
    groups = [
        {"params": list(min_params), "maximize": False},
        {"params": list(max_params), "maximize": True},
    ]
    return build_optimizer(name, groups, hparams)  # type: ignore[arg-type]  # param groups


OPTIMISM = HParam(1.0, "weight of the correction g_t - g_(t-1)", float, 0.0, 2.0)

OPTIMIZERS.add(
    "extragradient",
    OptimizerEntry(
        "extragradient",
        "extragradient (Korpelevich): look-ahead step, then update with the "
        "look-ahead gradient; two gradients per step",
        lambda params, lr, **kw: ExtraGradient(params, lr=lr, **kw),
        {"weight_decay": WEIGHT_DECAY},
        lr_default=0.01,
        needs_closure=True,
        min_max=True,
    ),
)
OPTIMIZERS.add(
    "optimistic",
    OptimizerEntry(
        "optimistic",
        "optimistic gradient descent(-ascent): a step corrected by the last gradient's change",
        lambda params, lr, **kw: OptimisticGD(params, lr=lr, **kw),
        {"optimism": OPTIMISM, "weight_decay": WEIGHT_DECAY},
        lr_default=0.01,
        min_max=True,
    ),
)
OPTIMIZERS.add(
    "optimistic_adam",
    OptimizerEntry(
        "optimistic_adam",
        "optimistic Adam: Adam's normalised step with the optimistic correction",
        lambda params, lr, **kw: OptimisticAdam(params, lr=lr, **kw),
        {
            "betas": HParam(
                (0.0, 0.99),
                "decay rates of the first and second moment estimates "
                "(beta1 = 0: momentum makes the optimistic correction lag)",
                tuple,
                0.0,
                0.9999,
            ),
            "eps": HParam(
                1e-8, "term added to the denominator for numerical stability", float, low=0.0
            ),
            "weight_decay": WEIGHT_DECAY,
        },
        lr_default=1e-3,
        min_max=True,
    ),
)
