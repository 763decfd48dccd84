"""Low-rank kernels w_{cc'}(x, y, t) = Σ_r g_{cr}(x, t) h_{c'r}(y, t) (MODEL.md §10)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _basis
from .._basis import SPACE_BASES
from .._checks import check_choice, check_positive
from ..errors import PdenetsError
from ..quadrature import Grid
from ._ops import LowRankOp
from ._time import _Time
from .base import Kernel, _check_channels, _init_param


class LowRankKernel(Kernel):
    """Low-rank kernel w_{cc'}(x, y, t) = Σ_{r ≤ R} g_{cr}(x, t) h_{c'r}(y, t) (MODEL.md §10).

    Parameters
    ----------
    dim, size, intervals, T, time_basis, channels, dtype, space_basis :
        As :class:`DenseKernel`; g and h live on the control grid ``size``.
    rank : int
        R ≥ 1.
    g, h : torch.Tensor, optional
        Knot values ``(K, C, R, Nc)``; zeros if omitted.

    The factors are interpolated in depth, so w(t) = Σ g_r(t) h_r(t) with g, h piecewise
    linear (or constant) in t; the norms integrate the resulting polynomials exactly.
    """

    kind = "lowrank"

    def __init__(self, dim: int, size, rank: int, intervals: int, T: float = 1.0,
                 time_basis: str = "linear", channels: int = 1, g=None, h=None,
                 dtype=torch.float64, space_basis: str = "linear") -> None:
        super().__init__()
        if dim not in (1, 2):
            raise PdenetsError(f"kernel: dimension must be 1 or 2, got {dim!r}")
        check_positive(rank, "low-rank kernel: rank", integer=True)
        self.dim, self.rank, self.channels = dim, int(rank), _check_channels(channels)
        self.space_basis = check_choice(space_basis, SPACE_BASES, "space basis")
        self.size = _basis.check_size(size, dim, self.space_basis, "low-rank kernel")
        self.time = _Time(intervals, T, time_basis)
        shape = (self.n_knots, self.channels, self.rank, math.prod(self.size))
        self.g = nn.Parameter(_init_param(g, shape, "g", dtype))
        self.h = nn.Parameter(_init_param(h, shape, "h", dtype))

    def _nodal(self, V: torch.Tensor, grid: Grid) -> torch.Tensor:
        P = _basis.grid_matrix(grid, self.size, self.space_basis, V.dtype)
        X = V if P is None else V @ P.T  # (K, C, R, N)
        K, C, R, N = X.shape
        return X.permute(0, 1, 3, 2).reshape(K, C * N, R)

    def knot_tensors(self, grid):
        Hw = self._nodal(self.h, grid) * self._wide_weights(grid)[:, None]
        return self._nodal(self.g, grid), Hw

    def make_op(self, tensors, grid):
        return LowRankOp(tensors[0], tensors[1])

    def dense_knots(self, grid):
        G, H = self.knot_tensors(grid)
        return G @ H.transpose(1, 2)

    def dense_matrix(self, grid, t):
        G, H = self.knot_tensors(grid)
        return self.time.value(G, t) @ self.time.value(H, t).T

    # -- norms ---------------------------------------------------------------------------
    def _mass(self, stiff=False):
        if stiff:
            return _basis.basis_stiffness(self.size, self.space_basis,
                                          self.g.dtype).to(self.g.device)
        return _basis.basis_mass(self.size, self.space_basis, self.g.dtype).to(self.g.device)

    @staticmethod
    def _inner(G1, H1, G2, H2, Mg, Mh):
        """⟨Σ g1_r ⊗ h1_r, Σ g2_s ⊗ h2_s⟩ summed over channel pairs (factors ``(C, R, Nc)``)."""
        GG = torch.einsum("crp,pq,csq->rs", G1, Mg, G2)
        HH = torch.einsum("crp,pq,csq->rs", H1, Mh, H2)
        return (GG * HH).sum()

    def _sq(self, G, H, Mg, Mh):
        return self._inner(G, H, G, H, Mg, Mh)

    def norms(self, spatial=False):
        M = self._mass()
        g, h, tm = self.g, self.h, self.time
        if tm.basis == "constant":  # all knots at once: (K, C, R, Nc) batched products
            sq = tm.delta * self._sq_points(g, h, M, M).sum()
            dsq = g.new_zeros(())
            if tm.n_knots > 1:  # jumps w_{k+1} − w_k: rank-2R kernels
                Gc = torch.cat([g[1:], -g[:-1]], 2)
                Hc = torch.cat([h[1:], h[:-1]], 2)
                dsq = self._sq_points(Gc, Hc, M, M).sum() / tm.delta
            if not spatial:
                return sq, dsq
            S = self._mass(stiff=True)
            return sq, dsq, tm.delta * (self._sq_points(g, h, S, M)
                                        + self._sq_points(g, h, M, S)).sum()
        # ‖w(t)‖² is a quartic in t on each interval: 3-point Gauss–Legendre on every
        # interval, all points at once (one batched product instead of a loop of small ones)
        wq, Pv, Pd = self._gauss_maps()
        G, H = torch.tensordot(Pv, g, 1), torch.tensordot(Pv, h, 1)  # (Q, C, R, Nc)
        dG, dH = torch.tensordot(Pd, g, 1), torch.tensordot(Pd, h, 1)
        sq = (wq * self._sq_points(G, H, M, M)).sum()
        # ∂_t (G Hᵀ) = G' Hᵀ + G H'ᵀ: a rank-2R kernel
        dsq = (wq * self._sq_points(torch.cat([dG, G], 2), torch.cat([H, dH], 2), M, M)).sum()
        if not spatial:
            return sq, dsq
        S = self._mass(stiff=True)
        grad = (wq * (self._sq_points(G, H, S, M) + self._sq_points(G, H, M, S))).sum()
        return sq, dsq, grad

    def _gauss_maps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(w (Q,), P (Q, K), D (Q, K))``: the weights of the Gauss points of every depth
        interval (linear basis), the knot weights of the value there and of ∂_t (cached)."""
        key = (self.g.dtype, self.g.device)
        cache = self.__dict__.setdefault("_gauss_cache", {})
        out = cache.get(key)
        if out is None:
            tm = self.time
            pts = tm.gauss(3)
            Q, K = len(pts), self.n_knots
            w = torch.tensor([p[0] for p in pts], dtype=torch.float64)
            P = torch.zeros(Q, K, dtype=torch.float64)
            D = torch.zeros(Q, K, dtype=torch.float64)
            for q, (_, k, a, b) in enumerate(pts):
                P[q, k], P[q, k + 1] = a, b
                D[q, k], D[q, k + 1] = -1.0 / tm.delta, 1.0 / tm.delta
            out = cache[key] = tuple(x.to(dtype=self.g.dtype, device=self.g.device)
                                     for x in (w, P, D))
        return out

    @staticmethod
    def _sq_points(G, H, Mg, Mh):
        """:meth:`_sq` at every point of a leading axis: factors ``(Q, C, R, Nc)`` → ``(Q,)``."""
        GG = (torch.matmul(G, Mg) @ G.transpose(-1, -2)).sum(1)  # (Q, R, R)
        HH = (torch.matmul(H, Mh) @ H.transpose(-1, -2)).sum(1)
        return (GG * HH).sum((-2, -1))

    def operator_norm_bound(self, t):
        M = self._mass()
        with torch.no_grad():
            G, H = self.time.value(self.g, t), self.time.value(self.h, t)
            return math.sqrt(max(0.0, float(self._sq(G, H, M, M))))

    def prolong(self, size=None, intervals=None):
        size = self.size if size is None else _basis.check_size(size, self.dim,
                                                                 self.space_basis, "prolong")
        intervals = self.time.intervals if intervals is None else int(intervals)
        if self.time.basis == "linear" and intervals != self.time.intervals:
            raise PdenetsError("low-rank kernel: refining the depth intervals of piecewise-"
                               "linear factors changes the kernel (a product of linear "
                               "functions); refine the width only")
        Ps = _basis.basis_prolong(self.size, size, self.space_basis,
                                  self.g.dtype).to(self.g.device)
        with torch.no_grad():
            g = self.time.prolong(self.g.detach(), intervals) @ Ps.T
            h = self.time.prolong(self.h.detach(), intervals) @ Ps.T
        return LowRankKernel(self.dim, size, self.rank, intervals, self.T, self.time.basis,
                             self.channels, g, h, self.g.dtype,
                             self.space_basis).to(self.g.device)

    def lr_scales(self):
        # W_ij = ω_j g(x_i) h(x_j): the balanced factorization U = √ω g, V = √ω h of a low-rank
        # layer U Vᵀ gives both factors s = √Nc
        s = float(math.prod(self.size)) ** 0.5
        return {"g": s, "h": s}

    def config(self):
        return {"kind": "lowrank", "rank": self.rank, "size": list(self.size),
                "space_basis": self.space_basis}

    def extra_repr(self):
        return f"dim={self.dim}, size={self.size}, rank={self.rank}, channels={self.channels}"
