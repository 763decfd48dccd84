"""Closed loop under the HJB feedback (MODEL.md §8).

:func:`closed_loop` runs the forward problem (``pdenets.integrators``, RK4 by default, through
``Dynamics.__call__``) under the feedback θ*(t, u(t)) of an :class:`HJBSolution` and accumulates
the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .._checks import check_positive
from ..errors import PdenetsError
from ..integrators import RK4, Solver, System, integrate
from ._tensors import _DTYPE, _states
from .solution import HJBSolution

if TYPE_CHECKING:
    from .sampled import SampledSolution


@dataclass
class ClosedLoop:
    """Closed-loop trajectory under the HJB feedback.

    Attributes
    ----------
    ts : torch.Tensor
        Depths, shape ``(S + 1,)``.
    states : torch.Tensor
        u(t) flattened, shape ``(S + 1, D)``.
    running : float
        ∫_0^T L(θ*(t, u(t))) dt.
    terminal : float
        Φ(u(T)).
    cost : float
        running + terminal.
    """

    ts: torch.Tensor
    states: torch.Tensor
    running: float
    terminal: float
    cost: float


def closed_loop(
    solution: HJBSolution | SampledSolution, v0, *, steps: int = 200, solver: Solver | None = None
) -> ClosedLoop:
    """Run the forward problem from ``v0`` (``(D,)``) under the feedback θ*(t, u(t)) of a grid
    (:class:`HJBSolution`) or sampled (:class:`~pdenets.hjb.sampled.SampledSolution`) solution.

    The state is augmented with the accumulated running cost and integrated with
    :func:`pdenets.integrators.integrate` (RK4 by default); f is evaluated by the dynamics'
    own ``__call__`` with A = w* ω_j.
    """
    check_positive(steps, "closed-loop steps", integer=True)
    solver = solver or RK4()
    prob = solution.problem
    v0 = _states(v0, prob.D)
    if v0.shape[0] != 1:
        raise PdenetsError("closed_loop takes one initial state of shape (D,)")
    D = prob.D

    def reaction(t, X, t0, t1):
        v = X[:, :D]
        w, b = solution.feedback(t, v)
        f = prob.rhs(v[0], w[0], b[0])
        L = prob.running_cost(w[0], b[0])
        return torch.cat([f, L.reshape(1)])[None]

    X0 = torch.cat([v0, torch.zeros(1, 1, dtype=_DTYPE)], 1)
    T = prob.T
    ts = [T * k / steps for k in range(steps + 1)]
    XT, saved, _ = integrate(System(reaction), X0, T, steps, solver, ts)
    traj = torch.cat(saved, 0)
    running = float(XT[0, D])
    term = float(prob.terminal_cost(XT[:, :D])[0])
    return ClosedLoop(torch.tensor(ts, dtype=_DTYPE), traj[:, :D], running, term, running + term)
