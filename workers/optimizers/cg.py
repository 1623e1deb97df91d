"""Nonlinear conjugate gradient (``optimizer.name: cg``) with a strong-Wolfe line search.

Each iteration moves along ``d = -g + beta * d_prev`` by a step ``alpha`` that satisfies the strong
Wolfe conditions (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Alg. 3.5 and 3.6)::

    f(x + alpha d) <= f(x) + c1 alpha g.d          (sufficient decrease)
    |g(x + alpha d).d| <= c2 |g.d|                 (curvature, strong form)

``beta`` is Polak–Ribière+ (``max(0, g.(g - g_prev) / |g_prev|^2)``, default) or Fletcher–Reeves
(``|g|^2 / |g_prev|^2``). The direction restarts to steepest descent every ``restart_every``
iterations and whenever it is not a descent direction. With ``c2 < 1/2`` (default 0.1, the value
N&W recommend for CG) Fletcher–Reeves is guaranteed to produce descent directions.

One ``step(closure)`` runs up to ``max_iter`` iterations on the closure's loss, like
``torch.optim.LBFGS``; state (direction, previous gradient) carries over to the next ``step`` so a
full-batch training loop continues the same CG sequence epoch after epoch.

Example:
    >>> import torch
    >>> x = torch.nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))
    >>> opt = ConjugateGradient([x], lr=1.0)
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = (x[0] - 1) ** 2 + 10 * (x[1] + 0.5) ** 2
    ...     loss.backward()
    ...     return loss
    >>> _ = opt.step(closure)
    >>> [round(v, 6) for v in x.tolist()]
    [1.0, -0.5]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from workers.optimizers._base import OPTIMIZERS, HParam, OptimizerEntry

LINE_SEARCHES = ("strong_wolfe", "exact_quadratic")


@dataclass
class _Point:
    """One evaluation along the search line: step, loss and directional derivative."""

    alpha: float
    f: float
    df: float
    grad: torch.Tensor


class ConjugateGradient(torch.optim.Optimizer):
    """Nonlinear conjugate gradient over one parameter group; ``step`` needs a closure.

    Args:
        params: parameters to optimise (one group; CG treats them as one flat vector).
        lr: the line search's first trial step on the first iteration and after each restart.
        beta: ``"pr"`` (Polak–Ribière+) or ``"fr"`` (Fletcher–Reeves).
        c1, c2: strong-Wolfe constants, ``0 < c1 < c2 < 1``.
        restart_every: restart to steepest descent every this many iterations (0: the number of
            parameters, the classical choice).
        max_iter: CG iterations per ``step`` call.
        max_ls: loss evaluations allowed per line search.
        tolerance_grad: stop when the gradient's largest entry is at most this.
        line_search: ``"strong_wolfe"``, or ``"exact_quadratic"`` — the analytic minimiser along
            the line, exact only when the loss is quadratic (for tests that check the textbook
            n-step convergence); never use it on a network.
    """

    def __init__(
        self,
        params,  # noqa: ANN001
        lr: float = 1.0,
        beta: str = "pr",
        c1: float = 1e-4,
        c2: float = 0.1,
        restart_every: int = 0,
        max_iter: int = 10,
        max_ls: int = 25,
        tolerance_grad: float = 1e-7,
        line_search: str = "strong_wolfe",
    ) -> None:
        if beta not in ("pr", "fr"):
            raise ValueError(f"cg: beta {beta!r} is not one of: pr, fr")
        if not 0 < c1 < c2 < 1:
            raise ValueError(f"cg: need 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
        if line_search not in LINE_SEARCHES:
            raise ValueError(
                f"cg: line_search {line_search!r} is not one of: {', '.join(LINE_SEARCHES)}"
            )
        defaults = dict(
            lr=lr,
            beta=beta,
            c1=c1,
            c2=c2,
            restart_every=restart_every,
            max_iter=max_iter,
            max_ls=max_ls,
            tolerance_grad=tolerance_grad,
            line_search=line_search,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(
                "cg works on one parameter group (it treats all parameters as one vector)"
            )
        self._params: list[torch.Tensor] = self.param_groups[0]["params"]

    # ------------------------------------------------------------------ flat-vector helpers

    def _cg_state(self) -> dict:
        # Kept under the first parameter (as torch's LBFGS does), so state_dict() saves and
        # restores it like any optimizer state.
        return self.state[self._params[0]]

    def _flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    def _flat_grad(self) -> torch.Tensor:
        return torch.cat(
            [
                torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                if p.grad is None
                else p.grad.reshape(-1)
                for p in self._params
            ]
        )

    def _set_params(self, flat: torch.Tensor) -> None:
        offset = 0
        for p in self._params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n

    def _evaluate(
        self, closure: Callable, x0: torch.Tensor, d: torch.Tensor, alpha: float
    ) -> _Point:
        """Loss and directional derivative at ``x0 + alpha d`` (leaves the parameters there)."""
        self._set_params(x0 + alpha * d)
        with torch.enable_grad():
            f = _as_float(closure())
        g = self._flat_grad().clone()
        self._cg_state()["func_evals"] += 1
        return _Point(alpha, f, float(g.dot(d)), g)

    # ------------------------------------------------------------------ the iteration

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor:  # type: ignore[override]
        """Run up to ``max_iter`` CG iterations; returns the loss before the first one.

        Raises:
            ValueError: no closure (a line search must re-evaluate the loss).
        """
        if closure is None:
            raise ValueError(
                "cg needs a closure: optimizer.step(closure) "
                "(the line search re-evaluates the loss)"
            )
        group = self.param_groups[0]
        state = self._cg_state()
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        with torch.enable_grad():
            first_loss = closure()
        f, g = _as_float(first_loss), self._flat_grad().clone()
        state["func_evals"] += 1
        for _ in range(group["max_iter"]):
            if g.abs().max() <= group["tolerance_grad"] or not math.isfinite(f):
                break
            d = self._direction(g, state, group)
            x0 = self._flat_params()
            start = _Point(0.0, f, float(g.dot(d)), g)
            first = self._first_step(state, start, group)
            point = self._line_search(closure, x0, d, start, first, group)
            if point is None:  # no acceptable step: restart from steepest descent next time
                self._set_params(x0)
                state.pop("d", None)
                if state.get("restarted_last"):
                    break  # even steepest descent found no decrease: we are at a (local) minimum
                state["restarted_last"] = True
                continue
            self._set_params(x0 + point.alpha * d)  # the search may have ended elsewhere
            state.update(
                d=d, g_prev=g, alpha_prev=point.alpha, gd_prev=start.df, restarted_last=False
            )
            state["n_iter"] += 1
            f, g = point.f, point.grad
        return first_loss

    def _direction(self, g: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        d_prev, g_prev = state.get("d"), state.get("g_prev")
        restart_every = group["restart_every"] or g.numel()
        if d_prev is None or g_prev is None or state["n_iter"] % restart_every == 0:
            return -g
        denom = float(g_prev.dot(g_prev))
        if group["beta"] == "fr":
            beta = float(g.dot(g)) / denom
        else:  # PR+: the max(0, .) clamp is what makes PR globally convergent with strong Wolfe
            beta = max(0.0, float(g.dot(g - g_prev)) / denom)
        d = -g + beta * d_prev
        # Not a descent direction (possible for PR+ with an inexact line search): restart.
        return d if float(g.dot(d)) < 0 else -g

    @staticmethod
    def _first_step(state: dict, start: _Point, group: dict) -> float:
        # N&W eq. 3.60: assume the first-order change along the line equals the previous one's.
        if state.get("alpha_prev") and state.get("d") is not None and start.df < 0:
            guess = state["alpha_prev"] * state["gd_prev"] / start.df
            if math.isfinite(guess) and guess > 0:
                return min(guess, 1e3 * group["lr"])
        return group["lr"]

    def _line_search(
        self,
        closure: Callable,
        x0: torch.Tensor,
        d: torch.Tensor,
        start: _Point,
        alpha1: float,
        group: dict,
    ) -> _Point | None:
        if group["line_search"] == "exact_quadratic":
            return self._exact_quadratic(closure, x0, d, start, alpha1)
        return strong_wolfe(
            lambda a: self._evaluate(closure, x0, d, a),
            start,
            alpha1,
            group["c1"],
            group["c2"],
            group["max_ls"],
        )

    def _exact_quadratic(
        self, closure: Callable, x0: torch.Tensor, d: torch.Tensor, start: _Point, alpha1: float
    ) -> _Point | None:
        # For f = x'Ax/2 - b'x: g(x + t d) - g(x) = t A d, so d'Ad needs one more gradient and the
        # exact minimiser along d is alpha* = -g.d / d'Ad.
        probe = self._evaluate(closure, x0, d, alpha1)
        curvature = (probe.df - start.df) / alpha1
        if curvature <= 0:
            return None
        return self._evaluate(closure, x0, d, -start.df / curvature)


def _as_float(loss: torch.Tensor | float) -> float:
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


# ---------------------------------------------------------------------- strong-Wolfe line search


def strong_wolfe(
    phi: Callable[[float], _Point],
    start: _Point,
    alpha1: float,
    c1: float,
    c2: float,
    max_evals: int,
) -> _Point | None:
    """A step satisfying the strong Wolfe conditions along a line (N&W Alg. 3.5).

    Args:
        phi: evaluates the loss and directional derivative at a step.
        start: the point at step 0; ``start.df`` must be negative (a descent direction).
        alpha1: first trial step.
        c1, c2: sufficient-decrease and curvature constants.
        max_evals: evaluations allowed.

    Returns:
        The accepted point; if the budget runs out, the best point with sufficient decrease; None
        when no evaluated step decreased the loss enough.
    """
    if start.df >= 0:
        return None
    prev, alpha, evals = start, alpha1, 0
    best: _Point | None = None
    while evals < max_evals:
        cur = phi(alpha)
        evals += 1
        if not _sufficient(cur, start, c1) or (evals > 1 and cur.f >= prev.f):
            return _zoom(phi, start, prev, cur, c1, c2, max_evals - evals, best)
        best = cur
        if abs(cur.df) <= -c2 * start.df:
            return cur
        if cur.df >= 0:
            return _zoom(phi, start, cur, prev, c1, c2, max_evals - evals, best)
        # Still descending: extrapolate (cubic fit, kept within [1.1, 10] times the current step).
        guess = _cubic_min(prev, cur)
        nxt = guess if guess is not None else 2 * cur.alpha
        prev, alpha = cur, min(max(nxt, 1.1 * cur.alpha), 10 * cur.alpha)
    return best


def _sufficient(p: _Point, start: _Point, c1: float) -> bool:
    return math.isfinite(p.f) and p.f <= start.f + c1 * p.alpha * start.df


def _zoom(
    phi: Callable[[float], _Point],
    start: _Point,
    lo: _Point,
    hi: _Point,
    c1: float,
    c2: float,
    evals_left: int,
    best: _Point | None,
) -> _Point | None:
    """N&W Alg. 3.6: shrink ``[lo, hi]`` (lo has the lowest loss with sufficient decrease)."""
    best = lo if lo.alpha > 0 else best
    for _ in range(evals_left):
        width = hi.alpha - lo.alpha
        if abs(width) < 1e-12 * max(1.0, abs(lo.alpha)):
            break
        a, b = sorted((lo.alpha, hi.alpha))
        guess = _cubic_min(lo, hi) if math.isfinite(hi.f) else None
        # Safeguard: an interpolant minimiser too close to an end (or none at all) -> bisect.
        margin = 0.1 * (b - a)
        alpha = guess if guess is not None and a + margin <= guess <= b - margin else (a + b) / 2
        cur = phi(alpha)
        if not _sufficient(cur, start, c1) or cur.f >= lo.f:
            hi = cur
            continue
        if abs(cur.df) <= -c2 * start.df:
            return cur
        if cur.df * (hi.alpha - lo.alpha) >= 0:
            hi = lo
        lo = best = cur
    return best


def _cubic_min(p: _Point, q: _Point) -> float | None:
    """Minimiser of the cubic matching loss and slope at ``p`` and ``q`` (N&W eq. 3.59).

    Exact for a quadratic along the line, which is why a quadratic's line search ends at once.
    """
    if p.alpha == q.alpha or not all(map(math.isfinite, (p.f, q.f, p.df, q.df))):
        return None
    d1 = p.df + q.df - 3 * (p.f - q.f) / (p.alpha - q.alpha)
    radicand = d1 * d1 - p.df * q.df
    if radicand < 0:
        return None
    d2 = math.copysign(math.sqrt(radicand), q.alpha - p.alpha)
    denom = q.df - p.df + 2 * d2
    if denom == 0:
        return None
    alpha = q.alpha - (q.alpha - p.alpha) * (q.df + d2 - d1) / denom
    return alpha if math.isfinite(alpha) else None


# ---------------------------------------------------------------------- registry entry


def _build(params, lr, **hparams):  # noqa: ANN001, ANN202
    return ConjugateGradient(params, lr=lr, **hparams)


OPTIMIZERS.add(
    "cg",
    OptimizerEntry(
        "cg",
        "nonlinear conjugate gradient (Polak–Ribière+ or Fletcher–Reeves) with a strong-Wolfe line "
        "search and restarts; one step = max_iter iterations on the full training set",
        _build,
        {
            "beta": HParam(
                "pr",
                "conjugacy formula: pr (Polak–Ribière+) or fr (Fletcher–Reeves)",
                str,
                choices=("pr", "fr"),
            ),
            "c1": HParam(
                1e-4, "sufficient-decrease constant of the Wolfe conditions", float, 1e-6, 0.4
            ),
            "c2": HParam(
                0.1, "curvature constant of the strong Wolfe conditions (> c1)", float, 0.01, 0.9
            ),
            "restart_every": HParam(
                0,
                "restart to steepest descent every n iterations (0: number of parameters)",
                int,
                0,
                None,
            ),
            "max_iter": HParam(
                10, "CG iterations per optimizer step (one step per epoch)", int, 1, 1000
            ),
            "max_ls": HParam(25, "loss evaluations allowed per line search", int, 2, 100),
            "tolerance_grad": HParam(
                1e-7,
                "stop iterating when the largest gradient entry is at most this",
                float,
                0.0,
                1.0,
            ),
        },
        lr_default=1.0,
        batch_mode="full",
        needs_closure=True,
    ),
)
