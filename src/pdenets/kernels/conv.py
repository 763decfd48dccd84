"""Convolution kernels w_{cc'}(x, y, t) = k_{cc'}(x − y, t) (MODEL.md §10)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import _basis
from .._basis import SPACE_BASES
from .._checks import check_choice
from ..errors import PdenetsError
from ..quadrature import Grid
from ._ops import CONV_METHODS, ConvOp, DenseOp
from ._time import _gram_1d, _kron, _Time
from .base import Kernel, _blocks, _check_channels, _init_param


class ConvKernel(Kernel):
    """Convolution kernel w_{cc'}(x, y, t) = k_{cc'}(x − y, t) (MODEL.md §10).

    Parameters
    ----------
    dim : int
    radius : float
        Receptive-field radius r ∈ (0, 1]: k vanishes unless |z_a| ≤ r on every axis.
    size : int or tuple of int
        Displacement-grid vertices (linear basis, ≥ 2) or cells (constant, ≥ 1) per axis on
        [−r, r]. An odd number of vertices (even number of cells) puts z = 0 on the grid.
    intervals, T, time_basis, channels, dtype :
        As :class:`DenseKernel`.
    k : torch.Tensor, optional
        Knot values ``(K, C, C, Mk)`` with Mk = prod(size); zeros if omitted.
    space_basis : {"linear", "constant"}
        Basis of k on the displacement grid.
    method : {"auto", "direct", "fft", "dense"}
        Evaluation on uniform grids: by the cost model (``auto``), or forced.
    """

    kind = "conv"

    def __init__(self, dim: int, radius: float, size, intervals: int, T: float = 1.0,
                 time_basis: str = "linear", channels: int = 1, k=None, dtype=torch.float64,
                 space_basis: str = "linear", method: str = "auto") -> None:
        super().__init__()
        if dim not in (1, 2):
            raise PdenetsError(f"kernel: dimension must be 1 or 2, got {dim!r}")
        try:
            r = float(radius)
        except (TypeError, ValueError):
            r = float("nan")
        if not (0.0 < r <= 1.0):
            raise PdenetsError(f"conv kernel: radius must lie in (0, 1] (a fraction of the "
                               f"width domain), got {radius!r}")
        self.dim, self.radius, self.channels = dim, r, _check_channels(channels)
        self.space_basis = check_choice(space_basis, SPACE_BASES, "space basis")
        self.size = _basis.check_size(size, dim, self.space_basis, "conv kernel")
        self.method = check_choice(method, CONV_METHODS, "convolution method")
        self.time = _Time(intervals, T, time_basis)
        C = self.channels
        self.k = nn.Parameter(_init_param(k, (self.n_knots, C, C, math.prod(self.size)), "k",
                                          dtype))

    # -- evaluation ----------------------------------------------------------------------
    def basis_at(self, z: torch.Tensor) -> torch.Tensor:
        """``(len(z), Mk)``: the displacement basis at displacements z ``(n, d)``, zero
        outside the support |z_a| ≤ r."""
        r = self.radius
        s = (z + r) / (2 * r)
        if self.space_basis == "constant":
            # a displacement on a cell face takes the mean of the two cells (the midpoint rule
            # then integrates a pixel-aligned k against pixel-constant fields exactly)
            eps = 1e-9 / max(self.size)
            P = 0.5 * (_basis.basis_matrix(s - eps, self.size, "constant")
                       + _basis.basis_matrix(s + eps, self.size, "constant")).to(self.k.dtype)
        else:
            P = _basis.basis_matrix(s, self.size, self.space_basis).to(self.k.dtype)
        inside = (z.abs() <= r * (1 + 1e-12)).all(dim=1)
        return P * inside[:, None].to(P.dtype)

    def uniform(self, grid: Grid) -> bool:
        """Whether the grid is a uniform tensor grid (a convolution)."""
        return grid.rule in ("midpoint", "trapezoid") and grid.shape is not None

    def is_dense_on(self, grid):
        return self.method == "dense" or not self.uniform(grid)

    def stencil_half(self, grid: Grid) -> tuple[int, ...]:
        out = []
        for ax in grid.axes:
            n = len(ax)
            h = float(ax[1] - ax[0]) if n > 1 else 1.0
            out.append(min(n - 1, int(math.floor(self.radius / h * (1 + 1e-12)))))
        return tuple(out)

    def stencil_knots(self, grid: Grid) -> torch.Tensor:
        """k at the grid's displacements: ``(K, C, C, 2L_0+1[, 2L_1+1])``."""
        half = self.stencil_half(grid)
        offs = []
        for ax, L in zip(grid.axes, half):
            d = (ax[:L + 1] - ax[0]).to(self.k.dtype)
            offs.append(torch.cat([-d.flip(0)[:-1], d]))
        mesh = torch.meshgrid(*offs, indexing="ij")
        z = torch.stack([m.reshape(-1) for m in mesh], dim=1)
        Pz = self.basis_at(z)
        S = self.k @ Pz.T
        return S.reshape(*S.shape[:3], *(2 * L + 1 for L in half))

    def dense_knots(self, grid):
        x = grid.nodes.to(self.k.dtype)
        N = x.shape[0]
        z = (x[:, None, :] - x[None, :, :]).reshape(N * N, -1)
        A = (self.k @ self.basis_at(z).T).reshape(*self.k.shape[:3], N, N)
        return _blocks(A * grid.weights.to(self.k.dtype))

    def knot_tensors(self, grid):
        if self.is_dense_on(grid):
            return (self.dense_knots(grid),)
        return (self.stencil_knots(grid),)

    def make_op(self, tensors, grid):
        if self.is_dense_on(grid):
            return DenseOp(tensors[0])
        return ConvOp(tensors[0], tuple(grid.shape), grid.weights.to(self.k.dtype),
                      self.method)

    # -- norms ---------------------------------------------------------------------------
    def _grams(self, deriv_axis: int | None = None) -> torch.Tensor:
        """∫ φ_p(z) φ_q(z) a(z) dz with a(z) = Π(1 − |z_a|) (the measure of {x: x, x − z ∈
        Ω}); with ``deriv_axis`` the derivatives along that axis."""
        r = self.radius
        mats = []
        for a, k in enumerate(self.size):
            d = deriv_axis == a
            mats.append(_gram_1d(-r, r, k, self.space_basis, lambda z: 1.0 - np.abs(z),
                                 d, d, extra=(0.0,)))
        return torch.as_tensor(_kron(mats), dtype=self.k.dtype, device=self.k.device)

    def norms(self, spatial=False):
        Kp = self.k
        dev = Kp.device

        def form(G):
            return lambda i, j: ((Kp[i] @ G) * Kp[j]).sum((-3, -2, -1))

        G = self._grams()
        out = [self.time.integral(form(G), self.n_knots, dev),
               self.time.jump_sum(form(G), self.n_knots, dev).to(Kp.dtype)]
        if spatial:
            if self.space_basis != "linear":
                raise PdenetsError("the H¹-in-width penalty (gamma > 0) needs a conv kernel in "
                                   "the 'linear' space basis")
            # ∇_x k(x − y) = ∇k, ∇_y k(x − y) = −∇k: twice ∫ |∇k|² a(z) dz
            D = sum(self._grams(a) for a in range(self.dim))
            out.append(2.0 * self.time.integral(form(D), self.n_knots, dev))
        return tuple(out)

    def operator_norm_bound(self, t):
        # Young: ‖k * u‖ ≤ ‖k‖_{L¹} ‖u‖ per channel pair, and |k| ≤ Σ_p |k_p| φ_p (φ_p ≥ 0),
        # so ‖k_{cc'}‖_{L¹} ≤ Σ_p |k_p| ∫φ_p; the block operator's norm is at most the
        # spectral norm of the C×C matrix of these bounds
        r = self.radius
        ints = [_gram_1d(-r, r, k, self.space_basis, lambda z: np.ones_like(z)).sum(1)
                for k in self.size]
        ip = torch.as_tensor(_kron([v[None, :] for v in ints])[0], dtype=self.k.dtype)
        with torch.no_grad():
            kt = self.time.value(self.k.detach().cpu(), t)
            L1 = kt.abs() @ ip
            return float(torch.linalg.matrix_norm(L1, ord=2))

    def prolong(self, size=None, intervals=None):
        size = self.size if size is None else _basis.check_size(size, self.dim,
                                                                 self.space_basis, "prolong")
        intervals = self.time.intervals if intervals is None else int(intervals)
        Ps = _basis.basis_prolong(self.size, size, self.space_basis,
                                  self.k.dtype).to(self.k.device)
        with torch.no_grad():
            k = self.time.prolong(self.k.detach(), intervals) @ Ps.T
        return ConvKernel(self.dim, self.radius, size, intervals, self.T, self.time.basis,
                          self.channels, k, self.k.dtype, self.space_basis,
                          self.method).to(self.k.device)

    def config(self):
        return {"kind": "conv", "radius": self.radius, "size": list(self.size),
                "space_basis": self.space_basis}

    def extra_repr(self):
        return (f"dim={self.dim}, radius={self.radius}, size={self.size}, "
                f"channels={self.channels}, method={self.method!r}")
