"""Dense kernels w_{cc'}(x, y, t) on a control grid in (x, y) (MODEL.md §1-2, §10)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _basis
from .._basis import SPACE_BASES
from .._checks import check_choice
from ..errors import PdenetsError
from ._ops import DenseOp
from ._time import _Time
from .base import Kernel, _blocks, _check_channels, _init_param


class DenseKernel(Kernel):
    """w_{cc'}(x, y, t) on a control grid in (x, y) (MODEL.md §1-2), with C channels.

    With ``channels=1`` this is the kernel of :class:`~pdenets.controls.GridControls` (same
    values, same discretization; :meth:`from_grid_controls` wraps one).

    Parameters
    ----------
    dim : int
    size : int or tuple of int
        Control-grid vertices (linear basis) or cells (constant) per axis.
    intervals, T, time_basis :
        Depth representation (as :class:`~pdenets.controls.GridControls`).
    channels : int
    w : torch.Tensor, optional
        Knot values ``(K, C, C, Nc, Nc)``; zeros if omitted.
    space_basis : {"linear", "constant"}
    """

    kind = "dense"

    def __init__(self, dim: int, size, intervals: int, T: float = 1.0,
                 time_basis: str = "linear", channels: int = 1, w=None,
                 dtype=torch.float64, space_basis: str = "linear") -> None:
        super().__init__()
        if dim not in (1, 2):
            raise PdenetsError(f"kernel: dimension must be 1 or 2, got {dim!r}")
        self.dim, self.channels = dim, _check_channels(channels)
        self.space_basis = check_choice(space_basis, SPACE_BASES, "space basis")
        self.size = _basis.check_size(size, dim, self.space_basis, "dense kernel")
        self.time = _Time(intervals, T, time_basis)
        nc, C = math.prod(self.size), self.channels
        self.w = nn.Parameter(_init_param(w, (self.n_knots, C, C, nc, nc), "w", dtype))

    @classmethod
    def from_grid_controls(cls, ctrl) -> DenseKernel:
        """The kernel of a :class:`~pdenets.controls.GridControls` (one channel)."""
        return cls(ctrl.dim, ctrl.size, ctrl.intervals, ctrl.T, ctrl.time_basis, 1,
                   ctrl.w.detach()[:, None, None], ctrl.w.dtype, ctrl.space_basis)

    def is_dense_on(self, grid):
        return True

    def dense_knots(self, grid):
        P = _basis.grid_matrix(grid, self.size, self.space_basis, self.w.dtype)
        A = self.w if P is None else torch.matmul(torch.matmul(P, self.w), P.T)
        A = A * grid.weights.to(self.w.dtype)
        return _blocks(A)

    def knot_tensors(self, grid):
        return (self.dense_knots(grid),)

    def make_op(self, tensors, grid):
        return DenseOp(tensors[0])

    def _mass(self, stiff=False) -> torch.Tensor:
        if stiff:
            return _basis.basis_stiffness(self.size, self.space_basis,
                                          self.w.dtype).to(self.w.device)
        return _basis.basis_mass(self.size, self.space_basis, self.w.dtype).to(self.w.device)

    def norms(self, spatial=False):
        M, W = self._mass(), self.w

        def form(L, R):
            return lambda i, j: (torch.matmul(L, W[i]) * torch.matmul(W[j], R)).sum(
                (-4, -3, -2, -1))

        dev = W.device
        out = [self.time.integral(form(M, M), self.n_knots, dev),
               self.time.jump_sum(form(M, M), self.n_knots, dev).to(W.dtype)]
        if spatial:
            S = self._mass(stiff=True)
            out.append(self.time.integral(lambda i, j: form(S, M)(i, j) + form(M, S)(i, j),
                                          self.n_knots, dev))
        return tuple(out)

    def operator_norm_bound(self, t):
        # the operator norm is at most the Hilbert-Schmidt norm ‖w(t)‖_{L²(Ω×Ω)}
        M = self._mass()
        with torch.no_grad():
            Wt = self.time.value(self.w, t)
            return math.sqrt(max(0.0, float((torch.matmul(M, Wt) * torch.matmul(Wt, M)).sum())))

    def prolong(self, size=None, intervals=None):
        size = self.size if size is None else _basis.check_size(size, self.dim,
                                                                 self.space_basis, "prolong")
        intervals = self.time.intervals if intervals is None else int(intervals)
        Ps = _basis.basis_prolong(self.size, size, self.space_basis,
                                  self.w.dtype).to(self.w.device)
        with torch.no_grad():
            W = self.time.prolong(self.w.detach(), intervals)
            W = Ps @ W @ Ps.T
        return DenseKernel(self.dim, size, intervals, self.T, self.time.basis, self.channels,
                           W, self.w.dtype, self.space_basis).to(self.w.device)

    def lr_scales(self):
        # w(x, y) integrated over y: s = Nc, as GridControls (Trainer.param_groups)
        return {"w": float(math.prod(self.size))}

    def config(self):
        return {"kind": "dense", "size": list(self.size), "space_basis": self.space_basis}

    def extra_repr(self):
        return f"dim={self.dim}, size={self.size}, channels={self.channels}"
