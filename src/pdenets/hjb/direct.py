"""The direct method for the reduced problem of MODEL.md §8: an independent reference for
V(0, v0) by piecewise-constant controls, autograd through the forward solve and L-BFGS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._checks import check_positive
from ..errors import PdenetsError
from ..integrators import RK4, Solver, System, integrate
from ._tensors import _DTYPE, _states
from .problem import ReducedProblem


@dataclass
class DirectResult:
    """Result of :func:`direct_method`: the optimal cost, controls and forward trajectory."""

    cost: float
    running: float
    terminal: float
    w: torch.Tensor | None
    b: torch.Tensor | None
    uT: torch.Tensor
    iterations: int
    grad_norm: float


def direct_method(
    problem: ReducedProblem,
    v0,
    *,
    intervals: int = 16,
    steps: int | None = None,
    solver: Solver | None = None,
    max_iter: int = 300,
    restarts: Sequence[float] = (0.0,),
) -> DirectResult:
    """Minimize the cost over piecewise-constant-in-depth controls (direct method).

    Controls (w, b) at the nodes are constant on ``intervals`` equal depth intervals; the
    forward problem is solved by ``pdenets.integrators.integrate`` (RK4, ``steps`` a multiple
    of ``intervals``; default 4 per interval) with ``Dynamics.__call__``, the cost is
    Σ_m Δ L(θ_m) + Φ(u(T)), gradients come from torch autograd through the solve (the
    discrete adjoint, MODEL.md §5) and L-BFGS with strong-Wolfe line search minimizes it.

    Parameters
    ----------
    problem : ReducedProblem
    v0 : array-like
        Initial state, shape ``(D,)``.
    intervals : int
    steps : int, optional
    solver : Solver, optional
    max_iter : int
        L-BFGS iterations per start.
    restarts : sequence of float
        Initial controls: constant values (each a start); the best result is returned.
    """
    check_positive(intervals, "intervals", integer=True)
    steps = 4 * intervals if steps is None else steps
    check_positive(steps, "steps", integer=True)
    if steps % intervals:
        raise PdenetsError(f"steps ({steps}) must be a multiple of intervals ({intervals})")
    solver = solver or RK4()
    v0 = _states(v0, problem.D)
    if v0.shape[0] != 1:
        raise PdenetsError("direct_method takes one initial state of shape (D,)")
    U0 = problem.unflatten(v0[0])
    M, N, T = intervals, problem.N, problem.T
    delta = T / M
    best: DirectResult | None = None
    for init in restarts:
        w = torch.full((M, N, N), float(init), dtype=_DTYPE, requires_grad="w" in problem.controls)
        b = torch.full((M, N), float(init), dtype=_DTYPE, requires_grad="b" in problem.controls)
        params = [p for p in (w, b) if p.requires_grad]

        def full(w=w, b=b):
            ww = w if "w" in problem.controls else problem.w0.expand(M, N, N)
            bb = b if "b" in problem.controls else problem.b0.expand(M, N)
            return ww, bb

        def cost_fn(full=full):
            ww, bb = full()

            def reaction(t, u, t0, t1):
                k = min(int(0.5 * (t0 + t1) / delta), M - 1)
                return problem.dynamics(u, ww[k] * problem.weights, bb[k], problem.lap)

            uT, _, _ = integrate(System(reaction), U0, T, steps, solver)
            running = delta * problem.running_cost(ww, bb).sum()
            term = problem.terminal_cost(uT.reshape(1, -1))[0]
            return running + term, running, term, uT

        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=50,
                                tolerance_grad=1e-13, tolerance_change=1e-16,
                                line_search_fn="strong_wolfe")

        def closure(opt=opt, cost_fn=cost_fn):
            opt.zero_grad()
            J = cost_fn()[0]
            J.backward()
            return J

        opt.step(closure)
        J, running, term, uT = cost_fn()
        grads = torch.autograd.grad(J, params)
        zero = torch.zeros((), dtype=_DTYPE)
        gnorm = float(torch.sqrt(sum(((g * g).sum() for g in grads), zero)))
        n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
        res = DirectResult(J.item(), running.item(), term.item(),
                           w.detach() if "w" in problem.controls else None,
                           b.detach() if "b" in problem.controls else None,
                           uT.detach().reshape(-1), n_iter, gnorm)
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    return best
