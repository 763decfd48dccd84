"""The solution of the grid HJB solver: value function, gradient and optimal feedback
(MODEL.md §8).

The **optimal feedback** θ*(t, v) (:meth:`HJBSolution.feedback`) is the Hamiltonian minimizer at
p = ∇V(t, v), the central difference of the interpolated value function (linear in t between
snapshots).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..errors import PdenetsError
from ._tensors import _states
from .grid import StateGrid
from .problem import ReducedProblem

if TYPE_CHECKING:
    from .solve import HJBOptions


@dataclass
class HJBSolution:
    """Value function on the state grid at the snapshot depths, with feedback evaluation.

    Attributes
    ----------
    problem : ReducedProblem
    grid : StateGrid
    options : HJBOptions
    times : torch.Tensor
        Snapshot depths, increasing from 0 to T, shape ``(S,)``.
    values : torch.Tensor
        V at the snapshots, shape ``(S, *grid.shape)``.
    stats : dict
        ``steps`` (time steps), ``seconds``, ``point_steps_per_second``, ``memory_estimate``,
        ``max_speed`` (largest α_d used).
    """

    problem: ReducedProblem
    grid: StateGrid
    options: HJBOptions
    times: torch.Tensor
    values: torch.Tensor
    stats: dict = field(default_factory=dict)

    def _bracket(self, t: float) -> tuple[int, float]:
        T = self.problem.T
        if not (-1e-12 * T <= t <= T * (1 + 1e-12)):
            raise PdenetsError(f"depth t = {t} lies outside [0, T = {T}]")
        S = self.times.shape[0]
        pos = min(max(t, 0.0), T) / T * (S - 1)
        k = min(int(math.floor(pos)), S - 2)
        return k, pos - k

    def value(self, t: float, v: torch.Tensor) -> torch.Tensor:
        """V(t, v) at states ``v`` (``(M, D)`` or ``(D,)``), interpolated in v and t."""
        v = _states(v, self.problem.D)
        k, s = self._bracket(float(t))
        a = self.grid.interpolate(self.values[k], v)
        if s == 0.0:
            return a
        return (1 - s) * a + s * self.grid.interpolate(self.values[k + 1], v)

    def gradient(self, t: float, v: torch.Tensor) -> torch.Tensor:
        """∇_v V(t, v) (``(M, D)``): central differences of the interpolated value function
        with the grid spacing (exactly the nodal central differences at grid points)."""
        v = _states(v, self.problem.D)
        D, h = self.problem.D, self.grid.h
        shifts = torch.diag(h)
        pts = torch.cat([v[:, None, :] + shifts, v[:, None, :] - shifts], 1).reshape(-1, D)
        vals = self.value(t, pts).reshape(v.shape[0], 2, D)
        return (vals[:, 0] - vals[:, 1]) / (2 * h)

    def feedback(self, t: float, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Optimal feedback θ*(t, v) = (w*, b*) at the nodes, shapes ``(M, N, N)``, ``(M, N)``
        (uncontrolled parts are the fixed ``w0``/``b0``)."""
        v = _states(v, self.problem.D)
        row = self.problem.minimize(v, self.gradient(t, v), self.options.inner_points,
                                    self.options.newton_iters)
        return self.problem.controls_from(v, row.c)

    def feedback_on_grid(self, index: int, stride: int = 1) -> dict:
        """Feedback and closed-loop velocity at snapshot ``index`` on every ``stride``-th grid
        point per dimension (grid central differences). Returns numpy arrays ``points``,
        ``w``, ``b``, ``velocity`` and the sub-grid ``shape``."""
        V = self.values[index]
        pm, pp = self.grid.one_sided(V)
        sl = tuple(slice(None, None, stride) for _ in range(self.grid.D))
        pbar = (0.5 * (pm + pp))[(slice(None), *sl)]
        shape = tuple(pbar.shape[1:])
        p = pbar.reshape(self.grid.D, -1).T
        axes = [a[::stride] for a in self.grid.axes()]
        mesh = torch.meshgrid(*axes, indexing="ij")
        v = torch.stack([m.reshape(-1) for m in mesh], 1)
        row = self.problem.minimize(v, p, self.options.inner_points, self.options.newton_iters)
        w, b = self.problem.controls_from(v, row.c)
        return {"points": v.numpy(), "w": w.numpy(), "b": b.numpy(),
                "velocity": row.f.numpy(), "shape": shape}
