"""Controls θ = (w, b) with a structured kernel and C channels, and the kernel factories
(MODEL.md §10)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import _basis
from .._basis import SPACE_BASES
from .._checks import check_choice
from ..controls import Controls, KernelSchedule, _KnotSchedule
from ..errors import PdenetsError
from ..quadrature import Grid
from ._ops import KERNELS, KernelOp
from .base import Kernel, _check_channels, _init_param
from .conv import ConvKernel
from .dense import DenseKernel
from .lowrank import LowRankKernel
from .sum import SumKernel


class _OpSchedule(KernelSchedule):
    """Knot tensors of a structured kernel (and the bias) on a grid, interpolated in depth
    and turned into a :class:`KernelOp` per stage."""

    def __init__(self, knots: tuple[torch.Tensor, ...], b: torch.Tensor, T: float, basis: str,
                 weights: torch.Tensor, build: Callable[[Sequence[torch.Tensor]], KernelOp]):
        self.knots, self.b, self.T, self.basis = tuple(knots), b, T, basis
        self.intervals = b.shape[0] if basis == "constant" else b.shape[0] - 1
        self.delta = T / self.intervals
        self._weights = weights
        self.build = build
        self.breakpoints = tuple(k * self.delta for k in range(1, self.intervals))
        self._last: tuple | None = None

    index = _KnotSchedule.index

    def knot_tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors the schedule is built from (kernel knots, then the bias knots)."""
        return (*self.knots, self.b)

    def with_knot_tensors(self, *tensors: torch.Tensor) -> _OpSchedule:
        return _OpSchedule(tensors[:-1], tensors[-1], self.T, self.basis, self._weights,
                           self.build)

    def at(self, t, t0, t1):
        k, s = self.index(t, t0, t1)
        if s == 0.0 or s == 1.0:
            j = k if s == 0.0 else k + 1
            key = (j, 0.0, torch.is_grad_enabled())
            vals = [x[j] for x in self.knots]
            b = self.b[j]
        else:
            key = (k, s, torch.is_grad_enabled())
            vals = None
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2]
        if vals is None:
            vals = [torch.lerp(x[k], x[k + 1], s) for x in self.knots]
            b = torch.lerp(self.b[k], self.b[k + 1], s)
        op = self.build(vals)
        self._last = (key, op, b)
        return op, b

    def norms(self, t, t0, t1):
        op, _ = self.at(t, t0, t1)
        A = op.matrix()
        s = torch.sqrt(self._weights)
        return float(torch.linalg.matrix_norm(s[:, None] * A / s[None, :], ord=2))


