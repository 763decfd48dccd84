"""Convolution kernels w_{cc'}(x, y, t) = k_{cc'}(x − y, t) (MODEL.md §10)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import _basis, _limits
from .._basis import SPACE_BASES
from .._checks import check_choice
from ..errors import PdenetsError
from ..quadrature import Grid
from ._ops import CONV_METHODS, MATRIX_MAX, ConvOp, DenseOp, _conv_plan
from ._time import _gram_1d, _kron, _Time
from .base import Kernel, _blocks, _check_channels, _init_param

#: :meth:`ConvKernel.matrix_knots` uses a dense map from the knot values to the matrix when it has
#: at most this many entries (4 Mi: 16 MiB in float32), else it gathers the stencil
MAP_MAX = 1 << 22


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
    method : {"auto", "matrix", "direct", "fft", "dense"}
        Evaluation on uniform grids: by the cost model (``auto``, see :meth:`plan`), or
        forced.
    lattice : bool
        Only for the constant basis with cells of side Δ_a = 2r/size_a tiling [0, 1]
        (1/Δ_a an integer): the kernel acts on the *lattice* of these cells,
        w(x, y) = k̄(ℓ(x) − ℓ(y)) with ℓ(x) the centre of the lattice cell holding x and k̄ the
        mean of the one-sided limits of k at lattice displacements — the L²-projection of
        k(x − y) onto functions constant on pairs of lattice cells **(choice)**. States
        constant on the lattice cells (a pixel image lifted piecewise constantly) then stay
        so, and the network is the same at every width refining the lattice (exactly, as a
        dense kernel in the constant basis); on the lattice itself it is the convolution
        of k. Without it, the midpoint rule at the pixel grid is exact only for the first
        application of k and a trained model loses accuracy under width refinement.
    """

    kind = "conv"

    def __init__(self, dim: int, radius: float, size, intervals: int, T: float = 1.0,
                 time_basis: str = "linear", channels: int = 1, k=None, dtype=torch.float64,
                 space_basis: str = "linear", method: str = "auto",
                 lattice: bool = False) -> None:
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
        self.lattice = bool(lattice)
        if self.lattice:
            cells = [k / (2 * r) for k in self.size]
            if self.space_basis != "constant" or any(abs(c - round(c)) > 1e-9 for c in cells):
                raise PdenetsError(
                    "conv kernel: lattice=True needs the constant space basis with cells "
                    f"tiling [0, 1] (size / (2·radius) an integer), got size {self.size} and "
                    f"radius {r}")
            self.lattice_shape = tuple(int(round(c)) for c in cells)
        C = self.channels
        self.k = nn.Parameter(_init_param(k, (self.n_knots, C, C, math.prod(self.size)), "k",
                                          dtype))

    # -- evaluation ----------------------------------------------------------------------
    def _axis_basis(self, za: torch.Tensor, k: int) -> torch.Tensor:
        """``(len(za), k)``: the 1-D displacement basis along one axis (float64). On a
        discontinuity — a cell face of the constant basis, the support edge |z_a| = r — it takes
        the mean of the one-sided limits (MODEL.md §10)."""
        r = self.radius
        s = (za + r) / (2 * r)
        if self.space_basis == "constant":
            out = torch.zeros(len(za), k, dtype=torch.float64, device=za.device)
            rows = torch.arange(len(za), device=za.device)
            for side in (-1e-9, 1e-9):
                sh = s + side
                inside = ((sh >= 0) & (sh <= 1)).to(torch.float64)
                idx = torch.clamp(torch.floor(sh * k).long(), 0, k - 1)
                out[rows, idx] += 0.5 * inside
            return out
        P = _basis.hat_matrix(torch.clamp(s, 0.0, 1.0)[:, None], (k,))
        az = za.abs()
        edge = torch.where(az < r * (1 - 1e-12), 1.0, torch.where(az <= r * (1 + 1e-12), 0.5, 0.0))
        return P * edge.to(P.dtype)[:, None]

    def basis_at(self, z: torch.Tensor) -> torch.Tensor:
        """``(len(z), Mk)``: the displacement basis at displacements z ``(n, d)``, zero
        outside the support |z_a| ≤ r. On a discontinuity of k (a cell face of the constant
        basis, the edge of the support) each axis takes the mean of the one-sided limits, so a
        displacement on a corner of 2-D cells takes the mean of the four cells: the midpoint
        rule then integrates k against fields constant on the width cells exactly whenever the
        faces fall on node displacements (the width-refinement invariance of MODEL.md §2)."""
        z64 = z.to(torch.float64)
        P = self._axis_basis(z64[:, 0], self.size[0])
        for a in range(1, self.dim):
            Pa = self._axis_basis(z64[:, a], self.size[a])
            P = (P[:, :, None] * Pa[:, None, :]).reshape(P.shape[0], -1)
        return P.to(dtype=self.k.dtype)

    def uniform(self, grid: Grid) -> bool:
        """Whether the grid is a uniform tensor grid (a convolution)."""
        return grid.rule in ("midpoint", "trapezoid") and grid.shape is not None

    def plan(self, grid: Grid) -> str:
        """How the operator is evaluated on ``grid``: ``"dense"`` (the reference evaluation of
        k at every pair of nodes: non-uniform rules, or ``method="dense"``), ``"matrix"`` (the
        convolution materialized as a dense (C·N)² matrix from its stencil — fastest on a CPU
        for C·N ≤ ``MATRIX_MAX``, where dense matrix products beat convolution routines),
        ``"direct"`` or ``"fft"`` (by the cost model, or as forced by ``method``)."""
        if self.method == "dense" or not self.uniform(grid):
            return "dense"
        if self.lattice and (grid.rule != "midpoint"
                             or tuple(grid.shape) != self.lattice_shape):  # type: ignore[arg-type]
            return "dense"  # the lattice kernel at another width: k̄ at lattice displacements
        if self.method == "auto" and self.channels * grid.n <= MATRIX_MAX:
            return "matrix"
        if self.method == "matrix":
            return "matrix"
        return _conv_plan(tuple(grid.shape),  # type: ignore[arg-type]
                          self.stencil_half(grid), self.channels, self.method)

    def is_dense_on(self, grid):
        return self.plan(grid) in ("dense", "matrix")

    def _spacing(self, grid: Grid) -> tuple[float, ...]:
        """Node spacing per axis, exact in float64 (uniform rules)."""
        out = []
        for n in grid.shape:  # type: ignore[union-attr]
            if grid.rule == "midpoint":
                out.append(1.0 / n)
            else:
                out.append(1.0 / (n - 1) if n > 1 else 1.0)
        return tuple(out)

    def stencil_half(self, grid: Grid) -> tuple[int, ...]:
        """Stencil half-widths L_a: the displacements l·h_a with |l| ≤ L_a lie in [−r, r]."""
        return tuple(min(n - 1, int(math.floor(self.radius / h * (1 + 1e-12))))
                     for n, h in zip(grid.shape, self._spacing(grid)))  # type: ignore[arg-type]

    def _stencil_basis(self, grid: Grid) -> torch.Tensor:
        """The basis at the stencil's displacements ``(S, Mk)`` (cached on the grid)."""
        half = self.stencil_half(grid)
        key = ("conv-stencil", self.radius, self.size, self.space_basis, half,
               self._spacing(grid), self.k.dtype, self.k.device)
        P = grid._cache.get(key)
        if P is None:
            offs = [torch.arange(-L, L + 1, dtype=torch.float64) * h
                    for L, h in zip(half, self._spacing(grid))]
            mesh = torch.meshgrid(*offs, indexing="ij")
            z = torch.stack([m.reshape(-1) for m in mesh], dim=1)
            P = self.basis_at(z).to(self.k.device)
            grid._cache[key] = P
        return P

    def stencil_knots(self, grid: Grid) -> torch.Tensor:
        """k at the grid's displacements: ``(K, C, C, 2L_0+1[, 2L_1+1])``."""
        half = self.stencil_half(grid)
        S = self.k @ self._stencil_basis(grid).T
        return S.reshape(*S.shape[:3], *(2 * L + 1 for L in half))

    def _toeplitz_index(self, grid: Grid) -> torch.Tensor:
        """``(N·N,)`` index into the flattened stencil (its length for pairs out of reach)."""
        half = self.stencil_half(grid)
        key = ("conv-toeplitz", half, tuple(grid.shape), self.k.device)  # type: ignore[arg-type]
        idx = grid._cache.get(key)
        if idx is None:
            flat, ok = None, None
            for n, L in zip(grid.shape, half):  # type: ignore[arg-type]
                i = torch.arange(n)
                d = i[:, None] - i[None, :] + L  # (n, n)
                inside = (d >= 0) & (d <= 2 * L)
                if flat is None:
                    flat, ok = d, inside
                else:
                    assert ok is not None
                    flat = (flat[:, None, :, None] * (2 * L + 1) + d[None, :, None, :])
                    ok = ok[:, None, :, None] & inside[None, :, None, :]
            assert flat is not None and ok is not None
            N = grid.n
            size = math.prod(2 * L + 1 for L in half)
            idx = torch.where(ok, flat, size).reshape(N * N).to(self.k.device)
            grid._cache[key] = idx
        return idx

    def _matrix_map(self, grid: Grid) -> torch.Tensor | None:
        """The linear map from the knot values k_p to the weighted convolution matrix,
        ``(Mk, N·N)`` with entry ``[p, i·N + j] = ω_j φ_p(x_i − x_j)`` (cached on the grid), or
        None when it would have more than ``MAP_MAX`` entries."""
        N, Mk = grid.n, math.prod(self.size)
        if Mk * N * N > MAP_MAX:
            return None
        key = ("conv-matrix-map", self.radius, self.size, self.space_basis,
               self.stencil_half(grid), tuple(grid.shape),  # type: ignore[arg-type]
               self.k.dtype, self.k.device)
        M = grid._cache.get(key)
        if M is None:
            P = F.pad(self._stencil_basis(grid).T, (0, 1))  # (Mk, S + 1): 0 out of reach
            w = grid.weights.to(self.k.dtype)
            M = (P.index_select(1, self._toeplitz_index(grid)).reshape(Mk, N, N) * w)
            M = grid._cache[key] = M.reshape(Mk, N * N).contiguous()
        return M

    def matrix_knots(self, grid: Grid) -> torch.Tensor:
        """The convolution as dense matrices ``(K, C·N, C·N)``: one product of the knot values
        with :meth:`_matrix_map` (its gradient is a matrix product too), or gathered from the
        stencil when that map is too large."""
        M = self._matrix_map(grid)
        if M is not None:
            K, C, N = self.k.shape[0], self.channels, grid.n
            return _blocks((self.k @ M).reshape(K, C, C, N, N))
        S = self.stencil_knots(grid)
        K, C = S.shape[0], S.shape[1]
        flat = F.pad(S.reshape(K, C, C, -1), (0, 1))  # a zero for pairs out of reach
        N = grid.n
        A = flat.index_select(3, self._toeplitz_index(grid)).reshape(K, C, C, N, N)
        return _blocks(A * grid.weights.to(self.k.dtype))

    def positions(self, grid: Grid) -> torch.Tensor:
        """Where the kernel sees the nodes ``(N, d)`` (float64): the nodes, or with ``lattice``
        the centres of their lattice cells."""
        x = grid.nodes.to(torch.float64)
        if not self.lattice:
            return x
        n = torch.tensor(self.lattice_shape, dtype=torch.float64, device=x.device)
        return (torch.minimum(torch.floor(x * n), n - 1) + 0.5) / n

    def _check_dense_size(self, grid: Grid) -> None:
        """Refuse the dense fallback (non-uniform rules, a lattice kernel off its lattice,
        ``method="dense"``) when its memory — the basis at N² displacements and K matrices
        ``(C·N)²`` with their gradients — exceeds the limit of :mod:`pdenets._limits`, with
        an error that says why the evaluation is dense (:class:`~pdenets._limits.SizeLimitError`;
        the override of that module lifts it)."""
        N, C, K = grid.n, self.channels, self.n_knots
        item = self.k.element_size()
        nbytes = float(N) * N * (math.prod(self.size) * 8 + 3 * K * C * C * item)
        if self.method == "dense":
            why = "method='dense'"
        elif self.lattice and self.uniform(grid):
            lat = "×".join(map(str, self.lattice_shape))
            why = (f"a lattice kernel off its {lat} lattice; evaluate it on the {lat} "
                   f"midpoint grid")
        else:
            why = f"the {grid.rule} rule is not a uniform grid"
        shape = "×".join(map(str, grid.shape)) if grid.shape else str(N)
        _limits.check_memory(nbytes, "width", f"the dense evaluation of a conv kernel "
                             f"({why}) as {K} matrices of size (C·N)² = {C * N}²", shape)

    def dense_knots(self, grid):
        self._check_dense_size(grid)
        x = self.positions(grid)
        N = x.shape[0]
        z = (x[:, None, :] - x[None, :, :]).reshape(N * N, -1)
        A = (self.k @ self.basis_at(z).T).reshape(*self.k.shape[:3], N, N)
        return _blocks(A * grid.weights.to(self.k.dtype))

    def knot_tensors(self, grid):
        plan = self.plan(grid)
        if plan == "dense":
            return (self.dense_knots(grid),)
        if plan == "matrix":
            return (self.matrix_knots(grid),)
        return (self.stencil_knots(grid),)

    def make_op(self, tensors, grid):
        plan = self.plan(grid)
        if plan in ("dense", "matrix"):
            return DenseOp(tensors[0])
        return ConvOp(tensors[0], tuple(grid.shape), grid.weights.to(self.k.dtype), plan)

    # -- norms ---------------------------------------------------------------------------
    def _cached(self, key: tuple, make) -> torch.Tensor:
        """A Gram matrix of the displacement basis, computed once per (key, dtype, device):
        it depends only on the radius, the displacement grid and the lattice, none of which
        change after construction (the training step asks for the norms at every batch)."""
        full = (*key, self.k.dtype, self.k.device)
        cache = self.__dict__.setdefault("_gram_cache", {})
        G = cache.get(full)
        if G is None:
            G = cache[full] = make()
        return G

    def _grams(self, deriv_axis: int | None = None) -> torch.Tensor:
        """∫ φ_p(z) φ_q(z) a(z) dz with a(z) = Π(1 − |z_a|) (the measure of {x: x, x − z ∈
        Ω}); with ``deriv_axis`` the derivatives along that axis (cached)."""
        return self._cached(("tent", deriv_axis), lambda: self._grams_uncached(deriv_axis))

    def _grams_uncached(self, deriv_axis: int | None = None) -> torch.Tensor:
        r = self.radius
        mats = []
        for a, k in enumerate(self.size):
            d = deriv_axis == a
            mats.append(_gram_1d(-r, r, k, self.space_basis, "tent", d, d, extra=(0.0,)))
        return torch.as_tensor(_kron(mats), dtype=self.k.dtype, device=self.k.device)

    def _lattice_gram(self) -> torch.Tensor:
        """∫∫ w² = Σ_m (#cell pairs at lattice displacement m) Δ^{2d} k̄_m², k̄ = P k: the Gram
        matrix Pᵀ diag(count · Δ^{2d}) P of the lattice kernel (cached)."""
        return self._cached(("lattice",), self._lattice_gram_uncached)

    def _lattice_gram_uncached(self) -> torch.Tensor:
        offs = [torch.arange(-(n - 1), n, dtype=torch.float64) / n for n in self.lattice_shape]
        mesh = torch.meshgrid(*offs, indexing="ij")
        z = torch.stack([m.reshape(-1) for m in mesh], dim=1)
        count = torch.ones(len(z), dtype=torch.float64)
        vol = 1.0
        for a, n in enumerate(self.lattice_shape):
            count = count * (n - (z[:, a] * n).round().abs())
            vol /= n
        P = self.basis_at(z).to(torch.float64)
        G = P.T @ (P * (count * vol * vol)[:, None])
        return G.to(dtype=self.k.dtype, device=self.k.device)

    def norms(self, spatial=False):
        Kp = self.k
        dev = Kp.device

        def form(G):
            return lambda i, j: ((Kp[i] @ G) * Kp[j]).sum((-3, -2, -1))

        G = self._lattice_gram() if self.lattice else self._grams()
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
        ints = [_gram_1d(-r, r, k, self.space_basis, "one").sum(1)
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
        if self.lattice and size != self.size:
            raise PdenetsError("conv kernel: a lattice kernel keeps its displacement grid (its "
                               "lattice); refine the depth intervals only")
        Ps = _basis.basis_prolong(self.size, size, self.space_basis,
                                  self.k.dtype).to(self.k.device)
        with torch.no_grad():
            k = self.time.prolong(self.k.detach(), intervals) @ Ps.T
        return ConvKernel(self.dim, self.radius, size, intervals, self.T, self.time.basis,
                          self.channels, k, self.k.dtype, self.space_basis,
                          self.method, self.lattice).to(self.k.device)

    def lr_scales(self):
        # k(x − y) integrated over y on displacement cells of volume Π Δ_a: s = 1 / Π Δ_a
        # (= Nc for a displacement grid as fine as the control grid)
        cells = [k if self.space_basis == "constant" else max(k - 1, 1) for k in self.size]
        return {"k": float(math.prod(c / (2 * self.radius) for c in cells))}

    def config(self):
        out = {"kind": "conv", "radius": self.radius, "size": list(self.size),
                "space_basis": self.space_basis}
        if self.lattice:
            out["lattice"] = True
        return out

    def extra_repr(self):
        return (f"dim={self.dim}, radius={self.radius}, size={self.size}, "
                f"channels={self.channels}, method={self.method!r}")
