"""Batched two-point boundary problems of MODEL.md §7/§8 for the sampled HJB method.

:func:`solve_tpbvp` solves, for S starts at once, the optimal control problem of a
:class:`~pdenets.hjb.ReducedProblem` from depth 0 (the direct method of
:func:`pdenets.hjb.direct_method`, batched): controls piecewise constant on M equal depth
intervals, RK4 with ``steps`` steps per interval through the batched right-hand side
(the same formulas as ``Dynamics.reaction``: ``Standard`` σ(A u + b), ``Field`` A σ(u) + b,
``Selection`` u σ(A u + b), plus ε Δ_x u), L-BFGS with strong-Wolfe line search on the summed
cost (the starts are independent, so the sum's minimizer is every start's minimizer). Its
stationary points satisfy the discrete Pontryagin system (state forward, costate backward,
Hamiltonian extremal in every interval).

Along each optimal trajectory, at every interval start t_m and at T:

* V(t_m, u(t_m)) = Σ_{m' ≥ m} Δ L(θ_m') + Φ(u(T)) (Bellman: the tail of an optimal control
  is optimal for the tail problem);
* D_vV(t_m, u(t_m)) = ∂/∂u(t_m) of that tail cost with the controls fixed (= −λ(t_m), the
  costate, by the envelope theorem), computed by autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_positive
from ..dynamics import Field, Selection
from ._tensors import _DTYPE
from .problem import ReducedProblem


@dataclass
class Trajectories:
    """Data from :func:`solve_tpbvp` for S starts and M intervals (K = M + 1 points each).

    Attributes
    ----------
    starts : torch.Tensor
        ``(S, D)``.
    t : torch.Tensor
        Depths t_0 … t_M = T, ``(S, K)``.
    v : torch.Tensor
        States u(t_m), ``(S, K, D)``.
    V : torch.Tensor
        Values, ``(S, K)``.
    G : torch.Tensor
        Gradients D_vV, ``(S, K, D)``.
    cost : torch.Tensor
        Optimal cost from each start (= V[:, 0]), ``(S,)``.
    """

    starts: torch.Tensor
    t: torch.Tensor
    v: torch.Tensor
    V: torch.Tensor
    G: torch.Tensor
    cost: torch.Tensor

    def to(self, device) -> Trajectories:
        return Trajectories(*(x.to(device) for x in (self.starts, self.t, self.v, self.V,
                                                     self.G, self.cost)))


def batched_rhs(problem: ReducedProblem, U: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor) -> torch.Tensor:
    """f for states ``U`` (``(S, B, N)``) with per-start controls ``w`` (``(S, N, N)``) and
    ``b`` (``(S, N)``)."""
    act = problem.dynamics.activation
    A = w * problem.weights  # A_ij = w_ij ω_j
    if isinstance(problem.dynamics, Field):
        f = act.fn(U) @ A.transpose(-1, -2) + b[:, None, :]
    else:
        z = U @ A.transpose(-1, -2) + b[:, None, :]
        f = act.fn(z)
        if isinstance(problem.dynamics, Selection):
            f = U * f
    if problem.lap is not None:
        f = f + problem.dynamics.eps * problem.lap(U.reshape(-1, problem.N)).reshape(U.shape)
    return f


def _forward(problem: ReducedProblem, U0: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
             steps: int, keep: bool):
    """RK4 through the M intervals; returns the states at t_0 … t_M (list) and the running
    costs per interval ``(S, M)``."""
    S, M = U0.shape[0], w.shape[1]
    delta = problem.T / M
    h = delta / steps
    U = U0
    states = [U]
    for m in range(M):
        wm, bm = w[:, m], b[:, m]
        for _ in range(steps):
            k1 = batched_rhs(problem, U, wm, bm)
            k2 = batched_rhs(problem, U + 0.5 * h * k1, wm, bm)
            k3 = batched_rhs(problem, U + 0.5 * h * k2, wm, bm)
            k4 = batched_rhs(problem, U + h * k3, wm, bm)
            U = U + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        if keep:
            U.retain_grad()
        states.append(U)
    wc = w if "w" in problem.controls else None
    bc = b if "b" in problem.controls else None
    running = delta * problem.running_cost(wc, bc).reshape(S, M)
    return states, running


def solve_tpbvp(problem: ReducedProblem, starts: torch.Tensor, *, intervals: int = 16,
                steps: int = 2, max_iter: int = 200) -> Trajectories:
    """Optimal trajectories, values and gradients from ``starts`` (``(S, D)``) at depth 0
    (module docstring). Runs on the device of ``problem`` (see ``ReducedProblem.to``)."""
    check_positive(intervals, "intervals", integer=True)
    check_positive(steps, "steps", integer=True)
    dev = problem.device
    starts = starts.to(device=dev, dtype=_DTYPE)
    S, M, N = starts.shape[0], intervals, problem.N
    U0 = problem.unflatten(starts)
    w = torch.zeros(S, M, N, N, dtype=_DTYPE, device=dev)
    b = torch.zeros(S, M, N, dtype=_DTYPE, device=dev)
    if "w" not in problem.controls:
        w = w + problem.w0
    if "b" not in problem.controls:
        b = b + problem.b0
    params = []
    if "w" in problem.controls:
        w.requires_grad_(True)
        params.append(w)
    if "b" in problem.controls:
        b.requires_grad_(True)
        params.append(b)

    def total(keep: bool = False):
        states, running = _forward(problem, U0, w, b, steps, keep)
        term = problem.terminal_cost(states[-1].reshape(S, -1))
        return states, running, term

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=50,
                            tolerance_grad=1e-12, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        _, running, term = total()
        J = running.sum() + term.sum()
        J.backward()
        return J

    opt.step(closure)
    for p in params:
        p.requires_grad_(False)
    U0g = U0.detach().clone().requires_grad_(True)
    states, running = _forward(problem, U0g, w, b, steps, keep=True)
    term = problem.terminal_cost(states[-1].reshape(S, -1))
    (term.sum() + running.sum()).backward()
    grads = [U0g.grad] + [s.grad for s in states[1:]]
    with torch.no_grad():
        tail = torch.flip(torch.cumsum(torch.flip(running, [1]), 1), [1])  # Σ_{m' ≥ m}
        V = torch.cat([tail, torch.zeros(S, 1, dtype=_DTYPE, device=dev)], 1) + term[:, None]
        v = torch.stack([s.detach().reshape(S, -1) for s in states], 1)
        G = torch.stack([g.reshape(S, -1) for g in grads], 1)
        t = torch.linspace(0.0, problem.T, M + 1, dtype=_DTYPE, device=dev).expand(S, M + 1)
    return Trajectories(starts.detach(), t.clone(), v, V, G, V[:, 0].clone())
