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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import _basis
from ._basis import SPACE_BASES
from ._checks import check_choice, check_finite, check_positive
from .errors import PdenetsError
from .quadrature import Grid

TIME_BASES = ("constant", "linear")
__all__ = ["GridControls", "FunctionControls", "Controls", "KernelSchedule", "TIME_BASES",
           "SPACE_BASES"]

WFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
BFn = Callable[[torch.Tensor, float], torch.Tensor]


class KernelSchedule:
    """Controls evaluated on a width grid, as a function of depth (see module docstring)."""

    #: quadrature weights ω of the width grid (set by the subclasses)
    _weights: torch.Tensor

    #: depths at which the controls may jump (step boundaries should include them)
    breakpoints: tuple[float, ...] = ()

    def at(self, t: float, t0: float, t1: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(A(t), b(t))`` for a stage at depth t of the step [t0, t1]."""
        raise NotImplementedError

    def norms(self, t: float, t0: float, t1: float) -> float:
        """Operator norm (spectral norm) of the discretized integral operator at depth t, as a
        map of L²_ω (the grid's weighted L²) to itself (used by the Gronwall bound, §3)."""
        A, _ = self.at(t, t0, t1)
        w = self._weights
        s = torch.sqrt(w)
        # L²_ω operator norm of A equals the spectral norm of diag(√ω) A diag(1/√ω)
        return float(torch.linalg.matrix_norm(s[:, None] * A / s[None, :], ord=2))

    def batched(self, stages: Sequence[tuple[float, float, float]],
                chunk: int | None = None) -> KernelSchedule:
        """The schedule with the controls of all ``stages`` ``(t, t0, t1)`` evaluated at once.

        The stage depths of a fixed-step solve are known before it starts (MODEL.md §2), so a
        knot-based schedule (one with ``index`` and ``knot_tensors``: :class:`GridControls`,
        :class:`~pdenets.kernels.KernelControls`) interpolates every distinct stage depth in one
        batched operation per knot tensor — stages that share a depth share the value — and
        :meth:`at` then only looks the value up (:class:`_StageTable`; identical values, one
        node in the autograd graph instead of one per stage). Other schedules return
        themselves. ``chunk`` bounds the depths evaluated at once (see :class:`_StageTable`)."""
        if not (callable(getattr(self, "index", None))
                and callable(getattr(self, "knot_tensors", None))):
            return self
        return _StageTable(self, stages, chunk)


#: index and weight tensors of the stage tables, by (stage keys, device): the same fixed-step
#: discretization asks for the same ones at every forward (no host-to-device copy then)
_TABLE_INDEX: dict = {}


def _canonical(index: Callable, t: float, t0: float, t1: float) -> tuple[int, float]:
    k, s = index(t, t0, t1)
    return (k + 1, 0.0) if s == 1.0 else (k, s)


class _StageTable(KernelSchedule):
    """A knot-based schedule evaluated at a known list of stage depths in one batch.

    For knot tensors X (``(K, ...)``) and the distinct stage keys (k_u, s_u) it computes
    ``lerp(X[k_u], X[k_u + 1], s_u)`` for all u at once — exactly what the per-stage
    :meth:`at` computes one at a time (``X[k]`` itself where s = 0) — and splits the result
    into per-stage views with one ``unbind``. Depths not in the table fall back to the
    underlying schedule. With ``chunk`` the distinct depths are evaluated ``chunk`` at a time,
    when first asked for, keeping only the current chunk (memory independent of the number of
    stages: the continuous adjoint's sweeps, which visit the stages in order)."""

    def __init__(self, base: KernelSchedule, stages: Sequence[tuple[float, float, float]],
                 chunk: int | None = None):
        self.base = base
        self.breakpoints = base.breakpoints
        index = base.index  # type: ignore[attr-defined]
        keys: dict[tuple[int, float], int] = {}
        for t, t0, t1 in stages:
            keys.setdefault(_canonical(index, t, t0, t1), len(keys))
        self.keys = keys
        self.chunk = max(1, len(keys)) if chunk is None else int(chunk)
        self._order = list(keys)
        self._current = -1
        self.values: list = []
        if chunk is None:
            self._load(0)

    def _load(self, c: int) -> None:
        """Evaluate the c-th chunk of distinct depths (all of them without ``chunk``)."""
        keys = self._order[c * self.chunk:(c + 1) * self.chunk]
        self._current = c
        self.values = []
        if not keys:
            return
        base = self.base
        knots = base.knot_tensors()  # type: ignore[attr-defined]
        ref = knots[-1]
        ck = (tuple(keys), ref.device, ref.dtype, knots[0].shape[0])
        cached = _TABLE_INDEX.get(ck)
        if cached is None:
            K = knots[0].shape[0]
            k0 = [k for k, _ in keys]
            k1 = [min(k + 1, K - 1) if s != 0.0 else k for k, s in keys]
            w = [s for _, s in keys]
            pin = ref.device.type == "cuda"  # pinned host memory: an asynchronous copy

            def dev(v, dtype=None):
                t = torch.tensor(v, dtype=dtype, pin_memory=pin)
                return t.to(ref.device, non_blocking=True)

            cached = (dev(k0), dev(k1), dev(w, ref.dtype))
            if len(_TABLE_INDEX) > 256:
                _TABLE_INDEX.clear()
            _TABLE_INDEX[ck] = cached
        i0, i1, wt = cached
        cols = []
        for X in knots:
            ws = wt.to(X.dtype).reshape(-1, *([1] * (X.dim() - 1)))
            cols.append(torch.lerp(X[i0], X[i1], ws).unbind(0))
        build = getattr(base, "build", None)
        for u in range(len(keys)):
            vals = [col[u] for col in cols]
            self.values.append((build(vals[:-1]), vals[-1]) if build is not None
                               else (vals[0], vals[1]))

    def __getattr__(self, name: str):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def at(self, t, t0, t1):
        index = self.base.index
        u = self.keys.get(_canonical(index, t, t0, t1))
        if u is None:
            return self.base.at(t, t0, t1)
        c, pos = divmod(u, self.chunk)
        if c != self._current:
            self._load(c)
        return self.values[pos]

    def norms(self, t, t0, t1):
        return self.base.norms(t, t0, t1)

    def batched(self, stages, chunk=None):
        return self.base.batched(stages, chunk)


class _KnotSchedule(KernelSchedule):
    """Piecewise-constant or piecewise-linear interpolation between knot matrices."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor, T: float, basis: str, weights):
        self.A, self.b, self.T, self.basis = A, b, T, basis
        self.intervals = A.shape[0] if basis == "constant" else A.shape[0] - 1
        self.delta = T / self.intervals
        self._weights = weights
        self.breakpoints = tuple(k * self.delta for k in range(1, self.intervals))
        self._last: tuple | None = None

    def index(self, t: float, t0: float, t1: float) -> tuple[int, float]:
        """Knot index k and weight s with value ``(1 − s) V_k + s V_{k+1}`` at depth t."""
        if self.basis == "constant":
            k = int(math.floor(0.5 * (t0 + t1) / self.delta))
            return min(max(k, 0), self.intervals - 1), 0.0
        tau = t / self.delta
        k = min(max(int(math.floor(tau)), 0), self.intervals - 1)
        return k, tau - k

    def knot_tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors the schedule is built from: the knot matrices and bias vectors."""
        return (self.A, self.b)

    def with_knot_tensors(self, A: torch.Tensor, b: torch.Tensor) -> _KnotSchedule:
        """The same schedule built from other knot tensors (checkpointing, adjoints)."""
        out = _KnotSchedule(A, b, self.T, self.basis, self._weights)
        if hasattr(self, "channels"):
            out.channels = self.channels  # type: ignore[attr-defined]
        return out

    def at(self, t, t0, t1):
        k, s = self.index(t, t0, t1)
        if s == 0.0:
            return self.A[k], self.b[k]
        if s == 1.0:
            return self.A[k + 1], self.b[k + 1]
        # consecutive stages often share a depth (RK4's two midpoints, a step's end and the
        # next step's start): reuse the last interpolated matrix (cost O(N²) otherwise)
        key = (k, s, torch.is_grad_enabled())
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2]
        A = torch.lerp(self.A[k], self.A[k + 1], s)
        b = torch.lerp(self.b[k], self.b[k + 1], s)
        self._last = (key, A, b)
        return A, b


class _FunctionSchedule(KernelSchedule):
    def __init__(self, w_fn: WFn, b_fn: BFn, grid: Grid, time_dependent: bool):
        self.w_fn, self.b_fn, self.grid = w_fn, b_fn, grid
        self.time_dependent = time_dependent
        self._weights = grid.weights
        self._cache: tuple[float, torch.Tensor, torch.Tensor] | None = None

    def at(self, t, t0, t1):
        key = float(t) if self.time_dependent else 0.0
        if self._cache is None or self._cache[0] != key:
            x = self.grid.nodes
            W = self.w_fn(x[:, None, :], x[None, :, :], key)
            W = torch.as_tensor(W, dtype=x.dtype, device=x.device) * torch.ones(
                x.shape[0], x.shape[0], dtype=x.dtype, device=x.device
            )
            b = torch.as_tensor(self.b_fn(x, key), dtype=x.dtype, device=x.device)
            b = b * torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
            self._cache = (key, W * self.grid.weights[None, :], b)
        return self._cache[1], self._cache[2]


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
        key = ("control-basis", self.size, self.space_basis, self.w.dtype)
        P = grid._cache.get(key)
        if P is None:  # the evaluation matrix at the nodes: once per grid
            P = grid._cache[key] = self.basis_matrix(grid.nodes).to(grid.nodes.device)
        A = torch.matmul(torch.matmul(P, self.w), P.T) * grid.weights.to(self.w.dtype)
        b = self.b @ P.T
        return _KnotSchedule(A, b, self.T, self.time_basis, grid.weights.to(self.w.dtype))

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
