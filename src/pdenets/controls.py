"""Controls θ = (w, b) as functions of (x, y, t), independent of the discretization (MODEL.md §1–2).

The controls of the continuum network are a weight kernel w(x, y, t) on Ω × Ω × [0, T] and a bias
field b(x, t) on Ω × [0, T]. They are *functions*: a discretization evaluates them at its own
width nodes and depth stages (:meth:`Controls.discretize`), so one set of controls runs at any
width N and any number of steps S (discretization invariance, MODEL.md §2).

Two representations are provided:

:class:`GridControls` (learnable)
    Values on a control grid in x (and in y): in space either multilinear on ``size`` vertices
    per axis (``space_basis="linear"``, continuous controls; constants and functions affine in
    each of x, y are represented exactly) or piecewise constant on ``size`` equal cells per axis
    (``space_basis="constant"``: bounded, discontinuous controls); in depth either piecewise
    constant on ``intervals`` equal intervals (``time_basis="constant"``, the
    weight-tied-per-block ResNet) or piecewise linear between ``intervals + 1`` knots
    (``time_basis="linear"``).

    The piecewise-constant space basis is the continuum network whose discretization is exact
    in width: if the lifted input is constant on the same cells (an image on its pixel grid)
    and ε = 0, then u(·, t) stays constant on them (the right-hand side of §1 is, for every
    dynamics variant), so every midpoint rule
    with a multiple of the cells per axis gives the same outputs up to rounding, and the cells
    are the network's neurons. Non-aligned widths converge at first order (the integrand jumps
    inside quadrature cells). Such controls satisfy the hypotheses of §3 (w bounded), not the
    smoothness behind second-order quadrature convergence.
:class:`FunctionControls` (fixed)
    Exact Python callables ``w(x, y, t)`` and ``b(x, t)``, evaluated at every stage; used for
    verification against analytic solutions.

The discretized object (:class:`KernelSchedule`) returns, for a depth t inside a step
[t0, t1], the matrix ``A(t)[i, j] = w(x_i, x_j, t) ω_j`` and the vector ``b(x_i, t)``, so that
the integral ∫ w(x_i, y, t) u(y) dy is the matrix product ``u @ A(t).T`` (cost O(B N²)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import _basis
from ._basis import SPACE_BASES
from ._checks import check_choice, check_finite, check_positive
from .errors import PdenetsError
from .quadrature import Grid
from .schedules import (  # noqa: F401 - re-exported: they lived here
    _TABLE_INDEX,
    BFn,
    KernelSchedule,
    WFn,
    _canonical,
    _FunctionSchedule,
    _KnotSchedule,
    _StageTable,
)

TIME_BASES = ("constant", "linear")
__all__ = ["GridControls", "FunctionControls", "Controls", "KernelSchedule", "TIME_BASES",
           "SPACE_BASES"]


class Controls(nn.Module):
    """Base class of control representations θ = (w, b) (MODEL.md §1–2)."""

    dim: int
    T: float
    #: knot values of w and b, for the representations that store them (GridControls, the
    #: kernel families of :mod:`pdenets.kernels`); declared for the type checker
    w: torch.Tensor
    b: torch.Tensor

    def discretize(self, grid: Grid) -> KernelSchedule:
        """Evaluate the controls on the nodes of ``grid`` (see :class:`KernelSchedule`)."""
        raise NotImplementedError


class GridControls(Controls):
    """Learnable controls on a control grid (see the module docstring).

    Parameters
    ----------
    dim : int
        Dimension d of Ω (1 or 2).
    size : int or tuple of int
        Control-grid vertices (≥ 2, ``space_basis="linear"``) or cells (≥ 1, ``"constant"``)
        per axis, so w has ``prod(size)²`` values per knot.
    intervals : int
        Number M of depth intervals of the control (≥ 1).
    T : float
        Final depth.
    time_basis : {"linear", "constant"}
        Piecewise-linear (M + 1 knots) or piecewise-constant (M values) in depth.
    w, b : torch.Tensor, optional
        Initial knot values, shapes ``(K, Nc, Nc)`` and ``(K, Nc)`` with K = M (+1 for linear)
        and Nc = prod(size). Zeros if omitted.
    dtype : torch.dtype
    space_basis : {"linear", "constant"}
        Multilinear on vertices or piecewise constant on cells (see the module docstring).
    """

    def __init__(
        self,
        dim: int,
        size: int | tuple[int, ...],
        intervals: int,
        T: float = 1.0,
        time_basis: str = "linear",
        w: torch.Tensor | None = None,
        b: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float64,
        space_basis: str = "linear",
    ) -> None:
        super().__init__()
        if dim not in (1, 2):
            raise PdenetsError(f"controls: dimension must be 1 or 2, got {dim!r}")
        self.dim = dim
        self.space_basis = check_choice(space_basis, SPACE_BASES, "space basis")
        self.size = _basis.check_size(size, dim, self.space_basis, "controls")
        check_positive(intervals, "controls: intervals", integer=True)
        check_positive(T, "T")
        self.intervals = int(intervals)
        self.T = float(T)
        self.time_basis = check_choice(time_basis, TIME_BASES, "time basis")
        K = self.n_knots
        Nc = self.n_control
        self.w = nn.Parameter(self._init(w, (K, Nc, Nc), "w", dtype))
        self.b = nn.Parameter(self._init(b, (K, Nc), "b", dtype))

    @staticmethod
    def _init(v, shape, name, dtype) -> torch.Tensor:
        if v is None:
            return torch.zeros(shape, dtype=dtype)
        v = torch.as_tensor(v, dtype=dtype)
        if tuple(v.shape) != tuple(shape):
            raise PdenetsError(
                f"controls: {name} has shape {tuple(v.shape)}, expected {tuple(shape)}"
            )
        return check_finite(v.detach().clone(), f"controls.{name}")

    @property
    def n_knots(self) -> int:
        """Number K of depth knots (M for constant, M + 1 for linear)."""
        return self.intervals + (1 if self.time_basis == "linear" else 0)

    @property
    def n_control(self) -> int:
        """Number Nc of control-grid vertices (cells)."""
        return math.prod(self.size)

    def like(self, **changes) -> GridControls:
        """A new :class:`GridControls` with this one's structure (dim, size, intervals, T, bases,
        dtype) except ``changes`` (any constructor argument, e.g. ``w=``, ``T=``)."""
        kw: dict[str, Any] = dict(dim=self.dim, size=self.size, intervals=self.intervals, T=self.T,
                  time_basis=self.time_basis, dtype=self.w.dtype, space_basis=self.space_basis)
        kw.update(changes)
        return GridControls(**kw).to(self.w.device)

    def basis_matrix(self, nodes: torch.Tensor) -> torch.Tensor:
        """``P`` with ``f(x_i) = Σ_c P[i, c] f_c`` for the stored values ``f_c``."""
        return _basis.basis_matrix(nodes, self.size, self.space_basis).to(self.w.dtype)

    def mass_matrix(self) -> torch.Tensor:
        """Exact L²(Ω) Gram matrix of the space basis, built once per dtype and device (the
        regularization of every training step reads it: no host-to-device copy, so no
        synchronization and nothing that breaks CUDA-graph capture)."""
        return self._constant("mass", _basis.basis_mass)

    def stiffness_matrix(self) -> torch.Tensor:
        """Exact Gram matrix of the gradients of the (linear) space basis, cached likewise."""
        return self._constant("stiffness", _basis.basis_stiffness)

    def mass_factor(self) -> torch.Tensor:
        """L with ``mass_matrix() = L Lᵀ``: the vector of square roots of the diagonal for the
        ``constant`` basis (a diagonal mass matrix), the Cholesky factor otherwise; cached."""
        def build(size, basis, dtype):
            M = _basis.basis_mass(size, basis, torch.float64)
            if basis != "linear":
                return M.diagonal().sqrt().to(dtype)
            return torch.linalg.cholesky(M).to(dtype)
        return self._constant("mass_factor", build)

    def time_grams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The depth Gram matrices of the knots (:func:`pdenets._basis.time_grams`), cached
        per T, intervals, basis, dtype and device."""
        cache: dict = self.__dict__.setdefault("_constants", {})
        key = ("time", self.T, self.intervals, self.time_basis, self.w.dtype, self.w.device)
        if key not in cache:
            cache[key] = tuple(g.to(self.w.dtype).to(self.w.device)
                               for g in _basis.time_grams(self.T, self.intervals, self.time_basis))
        return cache[key]

    def _constant(self, name: str, build) -> torch.Tensor:
        cache: dict = self.__dict__.setdefault("_constants", {})
        key = (name, self.size, self.space_basis, self.w.dtype, self.w.device)
        if key not in cache:
            cache[key] = build(self.size, self.space_basis, self.w.dtype).to(self.w.device)
        return cache[key]

    def knot_times(self) -> torch.Tensor:
        """Depths of the knots: interval midpoints (constant) or interval ends (linear)."""
        d = self.T / self.intervals
        if self.time_basis == "constant":
            return (torch.arange(self.intervals, dtype=torch.float64) + 0.5) * d
        return torch.arange(self.intervals + 1, dtype=torch.float64) * d

    def vertices(self) -> torch.Tensor:
        """Points carrying the stored values — control-grid vertices (linear space basis) or
        cell centres (constant) — shape ``(Nc, d)``."""
        return _basis.basis_nodes(self.size, self.space_basis, self.w.dtype, self.w.device)

    def discretize(self, grid: Grid) -> KernelSchedule:
        if grid.dim != self.dim:
            raise PdenetsError(f"controls are {self.dim}-D but the width grid is {grid.dim}-D")
        P = _basis.grid_matrix(grid, self.size, self.space_basis, self.w.dtype)
        wts = grid.weights.to(self.w.dtype)
        if P is None:  # the control grid is the width grid
            A, b = self.w * wts, self.b
        else:
            A = torch.matmul(torch.matmul(P, self.w), P.T) * wts
            b = self.b @ P.T
        return _KnotSchedule(A, b, self.T, self.time_basis, wts)

    # -- construction helpers ------------------------------------------------------------
    @classmethod
    def from_functions(
        cls,
        w_fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor | float],
        b_fn: Callable[[torch.Tensor, float], torch.Tensor | float],
        dim: int,
        size: int | tuple[int, ...],
        intervals: int,
        T: float = 1.0,
        time_basis: str = "linear",
        dtype: torch.dtype = torch.float64,
        space_basis: str = "linear",
    ) -> GridControls:
        """Sample callables ``w_fn(x, y, t)`` and ``b_fn(x, t)`` at the control-grid vertices
        (cell centres for ``space_basis="constant"``) and knot depths (``x``, ``y``
        broadcastable tensors with last axis d; ``t`` a float)."""
        c = cls(dim, size, intervals, T, time_basis, dtype=dtype, space_basis=space_basis)
        v = c.vertices()
        ws, bs = [], []
        for t in c.knot_times().tolist():
            W = torch.as_tensor(w_fn(v[:, None, :], v[None, :, :], t), dtype=dtype)
            ws.append(W * torch.ones(len(v), len(v), dtype=dtype))
            B = torch.as_tensor(b_fn(v, t), dtype=dtype)
            bs.append(B * torch.ones(len(v), dtype=dtype))
        with torch.no_grad():
            c.w.copy_(check_finite(torch.stack(ws), "w_fn values"))
            c.b.copy_(check_finite(torch.stack(bs), "b_fn values"))
        return c

    @classmethod
    def constant(
        cls, w0: float, b0: float, dim: int = 1, T: float = 1.0, dtype=torch.float64
    ) -> GridControls:
        """Controls w ≡ w0, b ≡ b0 (represented exactly, with the smallest grid)."""
        return cls.from_functions(
            lambda x, y, t: w0, lambda x, t: b0, dim, 2, 1, T, "constant", dtype
        )

    def prolong(
        self, size: int | tuple[int, ...] | None = None, intervals: int | None = None
    ) -> GridControls:
        """The same functions on a finer control grid and/or more depth intervals.

        Exact (no change of the represented function) when ``size − 1`` (linear space basis) or
        ``size`` (constant) is a multiple of the current one per axis and ``intervals`` is a
        multiple of the current one (MODEL.md §2, multilevel training).
        """
        size = self.size if size is None else size
        size = tuple(size) if isinstance(size, tuple | list) else (int(size),) * self.dim
        intervals = self.intervals if intervals is None else int(intervals)
        new = GridControls(self.dim, size, intervals, self.T, self.time_basis, dtype=self.w.dtype,
                           space_basis=self.space_basis)
        Ps = _basis.basis_prolong(self.size, new.size, self.space_basis,
                                  self.w.dtype).to(self.w.device)
        # depth: evaluate the old time interpolation at the new knot times
        sched = _KnotSchedule(self.w, self.b, self.T, self.time_basis, None)
        new_t = new.knot_times().tolist()
        d_new = self.T / intervals
        ws, bs = [], []
        for t in new_t:
            t0 = t - 0.5 * d_new if self.time_basis == "constant" else t
            t1 = t + 0.5 * d_new if self.time_basis == "constant" else t
            k, s = sched.index(t, t0, t1)
            if s == 0.0:
                W, B = self.w[k], self.b[k]
            else:
                W = torch.lerp(self.w[k], self.w[k + 1], s)
                B = torch.lerp(self.b[k], self.b[k + 1], s)
            ws.append(Ps @ W @ Ps.T)
            bs.append(B @ Ps.T)
        with torch.no_grad():
            new.w.copy_(torch.stack(ws))
            new.b.copy_(torch.stack(bs))
        return new.to(self.w.device)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, size={self.size}, intervals={self.intervals}, T={self.T}, "
            f"time_basis={self.time_basis!r}, space_basis={self.space_basis!r}"
        )


class FunctionControls(Controls):
    """Fixed controls given by exact callables (not learnable, not saved to model files).

    Parameters
    ----------
    w_fn : callable
        ``w_fn(x, y, t)`` with broadcastable ``x``, ``y`` of last dimension d, float ``t``.
    b_fn : callable
        ``b_fn(x, t)``.
    dim : int
    T : float
    time_dependent : bool
        If False the callables are evaluated once per discretization (faster).
    """

    def __init__(
        self, w_fn: WFn, b_fn: BFn, dim: int = 1, T: float = 1.0, time_dependent: bool = True
    ) -> None:
        super().__init__()
        if not callable(w_fn) or not callable(b_fn):
            raise PdenetsError("FunctionControls: w_fn and b_fn must be callable")
        check_positive(T, "T")
        self.w_fn, self.b_fn, self.dim, self.T = w_fn, b_fn, dim, float(T)
        self.time_dependent = time_dependent

    def discretize(self, grid: Grid) -> KernelSchedule:
        if grid.dim != self.dim:
            raise PdenetsError(f"controls are {self.dim}-D but the width grid is {grid.dim}-D")
        return _FunctionSchedule(self.w_fn, self.b_fn, grid, self.time_dependent)
