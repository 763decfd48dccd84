"""Input lifting E: data vector ξ ∈ R^n → initial field u(·, 0) = E ξ (MODEL.md §1).

:class:`PiecewiseConstantLifting`
    u(x, 0) = ξ_i on the i-th of n equal cells of Ω. In 1-D the cells are intervals; in 2-D
    ``shape = (p, q)`` is the pixel grid of an image, pixel (r, c) covering
    [r/p, (r+1)/p) × [c/q, (c+1)/q) (axis 0 of Ω is the image row).
:class:`LearnableLifting`
    u(x, 0) = Σ_i ξ_i φ_i(x) with learnable φ_i stored on a control grid (multilinear, or
    piecewise constant on cells: ``basis``), initialised to the piecewise-constant lifting
    sampled at the control vertices (cell centres).
:class:`ChannelLifting`
    C_in input channels (e.g. colour) → C state channels (MODEL.md §10): each input channel is
    lifted by a base lifting, then mixed pointwise by a learnable C × C_in matrix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _basis
from ._basis import cell_index
from ._checks import check_finite
from .errors import PdenetsError
from .quadrature import Grid


class Lifting(nn.Module):
    """Base class: maps inputs of shape ``(B, *shape)`` to fields of shape ``(B, N)``."""

    shape: tuple[int, ...]

    @property
    def n_features(self) -> int:
        return math.prod(self.shape)

    def flatten(self, xi: torch.Tensor) -> torch.Tensor:
        """Validate ``xi`` (shape ``(B, *shape)`` or ``(B, n)``) and return it as ``(B, n)``."""
        if not torch.is_tensor(xi):
            xi = torch.as_tensor(xi)
        if xi.dim() < 2:
            raise PdenetsError(
                f"inputs must have a batch axis: expected shape (B, {self.n_features}) "
                f"or (B, {', '.join(map(str, self.shape))}), got {tuple(xi.shape)}"
            )
        B = xi.shape[0]
        if tuple(xi.shape[1:]) not in (self.shape, (self.n_features,)):
            raise PdenetsError(
                f"inputs have shape {tuple(xi.shape)}; this network lifts {self.n_features} "
                f"features (shape (B, {', '.join(map(str, self.shape))}))"
            )
        check_finite(xi, "inputs")
        return xi.reshape(B, -1)

    def config(self) -> dict:
        raise NotImplementedError


class PiecewiseConstantLifting(Lifting):
    """Piecewise-constant lifting on n equal cells (see module docstring).

    Parameters
    ----------
    shape : int or tuple of int
        n (1-D) or the image shape (p, q) (2-D).
    """

    def __init__(self, shape: int | tuple[int, ...]) -> None:
        super().__init__()
        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if len(self.shape) not in (1, 2) or min(self.shape) < 1:
            raise PdenetsError(
                f"lifting shape must be (n,) or (p, q) with n, p, q >= 1, got {shape!r}"
            )
        self.dim = len(self.shape)

    def forward(self, xi: torch.Tensor, grid: Grid) -> torch.Tensor:
        xi = self.flatten(xi).to(grid.dtype)
        idx = grid._cache.get(("cells", self.shape))
        if idx is None:
            idx = grid._cache[("cells", self.shape)] = cell_index(grid.nodes, self.shape)
        return xi[:, idx]

    def config(self) -> dict:
        return {"kind": "piecewise_constant", "shape": list(self.shape)}


class LearnableLifting(Lifting):
    """u(x, 0) = Σ_i ξ_i φ_i(x), φ_i learnable on a control grid of ``size`` vertices
    (``basis="linear"``) or cells (``basis="constant"``) per axis."""

    def __init__(
        self, shape: int | tuple[int, ...], size: int | tuple[int, ...], dtype=torch.float64,
        phi: torch.Tensor | None = None, basis: str = "linear",
    ) -> None:
        super().__init__()
        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.dim = len(self.shape)
        self.basis = basis
        self.size = _basis.check_size(size, self.dim, basis, "learnable lifting")
        v = _basis.basis_nodes(self.size, basis, dtype)
        if phi is None:
            phi = torch.nn.functional.one_hot(
                cell_index(v, self.shape), self.n_features
            ).T.to(dtype)
        phi = torch.as_tensor(phi, dtype=dtype)
        if tuple(phi.shape) != (self.n_features, math.prod(self.size)):
            raise PdenetsError(f"learnable lifting: phi has shape {tuple(phi.shape)}")
        self.phi = nn.Parameter(phi.clone())

    def forward(self, xi: torch.Tensor, grid: Grid) -> torch.Tensor:
        xi = self.flatten(xi).to(self.phi.dtype)
        P = _basis.grid_matrix(grid, self.size, self.basis, self.phi.dtype)
        return xi @ (self.phi if P is None else self.phi @ P.T)

    def config(self) -> dict:
        return {"kind": "learnable", "shape": list(self.shape), "size": list(self.size),
                "basis": self.basis}


class ChannelLifting(Lifting):
    """u_c(x, 0) = Σ_{c'} M_{cc'} (E ξ_{c'})(x): a base lifting E per input channel and a
    learnable pointwise mixing matrix M (C × C_in) (MODEL.md §10).

    Inputs have shape ``(B, C_in, *shape)`` (or ``(B, C_in, n)``, ``(B, C_in·n)``; with
    C_in = 1 also ``(B, *shape)``); the output is the state ``(B, C·N)``, channel-major.

    Parameters
    ----------
    base : Lifting
        The lifting of one input channel (its ``shape`` is the per-channel input shape).
    in_channels, channels : int
        C_in and C.
    mix : torch.Tensor, optional
        Initial M, shape ``(C, C_in)``; by default M[c, c mod C_in] = 1 (each state channel
        starts as a copy of one input channel).
    """

    def __init__(self, base: Lifting, in_channels: int, channels: int, mix=None,
                 dtype=torch.float64) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("channels", channels)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 256:
                raise PdenetsError(f"channel lifting: {name} must be an integer in [1, 256], "
                                   f"got {v!r}")
        if isinstance(base, ChannelLifting) or not isinstance(base, Lifting):
            raise PdenetsError("channel lifting: base must be a single-channel Lifting")
        self.base, self.in_channels, self.channels = base, in_channels, channels
        self.shape, self.dim = base.shape, base.dim
        if mix is None:
            mix = torch.zeros(channels, in_channels, dtype=dtype)
            mix[torch.arange(channels), torch.arange(channels) % in_channels] = 1.0
        mix = torch.as_tensor(mix, dtype=dtype)
        if tuple(mix.shape) != (channels, in_channels):
            raise PdenetsError(f"channel lifting: mix has shape {tuple(mix.shape)}, expected "
                               f"{(channels, in_channels)}")
        self.mix = nn.Parameter(check_finite(mix.detach().clone(), "lifting.mix"))

    @property
    def n_features(self) -> int:
        return self.in_channels * math.prod(self.shape)

    def flatten(self, xi: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(xi):
            xi = torch.as_tensor(xi)
        n, ci = math.prod(self.shape), self.in_channels
        ok = xi.dim() >= 2 and tuple(xi.shape[1:]) in {
            (ci, *self.shape), (ci, n), (ci * n,)} | ({self.shape} if ci == 1 else set())
        if not ok:
            raise PdenetsError(
                f"inputs have shape {tuple(xi.shape)}; this network lifts {ci} channel(s) of "
                f"shape {self.shape}: expected (B, {ci}, {', '.join(map(str, self.shape))})")
        check_finite(xi, "inputs")
        return xi.reshape(xi.shape[0], ci * n)

    def forward(self, xi: torch.Tensor, grid: Grid) -> torch.Tensor:
        xi = self.flatten(xi)
        B = xi.shape[0]
        u = self.base(xi.reshape(B * self.in_channels, -1), grid).reshape(
            B, self.in_channels, -1)
        return torch.einsum("oc,bcn->bon", self.mix.to(u.dtype), u).reshape(B, -1)

    def config(self) -> dict:
        return {"kind": "channels", "in_channels": self.in_channels,
                "channels": self.channels, "base": self.base.config()}
