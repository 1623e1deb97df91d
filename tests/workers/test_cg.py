"""Conjugate gradient against the textbook: n-step termination on a quadratic, and the same
optimum as scipy's CG on L2-regularised logistic regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.optimizers import OPTIMIZERS, ConjugateGradient, build_optimizer
from workers.optimizers.cg import _cubic_min, _Point, strong_wolfe

N = 20


@pytest.fixture(scope="module")
def quadratic() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f(x) = x'Ax/2 - b'x with A SPD, eigenvalues 1..10 (float64, fixed seed); returns A, b, x*."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, 1, N, dtype=torch.float64)) @ q.T
    b = torch.randn(N, generator=g, dtype=torch.float64)
    return a, b, torch.linalg.solve(a, b)


def _errors(quadratic, iterations: int, **kw) -> list[float]:
    """Relative distance to the minimiser after each CG iteration (one iteration per step)."""
    a, b, x_star = quadratic
    x = torch.nn.Parameter(torch.zeros(N, dtype=torch.float64))
    opt = ConjugateGradient([x], lr=1.0, max_iter=1, tolerance_grad=0.0, **kw)

    def closure():
        opt.zero_grad()
        loss = 0.5 * x @ a @ x - b @ x
        loss.backward()
        return loss

    out = []
    for _ in range(iterations):
        opt.step(closure)
        out.append(float((x.detach() - x_star).norm() / x_star.norm()))
    return out


@pytest.mark.parametrize("beta", ["pr", "fr"])
def test_exact_line_search_reaches_the_quadratic_minimiser_in_n_iterations(quadratic, beta):
    errors = _errors(quadratic, N, beta=beta, line_search="exact_quadratic")
    # Finite termination, the signature of CG: a sharp drop at iteration n, not a steady rate.
    assert errors[N - 1] < 1e-10
    assert errors[N - 2] > 1e3 * errors[N - 1]
    assert errors[N // 2] > 1e-5  # halfway it is still far: the problem is not trivially easy


@pytest.mark.parametrize("beta", ["pr", "fr"])
def test_strong_wolfe_matches_the_exact_search_on_a_quadratic(quadratic, beta):
    # Cubic interpolation is exact for a quadratic along the line, so strong Wolfe follows the
    # exact search until the loss's rounding (~1e-16 relative) hides further progress.
    exact = _errors(quadratic, N - 1, beta=beta, line_search="exact_quadratic")
    wolfe = _errors(quadratic, N + 2, beta=beta)
    assert wolfe[N - 2] == pytest.approx(exact[N - 2], rel=1e-2)
    assert min(wolfe) < 1e-8


def _logistic_problem():
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return x, y.astype(np.float64), 1e-2  # lam: L2 weight; bias unpenalised


def _scipy_cg(x: np.ndarray, y: np.ndarray, lam: float):
    from scipy.optimize import minimize

    def loss_grad(wb: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = wb[:-1], wb[-1]
        z = x @ w + b
        loss = np.mean(np.logaddexp(0, z) - y * z) + lam / 2 * w @ w
        gz = (1 / (1 + np.exp(-z)) - y) / len(y)
        return loss, np.append(x.T @ gz + lam * w, gz.sum())

    return minimize(
        loss_grad,
        np.zeros(x.shape[1] + 1),
        jac=True,
        method="CG",
        options={"gtol": 1e-10, "maxiter": 10_000},
    )


@pytest.mark.parametrize("beta", ["pr", "fr"])
def test_logistic_regression_reaches_scipys_cg_optimum(beta):
    x, y, lam = _logistic_problem()
    ref = _scipy_cg(x, y, lam)
    xt, yt = torch.tensor(x), torch.tensor(y)
    wb = torch.nn.Parameter(torch.zeros(x.shape[1] + 1, dtype=torch.float64))
    opt = build_optimizer(
        "cg", [wb], {"lr": 1.0, "beta": beta, "max_iter": 500, "tolerance_grad": 1e-10}
    )

    def closure():
        opt.zero_grad()
        z = xt @ wb[:-1] + wb[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt)
        loss = loss + lam / 2 * wb[:-1] @ wb[:-1]
        loss.backward()
        return loss

    opt.step(closure)
    loss = float(closure().detach())
    assert loss == pytest.approx(ref.fun, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(wb.detach().numpy(), ref.x, atol=1e-6)
    assert opt.state[wb]["n_iter"] < 100  # CG-like iteration counts (scipy: ~40), not GD's


def test_restart_every_iteration_is_steepest_descent_and_slower(quadratic):
    # restart_every=1 throws the conjugacy away: each direction is -g, so n iterations do not
    # reach the minimiser (eigenvalues 1..10 => steepest descent contracts ~0.8 per step).
    errors = _errors(quadratic, N, line_search="exact_quadratic", restart_every=1)
    assert errors[N - 1] > 1e-4


def test_strong_wolfe_conditions_hold_on_a_nonquadratic_line():
    # phi(a) = (a - 2)^4 + a: minimiser where 4 (a - 2)^3 = -1.
    def phi(a: float) -> _Point:
        return _Point(a, (a - 2) ** 4 + a, 4 * (a - 2) ** 3 + 1, torch.zeros(1))

    start, c1, c2 = phi(0.0), 1e-4, 0.1
    for first in (1e-3, 0.5, 3.0, 50.0):  # too short, short, near, far overshoot
        p = strong_wolfe(phi, start, first, c1, c2, max_evals=30)
        assert p is not None
        assert p.f <= start.f + c1 * p.alpha * start.df
        assert abs(p.df) <= c2 * abs(start.df)


def test_cubic_interpolation_is_exact_for_a_quadratic():
    def q(a: float) -> _Point:
        return _Point(a, 3 * (a - 0.7) ** 2 + 1, 6 * (a - 0.7), torch.zeros(1))

    assert _cubic_min(q(0.0), q(2.0)) == pytest.approx(0.7)
    assert _cubic_min(q(1.5), q(0.1)) == pytest.approx(0.7)


def test_cg_requires_a_closure_and_one_group():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="closure"):
        ConjugateGradient([p]).step()
    with pytest.raises(ValueError, match="one parameter group"):
        ConjugateGradient([{"params": [p]}, {"params": [torch.nn.Parameter(torch.zeros(1))]}])
    with pytest.raises(ValueError, match="c1 < c2"):
        ConjugateGradient([p], c1=0.5, c2=0.1)


def test_registry_entry_is_full_batch_with_closure():
    entry = OPTIMIZERS.get("cg")
    assert (entry.batch_mode, entry.needs_closure) == ("full", True)
    assert set(entry.hparams) >= {"beta", "c1", "c2", "restart_every"}
