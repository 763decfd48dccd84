"""Structured kernels and channels: the model at scale (MODEL.md §10).

A :class:`Kernel` is the weight kernel w(x, y, t) of MODEL.md §1 as a *function* with C
channels (w(x, y, t) ∈ R^{C×C}), stored on its own control grid and depth knots, so that it runs
at any width and any number of steps (MODEL.md §2). The families:

:class:`DenseKernel`
    w_{cc'}(x, y, t) on a control grid in (x, y) — today's kernel
    (:class:`~pdenets.controls.GridControls`) with channels. Cost O(B C² N²) per stage.
:class:`ConvKernel`
    w_{cc'}(x, y, t) = k_{cc'}(x − y, t), k supported in |z_a| ≤ r (receptive-field radius r as
    a fraction of Ω) and stored on a *displacement* grid of [−r, r]^d (multilinear on vertices
    or piecewise constant on cells). On a uniform width grid (midpoint, trapezoid) the integral
    Σ_j ω_j k(x_i − x_j) u_j is a discrete convolution, evaluated directly (O(B C² N S), S the
    stencil size) or by zero-padded FFT (O(B C N log N), no wrap-around), whichever a cost
    model finds cheaper; on non-uniform rules (Gauss–Legendre, Monte Carlo) it falls back to
    the dense evaluation of the same k. The transposed operator (the adjoint of §5) is the
    correlation with k(−z) (channels transposed).
:class:`LowRankKernel`
    w_{cc'}(x, y, t) = Σ_{r ≤ R} g_{cr}(x, t) h_{c'r}(y, t), O(B C N R) per stage.
:class:`SumKernel`
    A sum of kernels (e.g. ``conv+lowrank``: a local convolution plus a low-rank global part).

Every kernel provides, for a width grid, its *knot tensors* (the discretized kernel at each
depth knot, differentiable in the parameters) and an operator (:class:`KernelOp`) built from
them at a depth t (depth interpolation acts on the knot tensors: piecewise constant or linear,
as for :class:`~pdenets.controls.GridControls`); the exact regularization norms of MODEL.md §4
(``∫‖w‖²``, ``∫‖∂_t w‖²`` and the H¹-in-width ``∫‖∇_x w‖² + ‖∇_y w‖²`` where defined) computed
on its control grid; an upper bound of the operator norm (MODEL.md §3, §10) and prolongation
to a finer control grid / more depth intervals (MODEL.md §2, multilevel).

:class:`KernelControls` pairs a kernel with a bias field b(x, t) ∈ R^C: the controls
θ = (w, b) of a network with structured kernels and/or channels. With C channels the state is
stored as ``(B, C·N)`` (channel-major: entry ``c·N + i`` is u_c(x_i)), so that every integrator
and gradient strategy works unchanged; C = 1 is the scalar model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _basis
from ._basis import SPACE_BASES
from ._checks import check_choice, check_finite, check_positive
from .controls import TIME_BASES, Controls, KernelSchedule, _KnotSchedule
from .errors import PdenetsError
from .quadrature import Grid

__all__ = [
    "KERNELS", "ConvKernel", "DenseKernel", "Kernel", "KernelControls", "KernelOp",
    "LowRankKernel", "SumKernel", "make_kernel",
]

KERNELS = ("dense", "conv", "lowrank", "conv+lowrank")
CONV_METHODS = ("auto", "direct", "fft", "dense")

#: relative FFT cost per point and log₂ of the transform length (calibrated on a CPU, see
#: benchmarks/bench_kernels.py); only the ratio to the direct cost matters
FFT_COST = 6.0


# ------------------------------------------------------------------------------------------
# operators built from a kernel's tensors at one depth


class KernelOp:
    """A linear operator u ↦ (∫ w(·, y) u(y) dy)_i on states ``(B, C·N)``.

    ``tensors`` are the tensors it is built from (one depth's knot tensors); ``rebuild`` makes
    the same operator from other tensors of the same shapes. ``param_vjp(g, u)`` returns the
    gradients of ``Σ_b ⟨g_b, apply(u)_b⟩`` with respect to ``tensors``.
    """

    tensors: tuple[torch.Tensor, ...] = ()

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_T(self, v: torch.Tensor) -> torch.Tensor:
        """The transposed operator (the plain-sum adjoint used by the discrete costate)."""
        raise NotImplementedError

    def param_vjp(self, g: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> KernelOp:
        raise NotImplementedError

    def matrix(self) -> torch.Tensor:
        """The operator as a dense ``(C·N, C·N)`` matrix (for diagnostics and tests)."""
        n = self.size
        t = self.tensors[0]
        eye = torch.eye(n, dtype=t.dtype, device=t.device)
        return self.apply(eye).T

    size: int = 0


class DenseOp(KernelOp):
    """A dense matrix A: ``apply(u) = u Aᵀ``."""

    def __init__(self, A: torch.Tensor) -> None:
        self.A = A
        self.tensors = (A,)
        self.size = A.shape[0]

    def apply(self, u):
        return u @ self.A.T

    def apply_T(self, v):
        return v @ self.A

    def param_vjp(self, g, u):
        return (g.T @ u,)

    def rebuild(self, tensors):
        return DenseOp(tensors[0])

    def matrix(self):
        return self.A


def _conv_plan(shape: tuple[int, ...], half: tuple[int, ...], C: int, method: str) -> str:
    """Direct or FFT convolution by the cost model (operations per batch element)."""
    if method in ("direct", "fft"):
        return method
    n = math.prod(shape)
    stencil = math.prod(2 * h + 1 for h in half)
    direct = C * C * n * stencil
    nf = math.prod(_fft_len(s, h) for s, h in zip(shape, half))
    fft = C * nf * FFT_COST * max(1.0, math.log2(nf)) + 4 * C * C * nf
    return "fft" if fft < direct else "direct"


def _fft_len(n: int, h: int) -> int:
    """A fast (5-smooth) transform length ≥ n + 2h (linear convolution, no wrap-around)."""
    m = n + 2 * h
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


class ConvOp(KernelOp):
    """Discrete convolution ``out_c(x_i) = Σ_{c'} Σ_j K_{cc'}[i − j] ω_j u_{c'}(x_j)`` on a
    uniform tensor grid (zero padding: no wrap-around), directly or by FFT.

    ``stencil`` has shape ``(C, C, 2L_0+1[, 2L_1+1])``; entry ``L + l`` is k at displacement
    l·h.
    """

    def __init__(self, stencil: torch.Tensor, shape: tuple[int, ...], weights: torch.Tensor,
                 method: str = "auto") -> None:
        self.stencil = stencil
        self.tensors = (stencil,)
        self.shape = shape
        self.weights = weights
        self.C = stencil.shape[0]
        self.half = tuple((s - 1) // 2 for s in stencil.shape[2:])
        self.size = self.C * math.prod(shape)
        self.method = method
        self.plan = _conv_plan(shape, self.half, self.C, method)

    def rebuild(self, tensors):
        return ConvOp(tensors[0], self.shape, self.weights, self.method)

    def _conv(self, v: torch.Tensor, K: torch.Tensor, plan: str) -> torch.Tensor:
        """Linear convolution of v ``(B, C, N)`` with the stencil K, cropped to the grid."""
        B, C = v.shape[0], self.C
        d = len(self.shape)
        x = v.reshape(B, C, *self.shape)
        if plan == "direct":
            W = torch.flip(K, dims=tuple(range(2, 2 + d)))
            conv = F.conv1d if d == 1 else F.conv2d
            y = conv(x, W, padding=self.half)
        else:
            s = [_fft_len(n, h) for n, h in zip(self.shape, self.half)]
            dims = tuple(range(2, 2 + d))
            X = torch.fft.rfftn(x, s=s, dim=dims)
            KF = torch.fft.rfftn(K, s=s, dim=dims)
            Y = torch.einsum("bc...,dc...->bd...", X, KF)
            y = torch.fft.irfftn(Y, s=s, dim=dims)
            for a, (n, h) in enumerate(zip(self.shape, self.half)):
                y = y.narrow(2 + a, h, n)
        return y.reshape(B, C * math.prod(self.shape))

    def _wide(self, w: torch.Tensor) -> torch.Tensor:
        return w.repeat(self.C)

    def apply(self, u):
        return self._conv(u * self._wide(self.weights), self.stencil, self.plan)

    def apply_T(self, v):
        # correlation: the transpose convolves with k(−z) and transposed channels (§5, §10)
        d = len(self.shape)
        Kt = torch.flip(self.stencil.transpose(0, 1), dims=tuple(range(2, 2 + d)))
        return self._conv(v, Kt, self.plan) * self._wide(self.weights)

    def param_vjp(self, g, u):
        with torch.enable_grad():
            K = self.stencil.detach().requires_grad_(True)
            out = self._conv((u * self._wide(self.weights)).detach(), K, self.plan)
            return (torch.autograd.grad(out, K, g.detach())[0],)


class LowRankOp(KernelOp):
    """``apply(u) = (u H) Gᵀ`` with G ``(C·N, R)`` (the g_r at the nodes) and H ``(C·N, R)``
    (ω_j h_r(x_j)): O(B C N R)."""

    def __init__(self, G: torch.Tensor, H: torch.Tensor) -> None:
        self.G, self.H = G, H
        self.tensors = (G, H)
        self.size = G.shape[0]

    def rebuild(self, tensors):
        return LowRankOp(tensors[0], tensors[1])

    def apply(self, u):
        return (u @ self.H) @ self.G.T

    def apply_T(self, v):
        return (v @ self.G) @ self.H.T

    def param_vjp(self, g, u):
        return g.T @ (u @ self.H), u.T @ (g @ self.G)


class SumOp(KernelOp):
    """The sum of operators."""

    def __init__(self, ops: Sequence[KernelOp]) -> None:
        self.ops = list(ops)
        self.tensors = tuple(t for op in self.ops for t in op.tensors)
        self.size = self.ops[0].size

    def rebuild(self, tensors):
        out, i = [], 0
        for op in self.ops:
            n = len(op.tensors)
            out.append(op.rebuild(tensors[i:i + n]))
            i += n
        return SumOp(out)

    def apply(self, u):
        out = self.ops[0].apply(u)
        for op in self.ops[1:]:
            out = out + op.apply(u)
        return out

    def apply_T(self, v):
        out = self.ops[0].apply_T(v)
        for op in self.ops[1:]:
            out = out + op.apply_T(v)
        return out

    def param_vjp(self, g, u):
        return tuple(x for op in self.ops for x in op.param_vjp(g, u))


# helpers for the dynamics: A is a dense matrix (tensor) or a KernelOp


def lin(u: torch.Tensor, A, b: torch.Tensor) -> torch.Tensor:
    """``∫ w u dy + b`` at the nodes: ``u Aᵀ + b`` (dense) or ``A.apply(u) + b``."""
    if isinstance(A, torch.Tensor):
        return torch.addmm(b, u, A.T)
    return A.apply(u) + b


def lin_T(g: torch.Tensor, A) -> torch.Tensor:
    """The transposed operator applied to g."""
    return g @ A if isinstance(A, torch.Tensor) else A.apply_T(g)


def lin_param_vjp(g: torch.Tensor, u: torch.Tensor, A):
    """∂ Σ_b ⟨g_b, A u_b⟩ / ∂A: a matrix (dense) or a tuple (one per operator tensor)."""
    return g.T @ u if isinstance(A, torch.Tensor) else A.param_vjp(g, u)


# ------------------------------------------------------------------------------------------
# depth interpolation and exact integrals


class _Time:
    """Depth knots: piecewise constant (M values) or linear (M + 1 knots) on [0, T]."""

    def __init__(self, intervals: int, T: float, basis: str) -> None:
        check_positive(intervals, "kernel: intervals", integer=True)
        check_positive(T, "T")
        self.intervals, self.T = int(intervals), float(T)
        self.basis = check_choice(basis, TIME_BASES, "time basis")
        self.delta = self.T / self.intervals

    @property
    def n_knots(self) -> int:
        return self.intervals + (1 if self.basis == "linear" else 0)

    def knot_times(self) -> list[float]:
        d = self.delta
        if self.basis == "constant":
            return [(k + 0.5) * d for k in range(self.intervals)]
        return [k * d for k in range(self.intervals + 1)]

    def weights_at(self, t: float) -> tuple[tuple[int, float], ...]:
        """``((k, 1 − s), (k + 1, s))``: the value at depth t is a combination of knots."""
        if self.basis == "constant":
            k = min(max(int(math.floor(t / self.delta)), 0), self.intervals - 1)
            return ((k, 1.0),)
        tau = t / self.delta
        k = min(max(int(math.floor(tau)), 0), self.intervals - 1)
        s = tau - k
        return ((k, 1.0 - s), (k + 1, s)) if s != 0.0 else ((k, 1.0),)

    def value(self, x: torch.Tensor, t: float) -> torch.Tensor:
        out = None
        for k, s in self.weights_at(t):
            out = s * x[k] if out is None else out + s * x[k]
        return out  # type: ignore[return-value]

    def prolong(self, x: torch.Tensor, intervals: int) -> torch.Tensor:
        """Knot values of the same depth function on ``intervals`` intervals (exact for a
        multiple of the current number)."""
        new = _Time(intervals, self.T, self.basis)
        return torch.stack([self.value(x, t) for t in new.knot_times()])

    def integral(self, form: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 K: int, device) -> torch.Tensor:
        """∫_0^T q(θ(t)) dt exactly for a quadratic form q given by its bilinear ``form``
        between knots (index tensors), for parameters linear in the knot values."""
        idx = torch.arange(K, device=device)
        diag = form(idx, idx)
        if self.basis == "constant":
            return self.delta * diag.sum()
        cross = form(idx[:-1], idx[1:])
        return (self.delta / 3.0) * (diag[:-1].sum() + diag[1:].sum() + cross.sum())

    def jump_sum(self, form, K: int, device) -> torch.Tensor:
        """Σ_k q(θ_{k+1} − θ_k)/Δ: ∫‖∂_tθ‖² (linear) or the penalty on jumps (constant)."""
        if K < 2:
            return torch.zeros((), device=device)
        i = torch.arange(K - 1, device=device)
        return (form(i, i) + form(i + 1, i + 1) - 2 * form(i, i + 1)).sum() / self.delta

    def gauss(self, points: int = 3) -> list[tuple[float, int, float, float]]:
        """``(weight, k, 1 − s, s)`` of a Gauss–Legendre rule on every interval (linear basis),
        exact for polynomials of degree 2·points − 1 in t."""
        x, w = np.polynomial.legendre.leggauss(points)
        out = []
        for k in range(self.intervals):
            for xi, wi in zip(x, w):
                s = 0.5 * (xi + 1.0)
                out.append((float(0.5 * wi * self.delta), k, float(1.0 - s), float(s)))
        return out


def _interval_gram(breaks: np.ndarray, f, g, weight) -> float:
    """∫ f g weight over [breaks[0], breaks[-1]] by 4-point Gauss–Legendre on each piece
    (exact for piecewise polynomials of degree ≤ 7 with these breakpoints)."""
    x, w = np.polynomial.legendre.leggauss(4)
    tot = 0.0
    for a, b in zip(breaks[:-1], breaks[1:]):
        if b <= a:
            continue
        z = 0.5 * (b - a) * x + 0.5 * (a + b)
        tot += float(np.sum(0.5 * (b - a) * w * f(z) * g(z) * weight(z)))
    return tot


def _basis_1d(z: np.ndarray, lo: float, hi: float, k: int, basis: str, deriv: bool = False
              ) -> np.ndarray:
    """Values (or derivatives) of the k basis functions of [lo, hi] at points z: ``(len(z), k)``
    (numpy; points are interior to one piece of the basis)."""
    s = (z - lo) / (hi - lo)
    if basis == "linear":
        pos = s[:, None] * (k - 1) - np.arange(k)[None, :]
        if deriv:
            return np.where(np.abs(pos) < 1, -np.sign(pos) * (k - 1) / (hi - lo), 0.0)
        return np.clip(1.0 - np.abs(pos), 0.0, None)
    idx = np.clip(np.floor(s * k).astype(int), 0, k - 1)
    out = np.zeros((len(z), k))
    out[np.arange(len(z)), idx] = 0.0 if deriv else 1.0
    return out


def _breaks(lo: float, hi: float, k: int, basis: str, extra=()) -> np.ndarray:
    n = k - 1 if basis == "linear" else k
    return np.unique(np.concatenate([np.linspace(lo, hi, n + 1), np.asarray(extra, float)]))


def _gram_1d(lo, hi, k, basis, weight, d1=False, d2=False, extra=()) -> np.ndarray:
    br = _breaks(lo, hi, k, basis, extra)
    G = np.zeros((k, k))
    for p in range(k):
        for q in range(k):
            G[p, q] = _interval_gram(
                br, lambda z, p=p: _basis_1d(z, lo, hi, k, basis, d1)[:, p],
                lambda z, q=q: _basis_1d(z, lo, hi, k, basis, d2)[:, q], weight)
    return G


def _kron(mats: list[np.ndarray]) -> np.ndarray:
    out = mats[0]
    for m in mats[1:]:
        out = np.kron(out, m)
    return out


# ------------------------------------------------------------------------------------------
# kernels


def _init_param(v, shape, name, dtype) -> torch.Tensor:
    if v is None:
        return torch.zeros(shape, dtype=dtype)
    v = torch.as_tensor(v, dtype=dtype)
    if tuple(v.shape) != tuple(shape):
        raise PdenetsError(f"kernel: {name} has shape {tuple(v.shape)}, expected {tuple(shape)}")
    return check_finite(v.detach().clone(), f"kernel.{name}")


def _check_channels(channels) -> int:
    check_positive(channels, "channels", integer=True)
    if channels > 256:
        raise PdenetsError(f"channels must be at most 256, got {channels}")
    return int(channels)


class Kernel(nn.Module):
    """Base class of kernel families (see the module docstring).

    Subclasses set ``kind``, ``dim``, ``channels`` and ``time`` and implement
    :meth:`knot_tensors`, :meth:`make_op`, :meth:`dense_knots`, :meth:`norms`,
    :meth:`operator_norm_bound`, :meth:`prolong` and :meth:`config`.
    """

    kind = "kernel"
    dim: int
    channels: int
    time: _Time

    @property
    def T(self) -> float:
        return self.time.T

    @property
    def n_knots(self) -> int:
        return self.time.n_knots

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def knot_tensors(self, grid: Grid) -> tuple[torch.Tensor, ...]:
        """The discretized kernel on ``grid`` at every depth knot (leading axis K)."""
        raise NotImplementedError

    def make_op(self, tensors: Sequence[torch.Tensor], grid: Grid) -> KernelOp:
        """The operator at one depth from that depth's tensors (as :meth:`knot_tensors`)."""
        raise NotImplementedError

    def is_dense_on(self, grid: Grid) -> bool:
        """Whether :meth:`knot_tensors` is one dense ``(K, C·N, C·N)`` matrix on ``grid``."""
        return False

    def dense_knots(self, grid: Grid) -> torch.Tensor:
        """Reference dense evaluation ``(K, C·N, C·N)``: ``A[c·N+i, c'·N+j] = ω_j w_{cc'}(x_i,
        x_j)`` (channel-major blocks)."""
        raise NotImplementedError

    def dense_matrix(self, grid: Grid, t: float) -> torch.Tensor:
        """The dense matrix at depth t (reference evaluation)."""
        return self.time.value(self.dense_knots(grid), t)

    def norms(self, spatial: bool = False):
        """Exact ``(∫‖w‖² dt, ∫‖∂_t w‖² dt[, ∫‖∇_x w‖² + ‖∇_y w‖² dt])`` (norms of L²(Ω×Ω)
        summed over channel pairs; the depth term of piecewise-constant kernels penalizes
        jumps, as for :class:`~pdenets.controls.GridControls`)."""
        raise NotImplementedError

    def operator_norm_bound(self, t: float) -> float:
        """An upper bound of the L²(Ω)^C operator norm of w(·, ·, t) (MODEL.md §3, §10)."""
        raise NotImplementedError

    def prolong(self, size=None, intervals: int | None = None) -> Kernel:
        """The same kernel on a finer control grid and/or more depth intervals (exact when the
        new grid refines the old one, as :meth:`GridControls.prolong
        <pdenets.controls.GridControls.prolong>`)."""
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError

    def _wide_weights(self, grid: Grid) -> torch.Tensor:
        return grid.weights.to(self._dtype()).repeat(self.channels)


def _blocks(W: torch.Tensor) -> torch.Tensor:
    """``(K, C, C, N, N)`` → channel-major ``(K, C·N, C·N)``."""
    K, C, _, N, _ = W.shape
    return W.permute(0, 1, 3, 2, 4).reshape(K, C * N, C * N)


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
        P = _basis.basis_matrix(grid.nodes, self.size, self.space_basis).to(self.w.dtype)
        A = torch.matmul(torch.matmul(P, self.w), P.T) * grid.weights.to(self.w.dtype)
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

    def config(self):
        return {"kind": "dense", "size": list(self.size), "space_basis": self.space_basis}

    def extra_repr(self):
        return f"dim={self.dim}, size={self.size}, channels={self.channels}"


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
        key = ("stencil_half", self.radius)  # once per grid: reading h syncs with a device
        if key in grid._cache:
            return grid._cache[key]
        out = []
        for ax in grid.axes:
            n = len(ax)
            h = float(ax[1] - ax[0]) if n > 1 else 1.0
            out.append(min(n - 1, int(math.floor(self.radius / h * (1 + 1e-12)))))
        grid._cache[key] = tuple(out)
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
        P = _basis.basis_matrix(grid.nodes, self.size, self.space_basis).to(V.dtype)
        X = V @ P.T  # (K, C, R, N)
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
        zero = g.new_zeros(())
        if tm.basis == "constant":
            sq = tm.delta * sum((self._sq(g[k], h[k], M, M) for k in range(tm.n_knots)), zero)
            dsq = zero
            for k in range(tm.n_knots - 1):
                Gc = torch.cat([g[k + 1], -g[k]], 1)
                Hc = torch.cat([h[k + 1], h[k]], 1)
                dsq = dsq + self._sq(Gc, Hc, M, M) / tm.delta
            out = [sq, dsq]
            if spatial:
                S = self._mass(stiff=True)
                out.append(tm.delta * sum((self._sq(g[k], h[k], S, M) + self._sq(g[k], h[k], M, S)
                                           for k in range(tm.n_knots)), zero))
            return tuple(out)
        sq, dsq, grad = zero, zero, zero
        S = self._mass(stiff=True) if spatial else None
        for wq, k, a, b in tm.gauss(3):  # ‖w(t)‖² is a quartic in t on each interval
            G, H = a * g[k] + b * g[k + 1], a * h[k] + b * h[k + 1]
            sq = sq + wq * self._sq(G, H, M, M)
            dG, dH = (g[k + 1] - g[k]) / tm.delta, (h[k + 1] - h[k]) / tm.delta
            # ∂_t (G Hᵀ) = G' Hᵀ + G H'ᵀ: a rank-2R kernel
            dsq = dsq + wq * self._sq(torch.cat([dG, G], 1), torch.cat([H, dH], 1), M, M)
            if S is not None:
                grad = grad + wq * (self._sq(G, H, S, M) + self._sq(G, H, M, S))
        return (sq, dsq, grad) if spatial else (sq, dsq)

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

    def config(self):
        return {"kind": "lowrank", "rank": self.rank, "size": list(self.size),
                "space_basis": self.space_basis}

    def extra_repr(self):
        return f"dim={self.dim}, size={self.size}, rank={self.rank}, channels={self.channels}"


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

    def knot_tensors(self, grid):
        return tuple(t for p in self.parts for t in p.knot_tensors(grid))

    def make_op(self, tensors, grid):
        ops, i = [], 0
        for p in self.parts:
            n = 2 if isinstance(p, LowRankKernel) else 1
            ops.append(p.make_op(tensors[i:i + n], grid))
            i += n
        return SumOp(ops)

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

    def config(self):
        return {"kind": "sum", "parts": [p.config() for p in self.parts]}


# ------------------------------------------------------------------------------------------
# controls with a structured kernel


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
        P = _basis.basis_matrix(grid.nodes, self.size, self.space_basis).to(self.b.dtype)
        return (self.b @ P.T).reshape(self.n_knots, -1)

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
        return ConvKernel(dim, cfg["radius"], tuple(cfg["size"]), **common)
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
                generator: torch.Generator | None = None) -> Kernel:
    """A kernel of family ``kind`` (``dense``, ``conv``, ``lowrank``, ``conv+lowrank``).

    ``size`` is the control grid of dense and low-rank kernels, ``kernel_size`` the
    displacement grid of a conv kernel (default: about one vertex per control cell of the
    support, odd so z = 0 is a vertex). With ``init_scale > 0`` the values are drawn at random so
    that the operator norm is about ``init_scale`` at every width (as the dense initialisation
    of :meth:`ContinuumNetwork.create <pdenets.network.ContinuumNetwork.create>`)."""
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
        parts.append(ConvKernel(dim, radius, kernel_size, intervals, T, time_basis, C,
                                dtype=dtype, space_basis=space_basis))
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
