"""Private: the homogeneous-Neumann Laplacian Δ_x on a structured width grid (MODEL.md §1).

Second-order finite differences on midpoint (cell-centred) and trapezoid (vertex-centred)
tensor grids. The operator is self-adjoint in the grid's weighted inner product, and per axis it
is ``L_a = D^{-1} S`` with S symmetric and D the (relative) quadrature weights, so
``D^{1/2} L_a D^{-1/2} = Q Λ Qᵀ``. Functions of L (exp(τL), (I − τL)^{-1}) are applied in this
eigenbasis, axis by axis, in O(B N n) operations.
"""

from __future__ import annotations

import torch

from .errors import PdenetsError
from .quadrature import Grid


class NeumannLaplacian:
    """Neumann Laplacian on a midpoint or trapezoid grid (see module docstring)."""

    def __init__(self, grid: Grid) -> None:
        if grid.rule not in ("midpoint", "trapezoid") or grid.shape is None:
            raise PdenetsError(
                f"diffusion (eps > 0) needs a structured 'midpoint' or 'trapezoid' width grid, "
                f"not {grid.rule!r}"
            )
        self.shape = grid.shape
        self.rule = grid.rule
        dtype, device = grid.dtype, grid.device
        self.h2: list[float] = []
        self.V: list[torch.Tensor] = []
        self.Vinv: list[torch.Tensor] = []
        self.lams: list[torch.Tensor] = []
        for n in self.shape:
            h = 1.0 / n if self.rule == "midpoint" else 1.0 / max(n - 1, 1)
            self.h2.append(h * h)
            S = torch.zeros(n, n, dtype=torch.float64)
            for i in range(n - 1):
                S[i, i] -= 1.0
                S[i + 1, i + 1] -= 1.0
                S[i, i + 1] += 1.0
                S[i + 1, i] += 1.0
            S /= h * h
            D = torch.ones(n, dtype=torch.float64)
            if self.rule == "trapezoid" and n > 1:
                D[0] = D[-1] = 0.5
            sd = torch.sqrt(D)
            lam, Q = torch.linalg.eigh(S / sd[:, None] / sd[None, :])
            self.lams.append(lam.to(dtype=dtype, device=device))
            self.V.append((Q / sd[:, None]).to(dtype=dtype, device=device))
            self.Vinv.append((Q.T * sd[None, :]).to(dtype=dtype, device=device))
        lam_sum = self.lams[0]
        for lam in self.lams[1:]:
            lam_sum = (lam_sum[:, None] + lam[None, :]).reshape(-1)
        self.eigenvalues = lam_sum
        #: spectral radius of L (sets the explicit stability limit)
        self.spectral_radius = float(torch.max(torch.abs(lam_sum)))

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Δu for nodal values u of shape ``(B, N)`` (stencil, O(B N))."""
        B = u.shape[0]
        v = u.reshape(B, *self.shape)
        out = torch.zeros_like(v)
        for a, n in enumerate(self.shape):
            if n == 1:
                continue
            ax = a + 1
            first = v.narrow(ax, 0, 1)
            last = v.narrow(ax, n - 1, 1)
            if self.rule == "midpoint":  # ghost cell equals boundary cell
                lo, hi = first, last
            else:  # trapezoid: mirror ghost u_{-1} = u_1
                lo, hi = v.narrow(ax, 1, 1), v.narrow(ax, n - 2, 1)
            left = torch.cat([lo, v.narrow(ax, 0, n - 1)], dim=ax)
            right = torch.cat([v.narrow(ax, 1, n - 1), hi], dim=ax)
            out = out + (left + right - 2.0 * v) / self.h2[a]
        return out.reshape(B, -1)

    def node_weights(self, dtype, device) -> torch.Tensor:
        """Relative quadrature weights D (per node) that make L self-adjoint: DL = Lᵀ D."""
        d = None
        for n in self.shape:
            da = torch.ones(n, dtype=dtype, device=device)
            if self.rule == "trapezoid" and n > 1:
                da[0] = da[-1] = 0.5
            d = da if d is None else (d[:, None] * da[None, :]).reshape(-1)
        assert d is not None  # the grid has at least one axis
        return d

    def transpose_apply(self, lam: torch.Tensor) -> torch.Tensor:
        """Lᵀ λ = D L (D^{-1} λ), for λ of shape ``(B, N)``."""
        if self.rule == "midpoint":
            return self(lam)
        d = self.node_weights(lam.dtype, lam.device)
        return d * self(lam / d)

    def apply_function(self, u: torch.Tensor, f) -> torch.Tensor:
        """f(L) u for a scalar function f of the eigenvalues, u of shape ``(B, N)``."""
        B = u.shape[0]
        v = u.reshape(B, *self.shape)
        for a in range(len(self.shape)):
            v = torch.movedim(torch.tensordot(v, self.Vinv[a], dims=([a + 1], [1])), -1, a + 1)
        v = v * f(self.eigenvalues).reshape(*self.shape)
        for a in range(len(self.shape)):
            v = torch.movedim(torch.tensordot(v, self.V[a], dims=([a + 1], [1])), -1, a + 1)
        return v.reshape(B, -1)


def laplacian_for(grid: Grid) -> NeumannLaplacian:
    """The (cached) Neumann Laplacian of ``grid``."""
    lap = grid._cache.get("laplacian")
    if lap is None:
        lap = grid._cache["laplacian"] = NeumannLaplacian(grid)
    return lap
