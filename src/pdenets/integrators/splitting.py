"""Solvers stable for any step in the diffusion (MODEL.md §2): IMEX Euler (Ascher, Ruuth &
Wetton 1995) and Strang splitting (Strang 1968)."""

from __future__ import annotations

import torch

from .core import Solver


class IMEXEuler(Solver):
    """IMEX Euler: (I − h ε Δ) u_{k+1} = u_k + h R(t_k, u_k); order 1, stable for any h in ε."""

    name, order = "imex-euler", 1
    nodes = (0.0,)

    def step(self, system, t0, h, u, stats, inplace=False):
        stats.nfev += 1
        v = u + h * system.reaction(t0, u, t0, t0 + h)
        if system.eps > 0.0:
            v = system.lap.apply_function(v, lambda lam: 1.0 / (1.0 - h * system.eps * lam))
        return v


class Strang(Solver):
    """Strang splitting: exact diffusion for h/2, a Heun step of the reaction, diffusion h/2.

    Order 2; unconditionally stable in the diffusion (the heat semigroup is applied exactly in
    the Laplacian's eigenbasis).
    """

    name, order = "strang", 2
    nodes = (0.0, 1.0)

    def step(self, system, t0, h, u, stats, inplace=False):
        half = (lambda lam: torch.exp(0.5 * h * system.eps * lam)) if system.eps > 0 else None
        t1 = t0 + h
        if half is not None:
            u = system.lap.apply_function(u, half)
        k1 = system.reaction(t0, u, t0, t1)
        k2 = system.reaction(t1, u + h * k1, t0, t1)
        stats.nfev += 2
        u = u + (0.5 * h) * (k1 + k2)
        if half is not None:
            u = system.lap.apply_function(u, half)
        return u