class KernelControls(Controls):
    """Controls θ = (w, b) with a structured kernel and C channels (MODEL.md §10).

    Parameters
    ----------
    kernel : Kernel
        The weight kernel (its depth knots are the controls' knots).
    size : int or tuple of int
        Control grid of the bias b(x, t) ∈ R^C (vertices or cells per axis).
    b : torch.Tensor, optional
        Bias knot values ``(K, C, Nc)``; zeros if omitted.
    space_basis : {"linear", "constant"}
        Space basis of b.
    """

    def __init__(self, kernel: Kernel, size, b=None, space_basis: str = "linear") -> None:
        super().__init__()
        if not isinstance(kernel, Kernel):
            raise PdenetsError(f"KernelControls needs a Kernel, got {kernel!r}")
        self.kernel = kernel
        self.dim, self.channels = kernel.dim, kernel.channels
        self.space_basis = check_choice(space_basis, SPACE_BASES, "space basis")
        self.size = _basis.check_size(size, self.dim, self.space_basis, "controls")
        dtype = kernel._dtype()
        shape = (kernel.n_knots, self.channels, math.prod(self.size))
        self.b = nn.Parameter(_init_param(b, shape, "b", dtype))

    @property
    def T(self) -> float:  # type: ignore[override]
        return self.kernel.T

    @property
    def intervals(self) -> int:
        return self.kernel.time.intervals

    @property
    def time_basis(self) -> str:
        return self.kernel.time.basis

    @property
    def n_knots(self) -> int:
        return self.kernel.n_knots

    def bias_knots(self, grid: Grid) -> torch.Tensor:
        """b at the nodes, ``(K, C·N)``."""
        P = _basis.grid_matrix(grid, self.size, self.space_basis, self.b.dtype)
        return (self.b if P is None else self.b @ P.T).reshape(self.n_knots, -1)

    def discretize(self, grid: Grid) -> KernelSchedule:
        if grid.dim != self.dim:
            raise PdenetsError(f"controls are {self.dim}-D but the width grid is {grid.dim}-D")
        b = self.bias_knots(grid)
        weights = self.kernel._wide_weights(grid)
        knots = self.kernel.knot_tensors(grid)
        if self.kernel.is_dense_on(grid):
            sched: KernelSchedule = _KnotSchedule(knots[0], b, self.T, self.time_basis, weights)
        else:
            kern = self.kernel
            sched = _OpSchedule(knots, b, self.T, self.time_basis, weights,
                                lambda ts: kern.make_op(ts, grid))
        sched.channels = self.channels  # type: ignore[attr-defined]
        return sched

    def norms(self, spatial: bool = False):
        """Exact ``(∫‖w‖² + ‖b‖² dt, ∫‖∂_t w‖² + ‖∂_t b‖² dt[, ∫‖∇w‖² + ‖∇_x b‖² dt])``."""
        kn = self.kernel.norms(spatial)
        Bv = self.b
        M = _basis.basis_mass(self.size, self.space_basis, Bv.dtype).to(Bv.device)

        def form(L):
            return lambda i, j: ((Bv[i] @ L) * Bv[j]).sum((-2, -1))

        tm, K, dev = self.kernel.time, self.n_knots, Bv.device
        out = [kn[0] + tm.integral(form(M), K, dev), kn[1] + tm.jump_sum(form(M), K, dev)]
        if spatial:
            S = _basis.basis_stiffness(self.size, self.space_basis, Bv.dtype).to(dev)
            out.append(kn[2] + tm.integral(form(S), K, dev))
        return tuple(out)

    def operator_norm_bound(self, t: float) -> float:
        """Upper bound of ‖w(t)‖ as an operator on L²(Ω)^C (MODEL.md §3, §10)."""
        return self.kernel.operator_norm_bound(t)

    def prolong(self, size=None, intervals: int | None = None,
                kernel_size=None) -> KernelControls:
        """The same controls with the bias (and dense/low-rank kernel) on ``size``, a conv
        kernel on ``kernel_size`` and ``intervals`` depth intervals (exact for refinements)."""
        size = self.size if size is None else _basis.check_size(size, self.dim,
                                                                 self.space_basis, "prolong")
        intervals = self.intervals if intervals is None else int(intervals)
        k = self.kernel
        if isinstance(k, ConvKernel):
            newk = k.prolong(kernel_size, intervals)
        elif isinstance(k, SumKernel):
            parts: list[Kernel] = list(k.parts)  # type: ignore[arg-type]
            newk = SumKernel([p.prolong(kernel_size if isinstance(p, ConvKernel) else size,
                                        intervals) for p in parts])
        else:
            newk = k.prolong(size, intervals)
        Ps = _basis.basis_prolong(self.size, size, self.space_basis,
                                  self.b.dtype).to(self.b.device)
        with torch.no_grad():
            b = k.time.prolong(self.b.detach(), intervals) @ Ps.T
        return KernelControls(newk, size, b, self.space_basis)

    def lr_scales(self) -> dict[str, float]:
        """``{parameter name: s}`` (see :meth:`Kernel.lr_scales`): the kernel's; the bias,
        not integrated, has s = 1."""
        return {f"kernel.{n}": s for n, s in self.kernel.lr_scales().items()}

    def config(self) -> dict:
        return {"kind": "kernel", "size": list(self.size), "intervals": self.intervals,
                "time_basis": self.time_basis, "space_basis": self.space_basis,
                "channels": self.channels, "kernel": self.kernel.config()}

    def extra_repr(self) -> str:
        return f"size={self.size}, channels={self.channels}, space_basis={self.space_basis!r}"


