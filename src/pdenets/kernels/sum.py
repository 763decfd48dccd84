"""Sums of kernels (e.g. a local convolution plus a low-rank global part, MODEL.md §10)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import PdenetsError
from ._ops import MATRIX_MAX, DenseOp, DenseSumOp, SumOp
from .base import Kernel
from .conv import ConvKernel
from .lowrank import LowRankKernel


class SumKernel(Kernel):
    """The sum of kernels with the same dimension, channels and depth representation.

    The regularization of a sum is the sum of its parts' norms (a norm of the parameters; the
    decomposition of a kernel into a sum is not unique) **(choice)**; the operator-norm bound is
    the sum of the parts' bounds.
    """

    kind = "sum"

    def __init__(self, parts: Sequence[Kernel]) -> None:
        super().__init__()
        parts = list(parts)
        if not parts or not all(isinstance(p, Kernel) for p in parts):
            raise PdenetsError("SumKernel needs one or more kernels")
        p0 = parts[0]
        for p in parts[1:]:
            if (p.dim, p.channels, p.T, p.time.intervals, p.time.basis) != (
                    p0.dim, p0.channels, p0.T, p0.time.intervals, p0.time.basis):
                raise PdenetsError("SumKernel: the parts must share dim, channels, T and the "
                                   "depth knots")
        self.parts = nn.ModuleList(parts)
        self.dim, self.channels, self.time = p0.dim, p0.channels, p0.time

    def is_dense_on(self, grid):
        """One dense matrix per depth knot when the kernel is piecewise constant in depth and
        every part is a matrix on ``grid`` or a low-rank part with C·N ≤ ``MATRIX_MAX``: the
        sum at a knot is then the kernel on its whole depth interval, and a stage costs what
        a dense kernel's costs. (With the linear depth basis a low-rank part's factors are
        interpolated apart, so the sum is materialized per depth instead: :class:`DenseSumOp`.)
        """
        if self.time.basis != "constant":
            return False
        small = self.channels * grid.n <= MATRIX_MAX
        return all(p.is_dense_on(grid) or (small and isinstance(p, LowRankKernel))
                   for p in self.parts)

    def knot_tensors(self, grid):
        if self.is_dense_on(grid):
            mats = [p.knot_tensors(grid)[0] if p.is_dense_on(grid) else p.dense_knots(grid)
                    for p in self.parts]
            out = mats[0]
            for m in mats[1:]:
                out = out + m
            return (out,)
        return tuple(t for p in self.parts for t in p.knot_tensors(grid))

    def make_op(self, tensors, grid):
        if self.is_dense_on(grid):
            return DenseOp(tensors[0])
        ops, i = [], 0
        for p in self.parts:
            n = 2 if isinstance(p, LowRankKernel) else 1
            ops.append(p.make_op(tensors[i:i + n], grid))
            i += n
        # small grids (the digits at 8×8): one materialized matrix, as fast as a dense kernel
        return DenseSumOp(ops) if DenseSumOp.fits(ops) else SumOp(ops)

    def dense_knots(self, grid):
        return torch.stack([p.dense_knots(grid) for p in self.parts]).sum(0)

    def dense_matrix(self, grid, t):
        return torch.stack([p.dense_matrix(grid, t) for p in self.parts]).sum(0)

    def norms(self, spatial=False):
        parts = [p.norms(spatial) for p in self.parts]
        return tuple(sum(vals) for vals in zip(*parts))

    def operator_norm_bound(self, t):
        return sum(p.operator_norm_bound(t) for p in self.parts)

    def prolong(self, size=None, intervals=None):
        return SumKernel([p.prolong(size if not isinstance(p, ConvKernel) else None, intervals)
                          for p in self.parts])

    def lr_scales(self):
        return {f"parts.{i}.{n}": s for i, p in enumerate(self.parts)
                for n, s in p.lr_scales().items()}

    def config(self):
        return {"kind": "sum", "parts": [p.config() for p in self.parts]}
