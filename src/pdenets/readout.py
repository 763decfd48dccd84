"""Readout R: final field u(·, T) → output y ∈ R^m (MODEL.md §1).

:class:`LinearReadout`
    y_j = ∫_Ω c_j(x) u(x, T) dx + d_j with learnable c_j (on a control grid: multilinear, or
    piecewise constant on cells) and d_j, evaluated by the width quadrature.
:class:`CellAverageReadout`
    y_j = the average of u(·, T) over the j-th of m equal output cells (fixed, no parameters).

With C channels (MODEL.md §10; state ``(B, C·N)``, channel-major) both integrate over x and sum
over the channels: y_j = Σ_c ∫ c_{jc}(x) u_c(x, T) dx + d_j (learnable c_{jc} per channel), or
the sum over channels of the cell averages.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _basis
from ._basis import cell_index
from .errors import PdenetsError
from .quadrature import Grid


class Readout(nn.Module):
    """Base class: maps fields ``(B, N)`` to outputs ``(B, m)``."""

    outputs: int

    def matrix(self, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, d)`` with outputs ``u @ R.T + d``; R has shape ``(m, N)``."""
        raise NotImplementedError

    def forward(self, u: torch.Tensor, grid: Grid) -> torch.Tensor:
        R, d = self.matrix(grid)
        return torch.addmm(d, u, R.T)

    def config(self) -> dict:
        raise NotImplementedError


class LinearReadout(Readout):
    """Learnable linear functionals of u(·, T) (see module docstring).

    Parameters
    ----------
    outputs : int
        m.
    dim : int
    size : int or tuple
        Control-grid vertices (``basis="linear"``) or cells (``"constant"``) per axis for the c_j.
    c, d : torch.Tensor, optional
        Initial values, shapes ``(m, prod(size))`` and ``(m,)``.
    basis : {"linear", "constant"}
        Space basis of the c_j (see :class:`~pdenets.controls.GridControls`).
    channels : int
        C; with C > 1, c has shape ``(m, C, prod(size))``.
    """

    def __init__(self, outputs: int, dim: int, size: int | tuple[int, ...], c=None, d=None,
                 dtype=torch.float64, basis: str = "linear", channels: int = 1) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 256:
            raise PdenetsError(f"readout channels must be an integer in [1, 256], got "
                               f"{channels!r}")
        self.channels = channels
        if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 1:
            raise PdenetsError(f"readout outputs must be a positive integer, got {outputs!r}")
        self.outputs, self.dim = outputs, dim
        self.basis = basis
        self.size = _basis.check_size(size, dim, basis, "readout")
        Nc = math.prod(self.size)
        cshape = (outputs, Nc) if channels == 1 else (outputs, channels, Nc)
        c = torch.zeros(cshape, dtype=dtype) if c is None else torch.as_tensor(c, dtype=dtype)
        d = torch.zeros(outputs, dtype=dtype) if d is None else torch.as_tensor(d, dtype=dtype)
        if tuple(c.shape) != cshape or tuple(d.shape) != (outputs,):
            raise PdenetsError(
                f"readout: c, d have shapes {tuple(c.shape)}, {tuple(d.shape)}; "
                f"expected {cshape}, {(outputs,)}"
            )
        self.c = nn.Parameter(c.clone())
        self.d = nn.Parameter(d.clone())

    def matrix(self, grid):
        P = _basis.grid_matrix(grid, self.size, self.basis, self.c.dtype)
        R = (self.c if P is None else self.c @ P.T) * grid.weights.to(self.c.dtype)
        return R.reshape(self.outputs, -1), self.d

    def config(self) -> dict:
        out: dict = {"kind": "linear", "outputs": self.outputs, "size": list(self.size),
               "basis": self.basis}
        if self.channels > 1:
            out["channels"] = self.channels
        return out


class CellAverageReadout(Readout):
    """Averages of u(·, T) over m equal cells: ``cells = m`` (1-D) or ``(m0, m1)`` (2-D)."""

    def __init__(self, cells: int | tuple[int, ...], channels: int = 1) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 256:
            raise PdenetsError(f"readout channels must be an integer in [1, 256], got "
                               f"{channels!r}")
        self.channels = channels
        self.cells = (int(cells),) if isinstance(cells, int) else tuple(int(c) for c in cells)
        if min(self.cells) < 1 or len(self.cells) not in (1, 2):
            raise PdenetsError(f"cell-average readout: bad cells {cells!r}")
        self.outputs = math.prod(self.cells)
        self.dim = len(self.cells)

    def matrix(self, grid):
        idx = cell_index(grid.nodes, self.cells)
        R = torch.zeros(self.outputs, grid.n, dtype=grid.dtype, device=grid.device)
        R[idx, torch.arange(grid.n, device=grid.device)] = grid.weights
        mass = R.sum(1, keepdim=True)
        if bool((mass == 0).any()):
            raise PdenetsError(
                f"cell-average readout: some of the {self.outputs} output cells contain no "
                f"width node; use more nodes"
            )
        R = R / mass
        if self.channels > 1:
            R = R.repeat(1, self.channels)
        return R, torch.zeros(self.outputs, dtype=grid.dtype, device=grid.device)

    def config(self) -> dict:
        out: dict = {"kind": "cell_average", "cells": list(self.cells)}
        if self.channels > 1:
            out["channels"] = self.channels
        return out