def kernel_from_config(cfg: dict, dim: int, intervals: int, T: float, time_basis: str,
                       channels: int, dtype=torch.float64) -> Kernel:
    """Build a zero kernel from its :meth:`Kernel.config` (model files)."""
    if not isinstance(cfg, dict):
        raise PdenetsError("kernel description must be an object")
    kind = cfg.get("kind")
    common = dict(intervals=intervals, T=T, time_basis=time_basis, channels=channels,
                  dtype=dtype, space_basis=cfg.get("space_basis", "linear"))
    if kind == "dense":
        return DenseKernel(dim, tuple(cfg["size"]), **common)
    if kind == "conv":
        return ConvKernel(dim, cfg["radius"], tuple(cfg["size"]), **common,
                          lattice=cfg.get("lattice", False) is True)
    if kind == "lowrank":
        return LowRankKernel(dim, tuple(cfg["size"]), cfg["rank"], **common)
    if kind == "sum":
        parts = cfg.get("parts")
        if not isinstance(parts, list) or not parts or len(parts) > 4:
            raise PdenetsError("kernel: a sum needs 1-4 parts")
        return SumKernel([kernel_from_config(p, dim, intervals, T, time_basis, channels, dtype)
                          for p in parts])
    raise PdenetsError(f"unknown kernel kind {kind!r}; choose one of dense, conv, lowrank, sum")


def make_kernel(kind: str, dim: int, *, size, intervals: int, T: float = 1.0,
                time_basis: str = "linear", channels: int = 1, radius: float = 0.25,
                kernel_size=None, rank: int = 4, space_basis: str = "linear",
                dtype=torch.float64, init_scale: float = 0.0,
                generator: torch.Generator | None = None, lattice: bool | None = None) -> Kernel:
    """A kernel of family ``kind`` (``dense``, ``conv``, ``lowrank``, ``conv+lowrank``).

    ``size`` is the control grid of dense and low-rank kernels, ``kernel_size`` the
    displacement grid of a conv kernel (default: about one vertex per control cell of the
    support, odd so z = 0 is a vertex). ``lattice`` (default: automatic, for the constant
    basis on displacement cells tiling [0, 1]): see :class:`ConvKernel`. With
    ``init_scale > 0`` the values are drawn at random so that the operator norm is about
    ``init_scale`` at every width (as the dense initialisation of
    :meth:`ContinuumNetwork.create <pdenets.network.ContinuumNetwork.create>`)."""
    check_choice(kind, KERNELS, "kernel")
    C = _check_channels(channels)
    sz = _basis.check_size(size, dim, space_basis, "controls")
    parts: list[Kernel] = []
    if kind == "dense":
        parts.append(DenseKernel(dim, sz, intervals, T, time_basis, C, dtype=dtype,
                                 space_basis=space_basis))
    if "conv" in kind:
        if kernel_size is None:
            n = max(sz)
            kernel_size = max(3, 2 * int(math.ceil(float(radius) * n)) + 1)
            if space_basis == "constant":
                kernel_size -= 1
        if lattice is None:  # automatic: constant basis, displacement cells = control cells
            ks = _basis.check_size(kernel_size, dim, space_basis, "conv kernel")
            lattice = space_basis == "constant" and all(
                abs(k / (2 * float(radius)) - n) < 1e-9 for k, n in zip(ks, sz))
        parts.append(ConvKernel(dim, radius, kernel_size, intervals, T, time_basis, C,
                                dtype=dtype, space_basis=space_basis, lattice=lattice))
    if "lowrank" in kind:
        parts.append(LowRankKernel(dim, sz, rank, intervals, T, time_basis, C, dtype=dtype,
                                   space_basis=space_basis))
    if init_scale > 0:
        share = init_scale / len(parts)
        with torch.no_grad():
            for p in parts:
                _random_init(p, share, generator)
    return parts[0] if len(parts) == 1 else SumKernel(parts)


def _random_init(k: Kernel, scale: float, gen) -> None:
    C = k.channels
    if isinstance(k, DenseKernel):
        nc = math.prod(k.size)
        k.w.normal_(0.0, scale * nc**0.5 / C**0.5, generator=gen)
    elif isinstance(k, ConvKernel):
        # a random k with Mk values on a support of volume V: Fourier modes ~ std·V/√Mk
        mk = math.prod(k.size)
        vol = (2 * k.radius) ** k.dim
        k.k.normal_(0.0, scale * mk**0.5 / vol / C**0.5, generator=gen)
    elif isinstance(k, LowRankKernel):
        s = (scale / (k.rank * C)) ** 0.5
        k.g.normal_(0.0, s, generator=gen)
        k.h.normal_(0.0, s, generator=gen)
